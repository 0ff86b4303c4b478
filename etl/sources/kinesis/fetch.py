"""The stream source's (Kinesis) read loop, against a narrow reader interface (no Celery).

One fetch run's set-up (shards, leases, checkpoints, incarnations, status) and the chunk write
live in etl.sources.kinesis.runner; this module is the loop they drive:

* ``fetch``: read the shards this run leased, round robin, within each shard's read limit
  (GetRecords 5 calls/s), and hand each read on as chunks, each with the contiguous range it
  covers. It stops when the broker is full (backpressure: the task queues the next run shortly)
  and on shutdown.
* ``hand_on``: a read as chunks bounded by count and bytes, a refused chunk split (etl.model.chunking).
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from etl.errors import TerminalError, TransientError
from etl.model import chunking, shards
from etl.model.records import Message
from etl.model.shards import START, Batch, IteratorExpired, Pointer, Position, Shard, Throttled, at_end

log = logging.getLogger("etl.streaming")

MIN_INTERVAL = 0.2  # GetRecords allows 5 calls per second per shard
IDLE_INTERVAL = 1.0  # a shard with nothing new is asked again after this long
MAX_BACKOFF = 5.0
VERIFY_EVERY = 1.0  # at most one DescribeStreamSummary a second per fetch run, for reads at the stream's tip
CLOCK_SKEW = 30.0  # seconds our clock may differ from Kinesis' ApproximateArrivalTimestamp
# A read asks for this many chunks' worth of records (at most GetRecords' 10,000): with 5 reads a
# second per shard, reads of one chunk would cap a shard at 5 chunks a second, whatever the CPU.
READ_CHUNKS = 4
MAX_READ = 10_000


class Paused(Exception):
    """A read cut short: the broker filled up (or shutdown came) while its chunks went on. The
    cursor's pointer is past what went; the rest is read again, from it, by the next run."""

    def __init__(self, chunks: int, records: int) -> None:
        super().__init__(f"{chunks} chunks ({records} records) of a read went on")
        self.chunks, self.records = chunks, records


class ShardReader(Protocol):
    name: str
    key: str  # the incarnation's key (etl.model.shards.Incarnation.key): positions name the stream by it

    def iterator(self, shard_id: str, after: str, start_at: float | None = None) -> str: ...
    def read(self, shard_id: str, iterator: str, limit: int) -> Batch: ...


