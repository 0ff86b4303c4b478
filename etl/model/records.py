"""What messages become: user_logins rows or rejected_messages rows (pure).

``transform`` is the whole per-chunk logic: parse and validate each body, mask the personal
fields, encode app_version, date the row by SentTimestamp, and seal the body of anything
rejected. It never raises for bad data: every message ends as exactly one row or one rejection.
"""

import json
import marshal
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple

from etl.crypto.masking import Masker, canonical_ip
from etl.crypto.sealing import Sealer
from etl.crypto.vault import Vault
from etl.errors import TerminalError
from etl.model import appversion, events, kpl


@dataclass(frozen=True, slots=True)
class Withheld:
    """Why a message travels without its body (etl.model.chunking): its reason (``too_large``,
    ``broker_refused``), a value-free detail (size and SHA-256 digest), its length in characters."""

    reason: str
    detail: str
    chars: int


# Message, LoginRow: not frozen. A frozen dataclass's __init__ sets each field through
# object.__setattr__, ~5x the cost of a plain one, and these are built two and one times a message
# (bench/: the pipeline's CPU per message). Nothing changes one after it is made.
@dataclass(slots=True)
class Message:
    """One message or stream record, as the pipeline carries it, whatever its source.

    For SQS: the MessageId, the receipt handle, SentTimestamp. For Kinesis: ``<stream>/<shard>/<seq>``,
    the sequence number in ``receipt_handle`` (the field keeps its name: it is part of the sealed
    chunk's wire format, which chunks in flight during an upgrade must still match), arrival time.
    """

    message_id: str
    receipt_handle: str
    body: str
    sent_timestamp_ms: int
    receive_count: int = 1
    received_at: float = 0.0  # unix time this delivery was received (visibility clock start)
    withheld: Withheld | None = None  # set when the body was dropped before the broker (``body`` is "")

    def __repr__(self) -> str:  # the body holds raw PII
        return f"Message(message_id={self.message_id!r}, body=<{len(self.body)} chars>)"


@dataclass(slots=True)
class LoginRow:
    """One user_logins row; holds tokens, never raw ip or device_id."""

    message_id: str
    user_id: str
    device_type: str
    masked_ip: str
    masked_device_id: str
    locale: str | None
    app_version: int
    create_date: date
    sent_ms: int | None = None  # when the source received it, epoch ms (not a column: decides erasure)


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """One rejected_messages row; the body is sealed, the detail names no value."""

    message_id: str
    reason: str
    detail: str
    sealed_body: str
    body_chars: int
    sent_at: datetime
    receive_count: int
    user_id: str | None = None  # the body's user_id when valid (as stored in user_logins), for erasure


class VaultEntry(NamedTuple):
    """The original value behind a token, encrypted (pii_vault row). A named tuple: up to two a
    message, made from encrypt_many's tuples without a Python call each."""

    field: str
    token: str
    ciphertext: str


@dataclass(frozen=True, slots=True)
class ChunkResult:
    rows: list[LoginRow]
    rejected: list[RejectedRow]
    vault: list[VaultEntry] = field(default_factory=list)

    def singles(self) -> list[tuple[str, "ChunkResult"]]:
        """One (message_id, result) per message, each row with its own vault entries."""
        secrets = {(v.field, v.token): v for v in self.vault}
        out = []
        for row in self.rows:
            keys = (("ip", row.masked_ip), ("device_id", row.masked_device_id))
            out.append((row.message_id, ChunkResult([row], [], [secrets[k] for k in keys if k in secrets])))
        out += [(r.message_id, ChunkResult([], [r])) for r in self.rejected]
        return out


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = _EPOCH.toordinal()
_DAY_MS = 86_400_000


def sent_at(sent_timestamp_ms: int) -> datetime:
    """SQS SentTimestamp (epoch milliseconds) as an aware UTC datetime (exact: no float on the way)."""
    return _EPOCH + timedelta(milliseconds=sent_timestamp_ms)


