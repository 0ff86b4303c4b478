"""Checking secret keys before any cipher sees them (pure: no I/O, no environment).

Keys travel as url-safe base64 text (``etl keygen``). Lenient decoders (Fernet's, base64's
default) silently skip characters outside the alphabet, so a key with a stray character, a
pasted quote or an embedded newline would still "work" - as some other key than the one meant,
or as a truncated one. ``decode`` refuses anything that is not exactly a canonical base64
encoding. ``require_distinct`` refuses one key serving two purposes (a payload key reused as the
vault key, the vault's private key handed out as its public key, ...).

Error messages name the setting and the fix, never the key or any part of it.
"""

import base64
import binascii
import re
from collections.abc import Mapping

from etl.errors import ConfigError

KEYGEN_HINT = "run `etl keygen` to make fresh keys, and set them in the environment or .env"

# Either alphabet (url-safe is what etl keygen writes; standard is what other tools write),
# then at most two "=" of padding. Checked before decoding so the message can say what is wrong.
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
_TO_STANDARD = str.maketrans("-_", "+/")


def decode(text: str, name: str, length: int | None = None, minimum: int | None = None) -> bytes:
    """The bytes of the base64 key ``text`` from setting ``name``; raises ConfigError.

    Accepts the url-safe or the standard alphabet and missing padding; refuses any other
    character (embedded whitespace included; surrounding whitespace is trimmed), wrong padding,
    non-canonical encodings, and keys that decode to other than ``length`` bytes or fewer than
    ``minimum`` bytes.
    """
    stripped = text.strip()
    if not stripped:
        raise ConfigError(f"{name} is empty; {KEYGEN_HINT}")
    if not _BASE64.fullmatch(stripped):
        raise ConfigError(
            f"{name} is not valid base64: it holds a character outside the url-safe base64 alphabet "
            f"(whitespace, quotes or other junk, or padding in the middle); {KEYGEN_HINT}"
        )
    key = _strict(stripped)
    if key is None:
        raise ConfigError(f"{name} is not valid base64 (wrong length or padding, or not canonical); {KEYGEN_HINT}")
    if length is not None and len(key) != length:
        raise ConfigError(f"{name} must decode to {length} bytes, got {len(key)}; {KEYGEN_HINT}")
    if minimum is not None and len(key) < minimum:
        raise ConfigError(f"{name} must decode to at least {minimum} bytes, got {len(key)}; {KEYGEN_HINT}")
    return key


def require_distinct(keys: Mapping[str, str | bytes]) -> None:
    """Raise ConfigError naming two settings that hold the same key; empty ones are skipped.

    Text keys are compared as text (surrounding whitespace trimmed) and, where they are valid
    base64, as decoded bytes too, so one key written in two encodings is still caught. Bytes
    are taken as already-decoded keys.
    """
    seen: dict[tuple[str, bytes], str] = {}
    for name, value in keys.items():
        for form in _forms(value):
            other = seen.get(form)
            if other is not None and other != name:
                raise ConfigError(
                    f"{other} and {name} hold the same key: one key must never serve two purposes; "
                    f"give each its own ({KEYGEN_HINT})"
                )
            seen.setdefault(form, name)


def _forms(value: str | bytes) -> set[tuple[str, bytes]]:
    """The ways ``value`` is compared: ("text", its text) and ("bytes", its decoded bytes)."""
    if isinstance(value, bytes):
        return {("bytes", value)} if value else set()
    text = value.strip()
    if not text:
        return set()
    forms = {("text", text.encode("utf-8", "surrogatepass"))}
    if _BASE64.fullmatch(text) and (key := _strict(text)):
        forms.add(("bytes", key))
    return forms


def _strict(text: str) -> bytes | None:
    """Decoded bytes of base64 ``text`` (either alphabet, padding optional), or None if invalid."""
    standard = text.translate(_TO_STANDARD)
    body = standard.rstrip("=")
    if "=" in body or len(body) % 4 == 1:
        return None
    padded = body + "=" * (-len(body) % 4)
    if standard != body and standard != padded:  # padding given, but not the right amount
        return None
    try:
        key = binascii.a2b_base64(padded.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    # Canonical only: the unused low bits of the last character must be zero ("QR==" is not "QQ==").
    if base64.b64encode(key).decode("ascii") != padded:
        return None
    return key
