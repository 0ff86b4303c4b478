"""The audit log's hash chain, recomputed here (pure), not by functions in the audited database.

Whoever owns the database could replace a hashing function there so that rewritten rows hash to
their old values; recomputing outside it leaves the table owner nothing to bend but the rows,
which the chain and its external anchors then give away.

Scheme 2 (migration 8): SHA-256 of ``jsonb_build_array(prev, at, actor, action, field, token,
subject, reason, outcome)::text``, i.e. canonical JSON with ", " between items, NULL as null.
Scheme 1 (older rows): SHA-256 of the fields joined by "|", NULL as "".
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    actor: str
    action: str
    field: str | None
    token: str | None
    subject: str | None
    reason: str
    outcome: str
    prev_hash: str
    hash: str
    scheme: int


def _json_text(value: str | None) -> str:
    """PostgreSQL's jsonb text of one string: \\" \\\\ \\b \\f \\n \\r \\t, other controls as \\u00xx."""
    if value is None:
        return "null"
    out = ['"']
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\b\f\n\r\t":
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def row_hash(row: AuditRow) -> str:
    """The hash a row must carry, given its content and its stored previous hash."""
    at = row.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    fields = [row.prev_hash, at, row.actor, row.action, row.field, row.token, row.subject, row.reason, row.outcome]
    if row.scheme == 1:
        text = "|".join("" if f is None else f for f in fields)
    else:
        text = "[" + ", ".join(_json_text(f) for f in fields) + "]"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def first_break(rows: Sequence[AuditRow]) -> int | None:
    """The id of the first row that does not chain (edited, inserted or removed), or None."""
    previous = GENESIS
    for row in rows:
        if row.prev_hash != previous or row.hash != row_hash(row):
            return row.id
        previous = row.hash
    return None