def stream_key(stream: str, what: str) -> str:
    """A Kinesis stream's Redis key: "pointers" and "status" (hashes by shard), "lease:<shard>";
    "incarnation" (under the stream's name: the key its current incarnation is read under);
    "successor" (a flag: one run after backpressure queues the next)."""
    return f"etl:stream:{stream}:{what}"


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
    read_to: str | None = None  # the last position read (ahead of the pointer while reads are held)
    draining: bool = False  # read to the shard's end; held reads still to hand on


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
    chunk_bytes: int = chunking.DEFAULT_CHUNK_BYTES,
    budget_seconds: float,
    advanced: Callable[[Cursor], None] = lambda c: None,
    ended: Callable[[Cursor], None] = lambda c: None,
    expired: Callable[[Cursor], None] = lambda c: None,
    pause: Callable[[], str | None] = lambda: None,
    room: Callable[[], int] | None = None,
    read: Callable[[Cursor, int | None], None] = lambda c, before: None,
    same_stream: Callable[[], bool] | None = None,
    verified_at: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> StreamFetchReport:
    """Read ``cursors`` for up to ``budget_seconds``; each read asks for up to READ_CHUNKS chunks'
    worth of records and goes on as chunks in order of at most ``chunk_size`` user records and
    ``chunk_bytes`` broker bytes (``hand_on``; aggregated records can make a read longer).

    A chunk is dispatched before its cursor moves (``advanced`` saves the pointer): a crash in
    between re-reads the chunk (idempotent), never skips it. A closed shard read to its end is
    reported to ``ended`` and dropped. ``read`` runs after every read with the cursor and its
    lag before it (the shards' lag is published from it while the run goes on). A failed
    dispatch stops the run with the pointer where it was. A pointer Kinesis no longer accepts
    (past the stream's retention) makes the shard read on from its oldest record kept; if
    records are found there, the ones between expired unread and are reported to ``expired``.

    ``room`` (how many chunks the broker takes now) sizes each read to it, so that a read is
    rarely cut (``hand_on``'s ``more``).

    ``same_stream`` (checked true at unix time ``verified_at``) says whether the stream is still
    the incarnation the run started on. A read holding records that arrived after the last check
    (less a clock-skew margin) could come from a stream deleted and re-created since, read
    through an old iterator: it is held until the next check (at most one a VERIFY_EVERY), and
    dropped unread, ending the run, if the stream changed.
    """
    started = clock()
    deadline = started + budget_seconds
    report = StreamFetchReport()
    active = list(cursors)
    held: list[tuple[Cursor, Batch]] = []
    checked = verified_at

    def go_on(c: Cursor, b: Batch) -> None:
        def send(p: Position, ms: list[Message], moved: Callable[[str], None]) -> int:
            return hand_on(p, ms, dispatch, chunk_size, chunk_bytes, moved, more=lambda: pause() is None)

        _hand_on(reader, c, b, send, advanced, wall, report)
        if at_end(c.shard, c.pointer, b.next_iterator) and c in active:
            ended(c)
            report.ended.append(c.shard.shard_id)
            active.remove(c)

    def verify_and_hand_on() -> bool:
        nonlocal checked
        at = wall()
        if same_stream is not None and not same_stream():
            held.clear()
            report.stopped = "stream re-created"
            return False
        checked = at
        try:
            for c, b in held:
                go_on(c, b)
        except Paused:
            held.clear()
            report.stopped = pause() or "backpressure"
            return False
        held.clear()
        return True

    while active:
        now = clock()
        if now >= deadline:
            break
        reason = pause()
        if reason:
            # Backpressure ends the run, rather than waiting in it: a run holds a worker process,
            # and the chunks it waits for need those processes (the task queues the next run
            # shortly, etl.worker.stream_tasks). A read meeting it part-way is cut (Paused).
            report.stopped = reason
            break
        if held and wall() - checked >= VERIFY_EVERY:
            if not verify_and_hand_on():
                return _done(report, clock, started, active)
            continue
        free = [c for c in active if not c.draining]
        cursor = min(free, key=lambda c: c.next_call) if free else None
        if cursor is None or cursor.next_call > now:
            until = deadline if cursor is None else min(cursor.next_call, deadline)
            if held:
                until = min(until, now + max(0.0, checked + VERIFY_EVERY - wall()))
            sleep(max(until - now, 0.0))
            continue
        shard_id = cursor.shard.shard_id
        try:
            if cursor.iterator is None:
                cursor.iterator = _iterator(reader, cursor, expired)
            # no more chunks' worth than the broker takes: a read cut short (Paused) is read twice
            chunks = READ_CHUNKS if room is None else max(1, min(READ_CHUNKS, room()))
            batch = reader.read(shard_id, cursor.iterator, min(MAX_READ, chunks * chunk_size))
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
        before, cursor.behind_ms = cursor.behind_ms, batch.behind_ms
        read(cursor, before)
        if cursor.gap_after is not None:
            # Records found past a refused pointer: whatever lay between them expired unread. None
            # found: the pointer's own record aged out of an idle shard, and nothing was missed.
            if batch.messages:
                expired(cursor)
            cursor.gap_after = None
        _read_on(cursor, batch, clock)
        fresh = (checked - CLOCK_SKEW) * 1000
        if same_stream is not None and (
            any(c is cursor for c, _ in held) or any(m.sent_timestamp_ms >= fresh for m in batch.messages)
        ):
            held.append((cursor, batch))  # the shard is read on meanwhile; hand-ons keep their order
            continue
        try:
            go_on(cursor, batch)
        except Paused:
            report.stopped = pause() or "backpressure"
            break
    if held:
        verify_and_hand_on()
    return _done(report, clock, started, active)


def _done(
    report: StreamFetchReport, clock: Callable[[], float], started: float, active: list[Cursor]
) -> StreamFetchReport:
    report.seconds = clock() - started
    if not active and report.stopped == "budget":
        report.stopped = "shards ended"
    return report


