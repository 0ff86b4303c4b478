"""Thin Celery tasks for a stream source (ETL_SOURCE=kinesis): wiring only.

The logic lives in etl.sources.kinesis.fetch (reading, chunk writing) and etl.model.shards (lineage, where to read
on). State lives where it must survive what it guards against:

* the committed position of each shard (checkpoint) in Postgres, in each chunk's transaction;
* which fetch reads a shard (a lease), and how far it has handed records on (a pointer), in
  Redis: losing them costs a re-read, never a record.
"""

import contextlib
import logging
import random
import time
from contextlib import ExitStack
from typing import Any

from etl.crypto.sealing import Sealer
from etl.errors import Expired, TransientError
from etl.model import records, shards
from etl.model.records import Message
from etl.model.shards import Pointer, Position
from etl.sources.kinesis import fetch as streaming
from etl.store import streams
from etl.worker import metrics, runtime
from etl.worker.celery import app
from etl.worker.coordination import stream_key
from etl.worker.tasks import (
    CHUNK_TASK_OPTIONS,
    MASK_AND_WRITE_STREAM,
    QUEUE,
    _shutting_down,
    chunk_argsrepr,
    chunk_attempt,
    committed,
)

log = logging.getLogger("etl.stream_tasks")
FETCH_STREAM = "etl.fetch_stream"


def send_stream_chunk(position: Position, chunk: list[Message], sealer: Sealer) -> None:
    """Queue one chunk of one shard for etl.mask_and_write_stream, sealed like an SQS chunk."""
    mask_and_write_stream.apply_async(
        args=[records.pack_chunk(chunk, sealer), position.as_dict()],
        argsrepr=chunk_argsrepr(len(chunk)),
        kwargsrepr="{}",
    )
    metrics.STREAM_READ.inc(len(chunk))


def _pointer(raw: dict[str, Any] | None) -> Pointer | None:
    if not raw or not str(raw.get("seq", "")).isdigit():
        return None
    return Pointer(str(raw["seq"]), raw.get("pending_since"))