def sent_date(sent_timestamp_ms: int) -> date:
    """The UTC date of a SentTimestamp: ``sent_at(ms).date()`` at a fifth of the cost."""
    return date.fromordinal(_EPOCH_DAY + sent_timestamp_ms // _DAY_MS)


def to_row(message: Message, event: events.LoginEvent, masker: Masker, canonical: str | None = None) -> LoginRow:
    """The row of a valid event; ``canonical``: ``canonical_ip(event.ip)``, when the caller has it."""
    return LoginRow(
        message_id=message.message_id,
        user_id=event.user_id,
        device_type=event.device_type,
        masked_ip=masker.mask_ip(event.ip) if canonical is None else masker.mask_canonical_ip(canonical),
        masked_device_id=masker.mask_device_id(event.device_id),
        locale=event.locale,
        app_version=event.app_version_code if event.app_version_code >= 0 else appversion.encode(event.app_version),
        create_date=sent_date(message.sent_timestamp_ms),
        sent_ms=message.sent_timestamp_ms,
    )


def to_rejected(message: Message, rejection: events.Rejection, sealer: Sealer) -> RejectedRow:
    return RejectedRow(
        message_id=message.message_id,
        reason=rejection.reason,
        detail=rejection.detail,
        sealed_body=sealer.seal(message.body.encode("utf-8", "surrogatepass")),
        body_chars=len(message.body),
        sent_at=sent_at(message.sent_timestamp_ms),
        receive_count=message.receive_count,
        user_id=rejection.user_id,
    )


def to_withheld(message: Message, withheld: Withheld) -> RejectedRow:
    """The rejection of a message whose body never reached the broker: nothing of it is kept
    but its size and digest (in ``detail``), so ``sealed_body`` is empty and it is never replayed."""
    return RejectedRow(
        message_id=message.message_id,
        reason=withheld.reason,
        detail=withheld.detail,
        sealed_body="",
        body_chars=withheld.chars,
        sent_at=sent_at(message.sent_timestamp_ms),
        receive_count=message.receive_count,
    )


def refused(message: Message, detail: str, sealer: Sealer) -> RejectedRow:
    """A message that validated but that Postgres still would not store (a safety net)."""
    parsed = events.parse_event(message.body)
    user_id = parsed.user_id if isinstance(parsed, events.LoginEvent) else None
    return to_rejected(message, events.Rejection(events.DB_REFUSED, detail, user_id), sealer)


def transform(messages: list[Message], masker: Masker, sealer: Sealer, vault: Vault | None = None) -> ChunkResult:
    """Every message becomes exactly one LoginRow or one RejectedRow.

    With a vault, each distinct (field, token) of the chunk also gets its original value,
    encrypted, for authorized recovery.
    """
    rows: list[LoginRow] = []
    rejected: list[RejectedRow] = []
    secrets: dict[tuple[str, str], str] = {}
    for message in messages:
        if message.withheld is not None:
            rejected.append(to_withheld(message, message.withheld))
            continue
        parsed = _corrupt_aggregate(message) or events.parse_event(message.body)
        if isinstance(parsed, events.Rejection):
            rejected.append(to_rejected(message, parsed, sealer))
            continue
        if vault is None:
            rows.append(to_row(message, parsed, masker))
            continue
        ip = canonical_ip(parsed.ip)  # once: the token and the vault both take the canonical form
        row = to_row(message, parsed, masker, ip)
        rows.append(row)
        secrets.setdefault(("ip", row.masked_ip), ip)
        secrets.setdefault(("device_id", row.masked_device_id), parsed.device_id)
    entries = []
    if vault is not None and secrets:
        entries = list(map(VaultEntry._make, vault.encrypt_many(secrets.items())))
    return ChunkResult(rows, rejected, entries)


def _corrupt_aggregate(message: Message) -> events.Rejection | None:
    """A stream record that starts with the aggregation magic bytes is still whole only when it
    did not decode (the reader de-aggregates the others): one rejection with its own reason."""
    if not message.body.startswith(kpl.MAGIC_TEXT):
        return None
    why = kpl.fault(message.body.encode("utf-8", "surrogateescape")) or "not de-aggregated"
    return events.Rejection(events.BAD_AGGREGATE, why, None)


ERASED = "erased:"  # the prefix of a random stand-in token (etl_erase writes the same)


def forget_erased(chunk: ChunkResult, erased: Mapping[str, datetime]) -> ChunkResult:
    """A chunk as it may be stored once some of its users were erased (``erased``: user id ->
    when). A message of such a user sent up to its erasure, however late it arrives (SQS
    redelivery, a restored or replayed chunk, a stream re-read), keeps no token (random stand-ins,
    as etl_erase leaves), brings no vault entry and leaves no rejected body. Later messages are
    new data and are stored as usual.
    """
    if not erased:
        return chunk

    def gone(user_id: str | None, sent: datetime | None) -> bool:
        at = erased.get(user_id or "")
        return at is not None and (sent is None or sent <= at)

    rows = [
        replace(r, masked_ip=f"{ERASED}{uuid.uuid4()}", masked_device_id=f"{ERASED}{uuid.uuid4()}")
        if r.user_id in erased and gone(r.user_id, None if r.sent_ms is None else sent_at(r.sent_ms))
        else r
        for r in chunk.rows
    ]
    used = {(f, t) for r in rows for f, t in (("ip", r.masked_ip), ("device_id", r.masked_device_id))}
    return ChunkResult(
        rows,
        [r for r in chunk.rejected if not gone(r.user_id, r.sent_at)],
        [v for v in chunk.vault if (v.field, v.token) in used],
    )


# The chunk's wire format. Version 3 (sealed with Sealer.seal_bytes, kept in Redis as bytes): one
# byte 0x03, the length of the header (4 bytes, big endian), the header, then the bodies' UTF-8
# bytes one after the other. The header is a list with one tuple per message - id, receipt
# handle, sent ms, receive count, received at, body length in bytes, withheld as (reason, detail,
# chars) or None - in marshal's format 4 (str, int, float and None only; read and written the same
# by every Python 3 since 3.4), ~6x faster both ways than JSON for 1,000 SQS-sized receipt handles.
# It is read only after the AES-GCM tag proved that a holder of the payload key wrote it. Bodies
# are raw bytes: no escapes, no base64, so a chunk weighs its bodies and identifiers plus ~60
# bytes a message.
# Versions 1 (a JSON list of Message objects) and 2 (as 3, with a JSON header, sealed as Fernet
# text and carried in the task itself) are still read: chunks in flight during an upgrade open.
_V2 = b"\x02"
_V3 = b"\x03"
_HEAD = 4  # bytes of the header's length
_MARSHAL = 4  # marshal's format version for the header


def pack_chunk(messages: list[Message], sealer: Sealer) -> bytes:
    """Seal a chunk for the broker: Redis and Flower only ever see ciphertext."""
    bodies = [m.body.encode("utf-8", "surrogatepass") for m in messages]
    head = marshal.dumps(
        [
            (
                m.message_id,
                m.receipt_handle,
                m.sent_timestamp_ms,
                m.receive_count,
                m.received_at,
                len(body),
                None if m.withheld is None else (m.withheld.reason, m.withheld.detail, m.withheld.chars),
            )
            for m, body in zip(messages, bodies, strict=True)
        ],
        _MARSHAL,
    )
    return sealer.seal_bytes(b"".join([_V3, len(head).to_bytes(_HEAD, "big"), head, *bodies]))


def unpack_chunk(sealed: bytes | str, sealer: Sealer, max_age: float | None = None) -> list[Message]:
    """The chunk's messages; Expired (errors) when it was sealed over ``max_age`` seconds ago.
    ``sealed`` is what ``pack_chunk`` made (bytes) or, from before version 3, Fernet text."""
    if isinstance(sealed, bytes):
        data = sealer.open_bytes(sealed, max_age)
        version = _V3
    else:
        data = sealer.open(sealed, max_age)
        if data[:1] == b"[":  # version 1
            return [Message(**m) for m in json.loads(data.decode("utf-8", "surrogatepass"))]
        version = _V2
    if data[:1] != version or len(data) < 1 + _HEAD:
        raise TerminalError("the chunk's format is unknown")
    at = 1 + _HEAD + int.from_bytes(data[1 : 1 + _HEAD], "big")
    raw = data[1 + _HEAD : at]
    try:
        # marshal reads only what the AES-GCM tag proved a holder of the payload key sealed
        old = version == _V2
        head = json.loads(raw.decode("utf-8", "surrogatepass")) if old else marshal.loads(raw)  # noqa: S302
    except (ValueError, EOFError, TypeError):
        raise TerminalError("the chunk's header cannot be read") from None
    if not isinstance(head, list):
        raise TerminalError("the chunk's format is unknown")
    messages = []
    try:
        for message_id, receipt, sent_ms, receives, received_at, size, withheld in head:
            body = data[at : at + size].decode("utf-8", "surrogatepass")
            at += size
            messages.append(
                Message(
                    message_id,
                    receipt,
                    body,
                    sent_ms,
                    receives,
                    received_at,
                    None if withheld is None else Withheld(*withheld),
                )
            )
    except (ValueError, TypeError):
        raise TerminalError("the chunk's header does not match its format") from None
    if at != len(data):
        raise TerminalError("the chunk's length does not match its header")
    return messages
