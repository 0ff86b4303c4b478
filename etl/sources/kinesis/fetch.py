"""The pipeline's two steps for a stream source (Kinesis), against narrow interfaces (no Celery).

* ``fetch``: read the shards this run leased, round robin, within each shard's read limit
  (GetRecords 5 calls/s), and hand each read on as one chunk with the contiguous range it
  covers. It pauses for backpressure and shutdown like the SQS fetch.
* ``process_chunk``: transform and write a chunk; its range and the shard's checkpoint commit in
  the same transaction (etl.store.streams). Nothing is deleted: a stream keeps its records, and
  the checkpoint is what says they are done.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from etl import store
from etl.crypto.masking import Masker
from etl.crypto.sealing import Sealer
from etl.crypto.vault import Vault
from etl.errors import TerminalError, TransientError
from etl.load import ChunkReport, chunk_report, write
from etl.model.records import Message
from etl.model.shards import START, Batch, IteratorExpired, Pointer, Position, Shard, Throttled, at_end

log = logging.getLogger("etl.streaming")

MIN_INTERVAL = 0.2  # GetRecords allows 5 calls per second per shard
IDLE_INTERVAL = 1.0  # a shard with nothing new is asked again after this long
MAX_BACKOFF = 5.0


class ShardReader(Protocol):
    name: str

    def iterator(self, shard_id: str, after: str, start_at: float | None = None) -> str: ...
    def read(self, shard_id: str, iterator: str, limit: int) -> Batch: ...


@dataclass
class Cursor:
    """One leased shard during a fetch run."""

    shard: Shard
    pointer: Pointer
    start_at: float | None = None
    iterator: str | None = None
    next_call: float = 0.0
    backoff: float = 0.0
    behind_ms: int | None = None
    read: int = 0
    gap_after: str | None = None  # Kinesis refused the pointer: the next read starts at the trim horizon


@dataclass
class StreamFetchReport:
    received: int = 0
    chunks: int = 0
    calls: int = 0
    seconds: float = 0.0
    stopped: str = "budget"
    ended: list[str] = field(default_factory=list)  # shards read to their end in this run
    throttled: int = 0


def fetch(
    reader: ShardReader,
    cursors: list[Cursor],
    dispatch: Callable[[Position, list[Message]], None],
    *,
    chunk_size: int,
    budget_seconds: float,
    advanced: Callable[[Cursor], None] = lambda c: None,
    ended: Callable[[Cursor], None] = lambda c: None,
    expired: Callable[[Cursor], None] = lambda c: None,
    pause: Callable[[], str | None] = lambda: None,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> StreamFetchReport:
    """Read ``cursors`` for up to ``budget_seconds``; each non-empty read becomes one chunk.

    A chunk is dispatched before its cursor moves (``advanced`` saves the pointer): a crash in
    between re-reads the chunk (idempotent), never skips it. A closed shard read to its end is
    reported to ``ended`` and dropped. A failed dispatch stops the run with the pointer where it
    was. A pointer Kinesis no longer accepts (past the stream's retention) makes the shard read
    on from its oldest record kept; if records are found there, the ones between expired unread
    and are reported to ``expired``.
    """
    started = clock()
    deadline = started + budget_seconds
    report = StreamFetchReport()
    active = list(cursors)
    while active:
        now = clock()
        if now >= deadline:
            report.stopped = "budget"
            break
        reason = pause()
        if reason:
            report.stopped = reason
            break
        cursor = min(active, key=lambda c: c.next_call)
        if cursor.next_call > now:
            sleep(min(cursor.next_call, deadline) - now)
            continue
        shard_id = cursor.shard.shard_id
        try:
            if cursor.iterator is None:
                cursor.iterator = _iterator(reader, cursor, expired)
            batch = reader.read(shard_id, cursor.iterator, chunk_size)
        except IteratorExpired:
            cursor.iterator = None  # a fresh one from the pointer, at once
            continue
        except Throttled:
            report.throttled += 1
            cursor.backoff = min(max(2 * cursor.backoff, MIN_INTERVAL * 2), MAX_BACKOFF)
            cursor.next_call = clock() + cursor.backoff
            continue
        except TransientError as exc:
            log.warning("shard %s: %s; trying it again shortly", shard_id, exc)
            cursor.iterator = None
            cursor.backoff = min(max(2 * cursor.backoff, 1.0), MAX_BACKOFF)
            cursor.next_call = clock() + cursor.backoff
            continue
        report.calls += 1
        cursor.backoff = 0.0
        cursor.behind_ms = batch.behind_ms
        if cursor.gap_after is not None:
            # Records found past a refused pointer: whatever lay between them expired unread. None
            # found: the pointer's own record aged out of an idle shard, and nothing was missed.
            if batch.messages:
                expired(cursor)
            cursor.gap_after = None
        if batch.messages:
            position = Position(reader.name, shard_id, cursor.pointer.seq, batch.messages[-1].receipt_handle)
            dispatch(position, batch.messages)
            cursor.pointer = Pointer(position.last, cursor.pointer.pending_since or wall())
            advanced(cursor)
            report.received += len(batch.messages)
            report.chunks += 1
            cursor.read += len(batch.messages)
        cursor.iterator = batch.next_iterator
        if at_end(cursor.shard, cursor.pointer, batch.next_iterator):
            ended(cursor)
            report.ended.append(shard_id)
            active.remove(cursor)
            continue
        cursor.next_call = clock() + (MIN_INTERVAL if batch.messages else IDLE_INTERVAL)
    report.seconds = clock() - started
    if not active and report.stopped == "budget":
        report.stopped = "shards ended"
    return report


def _iterator(reader: ShardReader, cursor: Cursor, expired: Callable[[Cursor], None]) -> str:
    shard_id = cursor.shard.shard_id
    try:
        return reader.iterator(shard_id, cursor.pointer.seq, cursor.start_at)
    except TerminalError:
        if cursor.pointer.seq == START:
            raise
        cursor.gap_after = cursor.pointer.seq  # judged by what the trim horizon holds (see fetch)
        return reader.iterator(shard_id, START, None)


def process_chunk(
    messages: list[Message],
    position: Position,
    *,
    masker: Masker,
    sealer: Sealer,
    conn: store.Connection,
    label: str = "",
    vault: Vault | None = None,
) -> ChunkReport:
    """Transform and write a chunk of one shard; its range and checkpoint commit with the rows."""
    started = time.monotonic()
    written = write(messages, masker=masker, sealer=sealer, conn=conn, label=label, vault=vault, position=position)
    seconds = time.monotonic() - started
    return chunk_report(messages, written, [], started, seconds, label)