@app.task(name=FETCH_STREAM, bind=True, acks_late=False, ignore_result=True)
def fetch_stream(self: Any) -> dict[str, Any]:
    """Beat's task for Kinesis: lease free shards, read them for a few seconds, fan out chunks."""
    rt = runtime.get()
    s = rt.settings
    stream = rt.stream()
    try:
        conn = rt.conn()
        listed = stream.shards()
        known = streams.checkpoints(conn, stream.name)
        new = [x.shard_id for x in listed if x.shard_id not in known]
        if new:
            # "latest" applies to the stream's first contact only: shards born later (splits,
            # merges) are read from their start, or their first records would be skipped.
            start_at = time.time() if s.kinesis_start == "latest" and not known else None
            streams.ensure_shards(conn, stream.name, new, start_at)
            known = streams.checkpoints(conn, stream.name)
        pointers = rt.coordinator.entries(stream_key(stream.name, "pointers"))
    except TransientError as exc:
        rt.drop_conn()
        log.warning("stream fetch skipped: %s (the next beat tries again)", exc)
        return {"skipped": str(exc)}

    def pause() -> str | None:
        if _shutting_down.is_set():
            return "shutdown"
        if rt.coordinator.queued(QUEUE) >= s.max_queued_chunks:
            return "backpressure"
        return None

    def advanced(cursor: streaming.Cursor) -> None:
        p = cursor.pointer
        rt.coordinator.put(
            stream_key(stream.name, "pointers"), cursor.shard.shard_id, {"seq": p.seq, "pending_since": p.pending_since}
        )

    def ended(cursor: streaming.Cursor) -> None:
        streams.mark_end(conn, stream.name, cursor.shard.shard_id, cursor.pointer.seq)
        log.info("shard %s read to its end (last record %s)", cursor.shard.shard_id, cursor.pointer.seq)

    def expired(cursor: streaming.Cursor) -> None:
        metrics.STREAM_EXPIRED.inc()
        log.error(
            "shard %s: Kinesis no longer has the records after %s (past the stream's retention): they are LOST; "
            "reading on from the oldest record kept. Raise the retention or add workers.",
            cursor.shard.shard_id,
            cursor.pointer.seq,
        )

    candidates = shards.readable(listed, known)
    with contextlib.suppress(TransientError):  # finished or vanished shards report nothing any more
        readable = {c.shard_id for c in candidates}
        for stale in set(rt.coordinator.entries(stream_key(stream.name, "status"))) - readable:
            rt.coordinator.forget(stream_key(stream.name, "status"), stale)
    random.shuffle(candidates)  # fetch runs on several workers spread over the shards
    with ExitStack() as stack:
        cursors: list[streaming.Cursor] = []
        for shard in candidates:
            if len(cursors) >= s.kinesis_shards_per_fetch:
                break
            try:
                held = stack.enter_context(
                    rt.coordinator.lease(stream_key(stream.name, f"lease:{shard.shard_id}"), s.fetch_seconds + 10)
                )
            except TransientError as exc:
                log.warning("stream fetch skipped: %s (the next beat tries again)", exc)
                return {"skipped": "redis unavailable"}
            if not held:
                continue
            checkpoint = known[shard.shard_id]
            pointer, reread = shards.resume(
                checkpoint, _pointer(pointers.get(shard.shard_id)), time.time(), s.visibility_timeout
            )
            if reread:
                log.warning(
                    "shard %s: checkpoint %s has not moved for over %ds with chunks in flight; "
                    "reading on from it again (records already written are skipped)",
                    shard.shard_id,
                    checkpoint.seq,
                    s.visibility_timeout,
                )
            cursors.append(streaming.Cursor(shard, pointer, checkpoint.start_at))
        if not cursors:
            return {"skipped": "no shard free" if candidates else "no shard to read"}
        rt.coordinator.heartbeat("fetch", self.request.hostname or "?")
        try:
            report = streaming.fetch(
                stream,
                cursors,
                lambda position, chunk: send_stream_chunk(position, chunk, rt.sealer),
                chunk_size=s.chunk_size,
                budget_seconds=s.fetch_seconds,
                advanced=advanced,
                ended=ended,
                expired=expired,
                pause=pause,
            )
        finally:
            publish_status(rt, stream.name, cursors, known)
    rt.coordinator.heartbeat("fetch", self.request.hostname or "?")
    if report.received or report.ended or report.stopped == "backpressure":
        log.info(
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


def publish_status(
    rt: runtime.Runtime, stream: str, cursors: list[streaming.Cursor], known: dict[str, shards.Checkpoint]
) -> None:
    """Each read shard's lag and checkpoint, for metrics, `etl stats` and `etl health` (best effort)."""
    now = time.time()
    for c in cursors:
        cp = known.get(c.shard.shard_id)
        try:
            rt.coordinator.put(
                stream_key(stream, "status"),
                c.shard.shard_id,
                {
                    "behind_ms": c.behind_ms,
                    "at": now,
                    "pointer": c.pointer.seq,
                    "checkpoint_moved_at": cp.moved_at if cp else None,
                    # handed on past the checkpoint this run started from: records read but not
                    # known committed (a shard stuck here has lag 0 and an ageing checkpoint)
                    "uncommitted": bool(cp) and int(c.pointer.seq) > int(cp.seq if cp else 0),
                },
            )
        except TransientError:
            return


@app.task(name=MASK_AND_WRITE_STREAM, **CHUNK_TASK_OPTIONS)
def mask_and_write_stream(self: Any, sealed: str, position: dict[str, str]) -> dict[str, int]:
    """Validate, mask and write one chunk of one shard; its checkpoint moves in the same commit.

    A chunk that never commits (out of retries, lost with the broker) holds its shard's
    checkpoint back; the next fetch reads on from the checkpoint after SQS_VISIBILITY_TIMEOUT.
    """
    rt = runtime.get()
    try:  # a chunk older than the visibility timeout is dropped: a replayed capture writes nothing
        messages = records.unpack_chunk(sealed, rt.sealer, max_age=rt.settings.visibility_timeout)
    except Expired as exc:
        log.warning("chunk %s: dropped, %s; its records are read again from the checkpoint", self.request.id, exc)
        return {"inserted": 0, "rejected": 0, "duplicates": 0}
    where = Position(**position)
    with chunk_attempt(
        self,
        rt,
        "its records stay in the stream",
        lambda: log.warning(
            "chunk %s: time limit hit; shard %s will be read again from its checkpoint", self.request.id, where.shard_id
        ),
    ) as conn:
        report = streaming.process_chunk(
            messages,
            where,
            masker=rt.masker,
            sealer=rt.sealer,
            conn=conn,
            label=self.request.id or "",
            vault=rt.vault(),
        )
    committed(self, rt, report, messages, fetch_stream, deleted=False)
    return {"inserted": report.inserted, "rejected": report.rejected, "duplicates": report.duplicates}
