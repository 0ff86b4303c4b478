"""One fetch run of the stream source (Kinesis), and its chunk write, against narrow interfaces.

* ``run``: one fetch run as beat's task makes it: list the shards, record new ones, note the
  stream's incarnation (a stream deleted and re-created is read from its start), lease free ones,
  resume each from its checkpoint and read pointer, ``fetch`` (etl.sources.kinesis.fetch), publish
  each shard's status. State lives where it must survive what it guards against: each shard's
  committed position (checkpoint) in Postgres, in each chunk's transaction; which fetch reads a
  shard (a lease) and how far it has handed records on (a pointer) in Redis, where losing them
  costs a re-read.
* ``process_chunk``: transform and write a chunk; its range and the shard's checkpoint commit in
  the same transaction (etl.store.streams). Nothing is deleted: a stream keeps its records, and
  the checkpoint is what says they are done.
"""

import contextlib
import logging
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from datetime import UTC, datetime
from typing import Any, Protocol

from etl import store
from etl.crypto.masking import Masker
from etl.crypto.sealing import Sealer
from etl.crypto.vault import Vault
from etl.errors import EtlError, TransientError
from etl.load import ChunkReport, chunk_report, write
from etl.model import chunking, shards
from etl.model.records import Message
from etl.model.shards import Pointer, Position, Shard
from etl.sources.kinesis.fetch import Cursor, ShardReader, fetch, stream_key
from etl.store import streams

# A fetch run's own lines keep the logger they had when this lived in etl.worker.stream_tasks
# (JSON logs name it).
run_log = logging.getLogger("etl.stream_tasks")
STATUS_EVERY = 1.0  # seconds between a run's publications of its shards' status


class ShardSource(ShardReader, Protocol):
    """A stream that also lists its shards and says which incarnation it is (etl.sources.kinesis.stream.Stream)."""

    def shards(self) -> list[Shard]: ...
    def incarnation(self) -> tuple[float, str | None]: ...


class Database(Protocol):
    """The process's Postgres connection (etl.worker.runtime.Runtime)."""

    def conn(self) -> store.Connection: ...
    def drop_conn(self) -> None: ...


class Coordination(Protocol):
    """Leases and small JSON hashes in Redis (etl.worker.coordination.Coordinator)."""

    def lease(self, name: str, seconds: float) -> AbstractContextManager[bool]: ...
    def entries(self, name: str) -> dict[str, dict[str, Any]]: ...
    def put(self, name: str, key: str, value: dict[str, Any]) -> None: ...
    def forget(self, name: str, key: str) -> None: ...


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


