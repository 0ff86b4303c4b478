"""Parse and validate one SQS message body into a LoginEvent or a Rejection (pure).

The rules (docs/reliability.md "Bad input"): the body is a JSON object whose ``user_id``, ``device_type``,
``ip``, ``device_id`` and ``app_version`` are non-empty strings, whose ``locale`` is a string or
null (or absent), and whose values fit their columns. Unknown extra fields are ignored.
Everything else becomes a Rejection with a stable ``reason`` code and a ``detail`` that names
fields and limits but never repeats a value, so it is safe to log and to store.
"""

import dataclasses
import json
import re
from dataclasses import dataclass, replace
from typing import Any

from etl.model import appversion

# Stable rejection reason codes (stored in rejected_messages.reason; analysts filter on them).
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
DUPLICATE_KEY = "duplicate_key"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_FIELD = "empty_field"
TOO_LONG = "too_long"
NUL_CHARACTER = "nul_character"
INVALID_UNICODE = "invalid_unicode"
BAD_APP_VERSION = "bad_app_version"
PARSE_REASONS = (
    INVALID_JSON,
    NOT_AN_OBJECT,
    DUPLICATE_KEY,
    MISSING_FIELD,
    WRONG_TYPE,
    EMPTY_FIELD,
    TOO_LONG,
    NUL_CHARACTER,
    INVALID_UNICODE,
    BAD_APP_VERSION,
)
# Not from parsing: a message that validated but that Postgres still would not store.
DB_REFUSED = "db_refused"
# Not from parsing: a Kinesis record with the KPL aggregation magic bytes that does not decode
# (etl.model.kpl); the user records inside it cannot be told apart, so it is one rejection.
BAD_AGGREGATE = "bad_aggregate"
REASONS = (*PARSE_REASONS, DB_REFUSED, BAD_AGGREGATE)

