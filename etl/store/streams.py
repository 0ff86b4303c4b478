"""Kinesis positions in Postgres: per-shard checkpoints and the committed ranges behind them.

A chunk records its range in its own write transaction (``record_range``), and in that same
transaction the shard's checkpoint moves over every committed range that starts at or before
it (``etl.model.shards.advance``). The checkpoint row is locked first, so two chunks of one shard
committing at once take turns, and the later one sees the earlier one's range.
"""

from decimal import Decimal
from typing import Any

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
