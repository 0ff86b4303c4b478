"""The write path: one chunk's rows, rejections and vault entries in one transaction."""

import io
import weakref
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from psycopg2.extras import execute_values

from etl.model.records import ChunkResult, LoginRow, forget_erased
from etl.model.shards import Position
from etl.store.connection import Connection, transaction
from etl.store.streams import record_range


@dataclass(frozen=True)
class WriteResult:
    inserted: int  # new user_logins rows
    duplicates: int  # rows already written by an earlier delivery of the same message
    rejected: int  # new rejected_messages rows
    rejected_by_reason: dict[str, int] = field(default_factory=dict)  # the new ones, by reason

    @staticmethod
    def total(results: Iterable["WriteResult"]) -> "WriteResult":
        """The sum of several results (the one-by-one fallback writes one message at a time)."""
        inserted = duplicates = rejected = 0
        reasons: Counter[str] = Counter()
        for r in results:
            inserted, duplicates, rejected = inserted + r.inserted, duplicates + r.duplicates, rejected + r.rejected
            reasons.update(r.rejected_by_reason)
        return WriteResult(inserted, duplicates, rejected, dict(reasons))


_COLUMNS = "message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date"
# Every ON CONFLICT below names no target: each table's one unique key is the arbiter, and a
# target would need SELECT on its columns, which the workers' login does not have.
# Rows are COPYed into a per-session staging table, then moved in one INSERT ... SELECT: about
# twice as fast as a multi-row VALUES insert at 500 rows (bench/: write stage).
# Spelled out rather than LIKE user_logins: the workers' login may insert, never read.
_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS etl_stage_logins (
    message_id varchar(128), user_id varchar(128), device_type varchar(32), masked_ip varchar(256),
    masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date)
    ON COMMIT DELETE ROWS
"""
_COPY_ROWS = f"COPY etl_stage_logins ({_COLUMNS}) FROM STDIN"
_MOVE_ROWS = f"""
INSERT INTO user_logins ({_COLUMNS}) SELECT {_COLUMNS} FROM etl_stage_logins ORDER BY message_id
ON CONFLICT DO NOTHING
"""
_STAGE_VAULT = """
CREATE TEMP TABLE IF NOT EXISTS etl_stage_vault (field varchar(16), token varchar(80), ciphertext text)
    ON COMMIT DELETE ROWS
"""
_COPY_VAULT = "COPY etl_stage_vault (field, token, ciphertext) FROM STDIN"
_MOVE_VAULT = """
INSERT INTO pii_vault (field, token, ciphertext) SELECT field, token, ciphertext FROM etl_stage_vault
ORDER BY field, token ON CONFLICT DO NOTHING
"""
_staged: "weakref.WeakSet[Connection]" = weakref.WeakSet()
_INSERT_REJECTED = """
INSERT INTO rejected_messages (message_id, reason, detail, sealed_body, body_chars, sent_at,
                               receive_count, user_id)
VALUES %s
ON CONFLICT DO NOTHING
RETURNING reason
"""
# The chunk's erased users (and a lock that holds an erasure back until this chunk commits).
_ERASURES = "SELECT user_id, erased_at FROM etl_erasures_for(%s::text[])"
INSERT_VAULT = "INSERT INTO pii_vault (field, token, ciphertext) VALUES %s ON CONFLICT (field, token) DO NOTHING"


def write_chunk(conn: Connection, chunk: ChunkResult, position: Position | None = None) -> WriteResult:
    """Write a chunk's rows, rejections and vault entries in ONE transaction, idempotently.

    A chunk from a stream also records its ``position`` in that transaction and moves its
    shard's checkpoint (etl.store.streams): the checkpoint and the rows commit together.

    Rows are sorted by message id so two chunks sharing ids (a redelivery racing the original)
    take their index locks in the same order and cannot deadlock. Messages of erased users sent
    before their erasure are stored as the erasure left them (records.forget_erased).
    """
    inserted = 0
    new_reasons: Counter[str] = Counter()
    with transaction(conn, "write chunk") as cur:
        users = sorted({r.user_id for r in chunk.rows} | {r.user_id for r in chunk.rejected if r.user_id})
        if users:  # first, before pii_vault: an erasure and this chunk never interleave
            cur.execute(_ERASURES, (users_array(users),))
            chunk = forget_erased(chunk, dict(cur.fetchall()))
        rows = sorted(chunk.rows, key=lambda r: r.message_id)
        rejected = sorted(chunk.rejected, key=lambda r: r.message_id)
        if conn not in _staged and (rows or chunk.vault):
            cur.execute(_STAGE)  # once per session (remembered only after the commit)
            cur.execute(_STAGE_VAULT)
        if rows:
            cur.copy_expert(_COPY_ROWS, copy_text(rows))
            cur.execute(_MOVE_ROWS)
            inserted = cur.rowcount
        if rejected:
            values = [
                (r.message_id, r.reason, r.detail, r.sealed_body, r.body_chars, r.sent_at, r.receive_count, r.user_id)
                for r in rejected
            ]
            new_reasons = Counter(
                r[0] for r in execute_values(cur, _INSERT_REJECTED, values, page_size=len(values), fetch=True)
            )
        if chunk.vault:  # staged like the rows: COPY, then one INSERT ... SELECT in a fixed order
            buf = io.StringIO()
            buf.writelines([f"{f}\t{t}\t{c}\n" for f, t, c in chunk.vault])  # ours: nothing to escape
            buf.seek(0)
            cur.copy_expert(_COPY_VAULT, buf)
            cur.execute(_MOVE_VAULT)
        if position is not None:
            record_range(cur, position)  # last: the checkpoint row lock is held only briefly
    if rows or chunk.vault:
        _staged.add(conn)
    return WriteResult(
        inserted=inserted,
        duplicates=len(rows) - inserted,
        rejected=sum(new_reasons.values()),
        rejected_by_reason=dict(new_reasons),
    )


def _copy_field(value: object) -> str:
    if value is None:
        return "\\N"
    text = str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


def _copy_line(r: LoginRow) -> str:
    locale = "\\N" if r.locale is None else r.locale
    line = (
        f"{r.message_id}\t{r.user_id}\t{r.device_type}\t{r.masked_ip}\t{r.masked_device_id}\t"
        f"{locale}\t{r.app_version}\t{r.create_date}\n"
    )
    # Seven tabs, one newline and no backslash but a null locale's: nothing in the values needs escaping.
    if line.count("\t") == 7 and line.count("\n") == 1 and "\r" not in line and line.count("\\") == (r.locale is None):
        return line
    fields = (
        r.message_id,
        r.user_id,
        r.device_type,
        r.masked_ip,
        r.masked_device_id,
        r.locale,
        r.app_version,
        r.create_date,
    )
    return "\t".join(map(_copy_field, fields)) + "\n"


def copy_text(rows: Sequence[LoginRow]) -> io.StringIO:
    """Rows in COPY's text format (validation already refused NUL and unpaired surrogates)."""
    return io.StringIO("".join(map(_copy_line, rows)))


def users_array(users: Iterable[str]) -> str:
    """A Postgres text[] literal of ``users``, for one parameter: psycopg2 adapts a list of 1,000
    strings at ~1 µs each, one string of them all at ~0.1 µs each. Every element is quoted, with
    backslash and double quote escaped (validation already refused NUL)."""
    return (
        "{"
        + ",".join(
            f'"{u}"' if '"' not in u and "\\" not in u else '"' + u.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for u in users
        )
        + "}"
    )