def _read_on(cursor: Cursor, batch: Batch, clock: Callable[[], float]) -> None:
    """After a read: the next one's iterator and time (or none, at a closed shard's end)."""
    if batch.messages:
        cursor.read_to = batch.messages[-1].receipt_handle
    cursor.iterator = batch.next_iterator
    cursor.draining = at_end(cursor.shard, Pointer(cursor.read_to or cursor.pointer.seq), batch.next_iterator)
    cursor.next_call = clock() + (MIN_INTERVAL if batch.messages else IDLE_INTERVAL)


def _hand_on(
    reader: ShardReader,
    cursor: Cursor,
    batch: Batch,
    send: Callable[[Position, list[Message], Callable[[str], None]], int],
    advanced: Callable[[Cursor], None],
    wall: Callable[[], float],
    report: StreamFetchReport,
) -> None:
    """A read's records go on (``send``: as one chunk or several), the cursor moving past each
    chunk as it goes (a run that dies between two resumes after the first).

    Records already handed on are dropped first: a fetch that resumes inside an aggregated record
    reads it again (its position says which of its user records went on).
    """
    messages = shards.after(batch.messages, cursor.pointer.seq)
    if not messages:
        return
    position = Position(reader.key, cursor.shard.shard_id, cursor.pointer.seq, messages[-1].receipt_handle)

    def moved(last: str) -> None:
        cursor.pointer = Pointer(last, cursor.pointer.pending_since or wall())
        advanced(cursor)

    try:
        report.chunks += send(position, messages, moved)
    except Paused as cut:
        report.chunks += cut.chunks
        report.received += cut.records
        cursor.read += cut.records
        cursor.iterator = None  # the rest of the read: read again from the pointer
        raise
    report.received += len(messages)
    cursor.read += len(messages)


def hand_on(
    position: Position,
    messages: list[Message],
    dispatch: Callable[[Position, list[Message]], None],
    chunk_size: int,
    chunk_bytes: int,
    moved: Callable[[str], None] = lambda last: None,
    more: Callable[[], bool] = lambda: True,
) -> int:
    """Dispatch one read (``position`` its range) as chunks of at most ``chunk_size`` records and
    ``chunk_bytes`` broker bytes, each with its own contiguous range; returns how many. A boundary
    may fall inside an aggregated record (its user records' positions say where).

    A record over the stream's 1 MiB is withheld (``too_large``); a chunk the broker refuses is
    split, down to a record rejected alone (``broker_refused``: etl.model.chunking.deliver). If
    the broker is down, the error stops the run with the shard's pointer where it was: what was
    handed on is read again and skipped as already written. ``moved`` runs after each chunk, with
    its last position; ``more`` before each further one: once it says no (the broker is full),
    what is left of the read is not handed on (``Paused``): the run ends and the next reads it
    again from the pointer. Waiting for room here would hold the worker process the queued
    chunks need; handing the rest on would break the broker's memory bound (a read can be 10 MB).
    """
    after = {}  # each record's range start: the position of the record before it
    previous = position.after
    for m in messages:
        after[m.receipt_handle] = previous
        previous = m.receipt_handle

    def send(part: list[Message]) -> None:
        dispatch(replace(position, after=after[part[0].receipt_handle], last=part[-1].receipt_handle), part)

    chunks = chunking.cut(chunking.screen(messages), chunk_size, chunk_bytes)
    sent = 0
    for n, part in enumerate(chunks):
        if n and not more():
            raise Paused(n, sent)
        try:
            refused = chunking.deliver(part, send)
        except chunking.Undelivered as exc:
            log.warning(
                "shard %s: dispatch failed (%s); the shard is read again from its pointer", position.shard_id, exc
            )
            raise exc.cause from None
        if refused:
            log.warning(
                "shard %s: the broker refused %d records on their own (broker_refused)", position.shard_id, len(refused)
            )
        moved(part[-1].receipt_handle)
        sent += len(part)
    return len(chunks)


def _iterator(reader: ShardReader, cursor: Cursor, expired: Callable[[Cursor], None]) -> str:
    shard_id = cursor.shard.shard_id
    try:
        return reader.iterator(shard_id, cursor.pointer.seq, cursor.start_at)
    except TerminalError:
        if cursor.pointer.seq == START:
            raise
        cursor.gap_after = cursor.pointer.seq  # judged by what the trim horizon holds (see fetch)
        return reader.iterator(shard_id, START, None)
