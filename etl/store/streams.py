"""Kinesis positions in Postgres: per-shard checkpoints and the committed ranges behind them.

A chunk records its range in its own write transaction (``record_range``), and in that same
transaction the shard's checkpoint moves over every committed range that starts at or before
it (``etl.model.shards.advance``). The checkpoint row is locked first, so two chunks of one shard
committing at once take turns, and the later one sees the earlier one's range.
"""

from decimal import Decimal
from typing import Any

from etl.errors import TerminalError, TransientError
from etl.model import shards
from etl.model.shards import Checkpoint, Position
from etl.store.connection import Connection, query, transaction

_ENSURE = """
INSERT INTO stream_checkpoints (stream, shard_id, start_at) VALUES (%s, %s, to_timestamp(%s))
ON CONFLICT DO NOTHING
"""
_LOCK = "SELECT checkpoint FROM stream_checkpoints WHERE stream = %s AND shard_id = %s FOR UPDATE"
_RECORD = """
INSERT INTO stream_ranges (stream, shard_id, after_seq, last_seq) VALUES (%s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""
_RANGES = "SELECT after_seq, last_seq FROM stream_ranges WHERE stream = %s AND shard_id = %s AND last_seq > %s"
_MOVE = (
    "UPDATE stream_checkpoints SET checkpoint = %s, moved_at = clock_timestamp() WHERE stream = %s AND shard_id = %s"
)
_FORGET = "DELETE FROM stream_ranges WHERE stream = %s AND shard_id = %s AND last_seq <= %s"


def _text(value: Decimal | int | None) -> str | None:
    """A numeric column as a position (etl.model.shards.from_db)."""
    return None if value is None else shards.from_db(format(value, "f"))


def ensure_shards(conn: Connection, stream: str, shard_ids: list[str], start_at: float | None) -> None:
    """A checkpoint row for every shard not seen before (``start_at``: read from that unix time)."""
    if not shard_ids:
        return
    with transaction(conn, "ensure shards") as cur:
        for shard_id in sorted(shard_ids):
            cur.execute(_ENSURE, (stream, shard_id, start_at))


def checkpoints(conn: Connection, stream: str) -> dict[str, Checkpoint]:
    """Every known shard's checkpoint."""
    rows = query(
        conn,
        "SELECT shard_id, checkpoint, extract(epoch FROM moved_at), end_seq, extract(epoch FROM start_at)"
        " FROM stream_checkpoints WHERE stream = %s",
        (stream,),
    )
    return {
        sid: Checkpoint(_text(cp) or shards.START, float(moved), _text(end), None if start is None else float(start))
        for sid, cp, moved, end, start in rows
    }


def mark_end(conn: Connection, stream: str, shard_id: str, end_seq: str) -> None:
    """Record that a fetch read a closed shard to its end (its last record is ``end_seq``)."""
    with transaction(conn, "mark shard end") as cur:
        cur.execute(
            "UPDATE stream_checkpoints SET end_seq = %s WHERE stream = %s AND shard_id = %s",
            (shards.to_db(end_seq), stream, shard_id),
        )


def record_range(cur: Any, position: Position) -> str:
    """Inside a chunk's transaction: record its range and move the checkpoint; return the checkpoint."""
    key = (position.stream, position.shard_id)
    cur.execute(_ENSURE, (*key, None))  # a shard the fetch recorded is already there
    cur.execute(_LOCK, key)
    current = _text(cur.fetchone()[0]) or shards.START
    cur.execute(_RECORD, (*key, shards.to_db(position.after), shards.to_db(position.last)))
    cur.execute(_RANGES, (*key, shards.to_db(current)))
    moved = shards.advance(current, [(_text(a) or shards.START, _text(b) or shards.START) for a, b in cur.fetchall()])
    if moved != current:
        cur.execute(_MOVE, (shards.to_db(moved), *key))
        cur.execute(_FORGET, (*key, shards.to_db(moved)))
    return moved


_FIND = """
SELECT ordinal, (SELECT extract(epoch FROM max(p.created_at)) FROM stream_incarnations p
                 WHERE p.stream = i.stream AND p.created_at < i.created_at)
FROM stream_incarnations i WHERE stream = %s AND created_at = to_timestamp(%s)
"""
_ADD = """
INSERT INTO stream_incarnations (stream, created_at, ordinal, arn)
SELECT %s, to_timestamp(%s), coalesce(max(ordinal), 0) + 1, %s FROM stream_incarnations WHERE stream = %s
ON CONFLICT DO NOTHING RETURNING ordinal
"""


MAX_INCARNATIONS = 999  # "~999": what message ids leave room for (etl.settings.MAX_STREAM_NAME)


def incarnation(conn: Connection, name: str, created_at: float, arn: str | None) -> shards.Incarnation:
    """The stream's incarnation with this creation time, recorded if it is new (``new``). Fetches
    racing to record the same one agree on its ordinal (the unique keys decide)."""
    with transaction(conn, "stream incarnation") as cur:
        for _ in range(5):
            cur.execute(_FIND, (name, created_at))
            row = cur.fetchone()
            if row is not None:
                if int(row[0]) > MAX_INCARNATIONS:
                    raise TerminalError(f"stream {name}: re-created over {MAX_INCARNATIONS} times; use a new name")
                return shards.Incarnation(name, created_at, int(row[0]), False, _float(row[1]))
            cur.execute(_ADD, (name, created_at, arn, name))
            if cur.fetchone() is not None:
                cur.execute(_FIND, (name, created_at))
                ordinal, previous = cur.fetchone()
                if int(ordinal) > MAX_INCARNATIONS:
                    raise TerminalError(f"stream {name}: re-created over {MAX_INCARNATIONS} times; use a new name")
                return shards.Incarnation(name, created_at, int(ordinal), True, _float(previous))
    raise TransientError(f"stream {name}: its incarnation could not be recorded (concurrent re-creations)")


def current_incarnation(conn: Connection, name: str) -> shards.Incarnation | None:
    """The latest incarnation of ``name`` the pipeline has seen (for `etl stats`, `etl health`)."""
    rows = query(
        conn,
        "SELECT extract(epoch FROM created_at), ordinal FROM stream_incarnations WHERE stream = %s"
        " ORDER BY created_at DESC LIMIT 2",
        (name,),
    )
    if not rows:
        return None
    previous = _float(rows[1][0]) if len(rows) > 1 else None
    return shards.Incarnation(name, float(rows[0][0]), int(rows[0][1]), False, previous)


def _float(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)


def shard_report(conn: Connection, stream: str) -> list[dict[str, Any]]:
    """Per shard: checkpoint, whether its end was read, ranges waiting on a gap, checkpoint age."""
    rows = query(
        conn,
        """
        SELECT c.shard_id, c.checkpoint, c.end_seq, extract(epoch FROM now() - c.moved_at),
               (SELECT count(*) FROM stream_ranges r WHERE r.stream = c.stream AND r.shard_id = c.shard_id)
        FROM stream_checkpoints c WHERE c.stream = %s ORDER BY c.shard_id
        """,
        (stream,),
    )
    return [
        {
            "shard_id": sid,
            "checkpoint": _text(cp),
            "end": _text(end),
            "checkpoint_age_s": round(float(age), 1),
            "ranges_waiting": int(waiting),
        }
        for sid, cp, end, age, waiting in rows
    ]