def run(
    stream: ShardSource,
    db: Database,
    redis: Coordination,
    dispatch: Callable[[Position, list[Message]], None],
    *,
    chunk_size: int,
    chunk_bytes: int = chunking.DEFAULT_CHUNK_BYTES,
    budget_seconds: float,
    shards_per_fetch: int,
    start: str,
    reread_after: float,
    pause: Callable[[], str | None] = lambda: None,
    room: Callable[[], int] | None = None,
    heartbeat: Callable[[], None] = lambda: None,
    on_expired: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """One fetch run: lease up to ``shards_per_fetch`` free shards and read them for up to
    ``budget_seconds`` (``fetch``), handing each read on to ``dispatch``; returns what the task
    reports (records, chunks and why it stopped, or why it was skipped).

    Shards never seen get a checkpoint first (``start``: "latest" applies to the stream's first
    contact only). A shard whose checkpoint has not moved for ``reread_after`` seconds with
    chunks in flight is read again from it. ``heartbeat`` runs before and after the reads;
    ``on_expired`` counts records lost to the stream's retention (also logged).
    """
    try:
        conn = db.conn()
        verified_at = time.time()
        life = streams.incarnation(conn, stream.name, *stream.incarnation())
        stream.key = life.key
        # which key the status below is published under, for the metrics (etl.worker.chunks)
        redis.put(stream_key(stream.name, "incarnation"), "current", {"key": life.key})
        if life.new and life.previous_created_at is not None:
            run_log.warning(
                "stream %s was deleted and re-created (created %s, the one read before %s): reading the new "
                "stream from its start, its checkpoints and message ids under %s",
                stream.name,
                _when(life.created_at),
                _when(life.previous_created_at),
                life.key,
            )
        listed = stream.shards()
        known = streams.checkpoints(conn, stream.key)
        new = [x.shard_id for x in listed if x.shard_id not in known]
        if new:
            # "latest" applies to the stream's first contact only: shards born later (splits,
            # merges) and a re-created stream are read from their start, or records would be skipped.
            start_at = time.time() if start == "latest" and not known and life.ordinal == 1 else None
            streams.ensure_shards(conn, stream.key, new, start_at)
            known = streams.checkpoints(conn, stream.key)
        pointers = redis.entries(stream_key(stream.key, "pointers"))
    except TransientError as exc:
        db.drop_conn()
        run_log.warning("stream fetch skipped: %s (the next beat tries again)", exc)
        return {"skipped": str(exc)}

    def advanced(cursor: Cursor) -> None:
        p = cursor.pointer
        redis.put(
            stream_key(stream.key, "pointers"), cursor.shard.shard_id, {"seq": p.seq, "pending_since": p.pending_since}
        )

    def ended(cursor: Cursor) -> None:
        streams.mark_end(conn, stream.key, cursor.shard.shard_id, cursor.pointer.seq)
        run_log.info("shard %s read to its end (last record %s)", cursor.shard.shard_id, cursor.pointer.seq)

    def expired(cursor: Cursor) -> None:
        on_expired()
        run_log.error(
            "shard %s: Kinesis no longer has the records after %s (past the stream's retention): they are LOST; "
            "reading on from the oldest record kept. Raise the retention or add workers.",
            cursor.shard.shard_id,
            cursor.pointer.seq,
        )

    candidates = shards.readable(listed, known)
    with contextlib.suppress(TransientError):  # finished or vanished shards report nothing any more
        readable = {c.shard_id for c in candidates}
        for stale in set(redis.entries(stream_key(stream.key, "status"))) - readable:
            redis.forget(stream_key(stream.key, "status"), stale)
    random.shuffle(candidates)  # fetch runs on several workers spread over the shards
    with ExitStack() as stack:
        cursors: list[Cursor] = []
        for shard in candidates:
            if len(cursors) >= shards_per_fetch:
                break
            try:
                held = stack.enter_context(
                    redis.lease(stream_key(stream.key, f"lease:{shard.shard_id}"), budget_seconds + 10)
                )
            except TransientError as exc:
                run_log.warning("stream fetch skipped: %s (the next beat tries again)", exc)
                return {"skipped": "redis unavailable"}
            if not held:
                continue
            checkpoint = known[shard.shard_id]
            pointer, reread = shards.resume(
                checkpoint, _pointer(pointers.get(shard.shard_id)), time.time(), reread_after
            )
            if reread:
                run_log.warning(
                    "shard %s: checkpoint %s has not moved for over %ds with chunks in flight; "
                    "reading on from it again (records already written are skipped)",
                    shard.shard_id,
                    checkpoint.seq,
                    reread_after,
                )
            cursors.append(Cursor(shard, pointer, checkpoint.start_at))
        if not cursors:
            return {"skipped": "no shard free" if candidates else "no shard to read"}
        heartbeat()
        published = [0.0]  # the first read publishes at once

        def read(cursor: Cursor, before: int | None) -> None:
            """The shards' lag and pointers for `etl stats`, `etl health` and the metrics: at most
            once a STATUS_EVERY while the run goes on, at once when a shard has caught up, and
            at the run's end (below)."""
            caught_up = cursor.behind_ms == 0 and before != 0
            if caught_up or time.monotonic() - published[0] >= STATUS_EVERY:
                published[0] = time.monotonic()
                publish_status(redis, stream.key, cursors, known)

        try:
            report = fetch(
                stream,
                cursors,
                dispatch,
                chunk_size=chunk_size,
                chunk_bytes=chunk_bytes,
                budget_seconds=budget_seconds,
                advanced=advanced,
                ended=ended,
                expired=expired,
                pause=pause,
                room=room,
                read=read,
                same_stream=lambda: _same(stream, life.created_at),
                verified_at=verified_at,
            )
        finally:
            publish_status(redis, stream.key, cursors, known)
    heartbeat()
    if report.received or report.ended or report.stopped == "backpressure":
        run_log.info(
            "read %d records from %d shards in %d chunks (%d reads, %.2fs, stopped: %s)",
            report.received,
            len(cursors),
            report.chunks,
            report.calls,
            report.seconds,
            report.stopped,
            extra={
                "received": report.received,
                "shards": len(cursors),
                "chunks": report.chunks,
                "reads": report.calls,
                "seconds": round(report.seconds, 4),
                "stopped": report.stopped,
            },
        )
    return {"received": report.received, "chunks": report.chunks, "stopped": report.stopped}


def _same(stream: ShardSource, created_at: float) -> bool:
    try:
        return abs(stream.incarnation()[0] - created_at) < 0.001
    except EtlError:  # deleted (not found) or unreachable: read nothing more in this run
        return False


def _when(unix: float) -> str:
    return datetime.fromtimestamp(unix, tz=UTC).isoformat(timespec="milliseconds")


def _pointer(raw: dict[str, Any] | None) -> Pointer | None:
    if not raw or not shards.is_position(str(raw.get("seq", ""))):
        return None
    return Pointer(str(raw["seq"]), raw.get("pending_since"))


def publish_status(
    redis: Coordination, stream: str, cursors: list[Cursor], known: dict[str, shards.Checkpoint]
) -> None:
    """Each read shard's lag and checkpoint, for metrics, `etl stats` and `etl health` (best effort)."""
    now = time.time()
    for c in cursors:
        cp = known.get(c.shard.shard_id)
        try:
            redis.put(
                stream_key(stream, "status"),
                c.shard.shard_id,
                {
                    "behind_ms": c.behind_ms,
                    "at": now,
                    "pointer": c.pointer.seq,
                    "checkpoint_moved_at": cp.moved_at if cp else None,
                    # handed on past the checkpoint this run started from: records read but not
                    # known committed (a shard stuck here has lag 0 and an ageing checkpoint)
                    "uncommitted": bool(cp) and shards.key(c.pointer.seq) > shards.key(cp.seq if cp else shards.START),
                },
            )
        except TransientError:
            return