# Longest accepted value per field, in characters. user_id, device_type and locale are stored
# as they are, so their limit is their column's width; ip and device_id are stored as tokens,
# and a raw value longer than the token column is not an address or a device id.
MAX_LENGTH = {
    "user_id": 128,
    "device_type": 32,
    "locale": 32,
    "ip": 256,
    "device_id": 256,
    "app_version": 32,
}
REQUIRED = ("user_id", "device_type", "ip", "device_id", "app_version")
_MAX_USER_ID, _MAX_DEVICE_TYPE, _MAX_LOCALE = MAX_LENGTH["user_id"], MAX_LENGTH["device_type"], MAX_LENGTH["locale"]
_MAX_IP, _MAX_DEVICE_ID, _MAX_APP_VERSION = MAX_LENGTH["ip"], MAX_LENGTH["device_id"], MAX_LENGTH["app_version"]


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, ~5x the
# cost of a plain one, and one of these is built per message. Nothing changes one after it is made.
@dataclass(slots=True)
class LoginEvent:
    """A valid login event, with the raw (still personal) ip and device_id."""

    user_id: str
    device_type: str
    ip: str
    device_id: str
    locale: str | None
    app_version: str
    app_version_code: int = dataclasses.field(default=-1, compare=False)  # app_version's code, from validation

    def __repr__(self) -> str:  # keep raw PII out of tracebacks and debug logs
        return f"LoginEvent(user_id={self.user_id!r}, ip=<redacted>, device_id=<redacted>)"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a body was refused: a stable code and a value-free explanation."""

    reason: str
    detail: str
    # The body's user_id when it is a valid one (erasure finds the user's rejected bodies by its
    # token); never part of ``detail``.
    user_id: str | None = dataclasses.field(default=None, repr=False)


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


_USER_ID = re.compile(r'"user_id"\s*:\s*"([^"\\\x00-\x1f]{1,128})"')


def _named_user(body: str) -> str | None:
    """The user a rejected body names, so that erasure finds its sealed body (which holds that
    user's values): the top-level user_id of its first JSON value (a duplicate key, a byte-order
    mark in front, a second event or bytes after it), else the first ``"user_id": "..."`` in it
    (a body that does not parse to its end). A body naming no valid one stays unattributed."""
    found: list[object] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        found[:] = [v for k, v in items if k == "user_id"]  # the last object closed is the top level
        return {}

    start = len(body) - len(body.lstrip(" \t\n\r"))
    try:  # the first whole value, whatever follows it (a second event, trailing bytes)
        json.JSONDecoder(object_pairs_hook=pairs).raw_decode(body, start)
    except (ValueError, RecursionError):  # it breaks off part-way (an integer over Python's digit limit ...)
        match = _USER_ID.search(body)
        return match.group(1) if match and _check_text("user_id", match.group(1)) is None else None
    return next((v for v in found if isinstance(v, str) and _check_text("user_id", v) is None), None)


def check_user_id(value: object) -> Rejection | None:
    """Why ``value`` is not a user id ingest would accept (None: it is one)."""
    return _check_text("user_id", value)


def _check_text(field: str, value: object, *, nullable: bool = False) -> Rejection | None:
    if value is None and nullable:
        return None
    if value is None:
        return Rejection(WRONG_TYPE, f"field '{field}' is null; a string is required")
    if not isinstance(value, str):
        return Rejection(WRONG_TYPE, f"field '{field}' is {_json_type(value)}; a string is required")
    if not nullable and (not value or value.isspace()):  # what strip() would leave empty, without the copy
        return Rejection(EMPTY_FIELD, f"field '{field}' is empty")
    if len(value) > MAX_LENGTH[field]:
        return Rejection(TOO_LONG, f"field '{field}' is longer than {MAX_LENGTH[field]} characters")
    if "\x00" in value:
        return Rejection(NUL_CHARACTER, f"field '{field}' contains a NUL character")
    if not value.isascii():  # ASCII always encodes; only other text can hold a lone surrogate
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return Rejection(INVALID_UNICODE, f"field '{field}' contains an unpaired surrogate")
    return None


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "not a string"


# One decoder for every body (json.loads with a hook builds a new one per call: ~1 µs a message).
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)
_SCAN = _DECODER.scan_once  # type: ignore[attr-defined]  # what JSONDecoder.raw_decode calls, without its Python frame
_JSON_SPACE = " \t\n\r"


def _decode(body: str) -> Any:
    """``_DECODER.decode(body)``, with the same result and the same errors; a body that starts
    with ``{`` (nearly all) is scanned once without decode's Python layers, and read only once
    whether it is valid or not (a hostile body costs no second pass)."""
    if body[:1] != "{":
        return _DECODER.decode(body)
    try:
        data, end = _SCAN(body, 0)
    except StopIteration as exc:  # as JSONDecoder.raw_decode reports it
        raise json.JSONDecodeError("Expecting value", body, exc.value) from None
    if end != len(body):
        rest = body[end:].lstrip(_JSON_SPACE)
        if rest:  # as JSONDecoder.decode reports it: where the extra data starts
            raise json.JSONDecodeError("Extra data", body, len(body) - len(rest))
    return data


def parse_event(body: str) -> LoginEvent | Rejection:
    """Turn one message body into a LoginEvent, or say precisely why it cannot be one."""
    try:
        data = _decode(body)
    except _DuplicateKey as exc:
        return Rejection(DUPLICATE_KEY, f"{_key_name(str(exc))} appears more than once", _named_user(body))
    except RecursionError:
        return Rejection(INVALID_JSON, "body is nested too deeply to parse")
    except ValueError as exc:  # JSONDecodeError, and int strings over Python's digit limit
        pos = getattr(exc, "pos", None)
        where = f" at character {pos}" if pos is not None else ""
        return Rejection(INVALID_JSON, f"body is not valid JSON{where}", _named_user(body.lstrip("\ufeff")))
    if not isinstance(data, dict):
        return Rejection(NOT_AN_OBJECT, f"body is {_json_type(data)}, not a JSON object")
    checked = _valid(data) or _validate(data)
    if isinstance(checked, Rejection):
        user_id = data.get("user_id")
        if _check_text("user_id", user_id) is None:
            return replace(checked, user_id=user_id)
    return checked


def _valid(data: dict[str, Any]) -> LoginEvent | None:
    """The LoginEvent of a body that passes every rule with ASCII values (nearly every body), in
    one pass; None for anything else, which ``_validate`` then checks rule by rule (and accepts,
    when its only difference is non-ASCII text, or refuses with the first rule it breaks).
    tests/unit/test_properties.py checks that both agree on every body the first accepts."""
    user_id = data.get("user_id")
    device_type = data.get("device_type")
    ip = data.get("ip")
    device_id = data.get("device_id")
    version = data.get("app_version")
    locale = data.get("locale")
    if not (
        type(user_id) is str  # exactly str, as JSON decodes text
        and type(device_type) is str
        and type(ip) is str
        and type(device_id) is str
        and type(version) is str
        and (locale is None or type(locale) is str)
        and 0 < len(user_id) <= _MAX_USER_ID
        and 0 < len(device_type) <= _MAX_DEVICE_TYPE
        and 0 < len(ip) <= _MAX_IP
        and 0 < len(device_id) <= _MAX_DEVICE_ID
        and 0 < len(version) <= _MAX_APP_VERSION
    ):
        return None
    text = f"{user_id}{device_type}{ip}{device_id}{version}{locale or ''}"
    if (
        not text.isascii()
        or "\x00" in text
        or user_id.isspace()
        or device_type.isspace()
        or ip.isspace()
        or device_id.isspace()
        or (locale is not None and len(locale) > _MAX_LOCALE)
    ):
        return None
    code = appversion.code_or_none(version)
    if code is None:
        return None
    return LoginEvent(user_id, device_type, ip, device_id, locale, version, code)


def _validate(data: dict[str, Any]) -> LoginEvent | Rejection:
    missing = [f for f in REQUIRED if f not in data]
    if missing:
        return Rejection(MISSING_FIELD, "missing field(s): " + ", ".join(missing))
    for field in REQUIRED:
        problem = _check_text(field, data[field])
        if problem:
            return problem
    locale = data.get("locale")
    problem = _check_text("locale", locale, nullable=True)
    if problem:
        return problem
    try:
        code = appversion.encode(data["app_version"])
    except ValueError as exc:
        return Rejection(BAD_APP_VERSION, str(exc))
    return LoginEvent(
        user_id=data["user_id"],
        device_type=data["device_type"],
        ip=data["ip"],
        device_id=data["device_id"],
        locale=locale,
        app_version=data["app_version"],
        app_version_code=code,
    )


def _key_name(key: str) -> str:
    """Name a key in a detail only if it is one of ours: other keys are arbitrary sender text."""
    return f"key '{key}'" if key in MAX_LENGTH else "a key"
