"""Thin Celery tasks for a stream source (ETL_SOURCE=kinesis): wiring only.

The logic lives in etl.sources.kinesis.fetch (the fetch run: shards, checkpoints, leases and
pointers; reading; chunk writing) and etl.model.shards (lineage, where to read on); what both
sources' tasks share in etl.worker.chunks.
"""

import logging
from typing import Any

from etl.crypto.sealing import Sealer
from etl.errors import TransientError
from etl.model import records
from etl.model.records import Message
from etl.model.shards import Position
from etl.sources.kinesis import runner
from etl.sources.kinesis.fetch import stream_key
from etl.worker import chunks, metrics, runtime
from etl.worker.celery import app
from etl.worker.chunks import CHUNK_TASK_OPTIONS, MASK_AND_WRITE_STREAM
from etl.worker.coordination import Coordinator

log = logging.getLogger("etl.stream_tasks")
FETCH_STREAM = "etl.fetch_stream"
ROOM_WAIT = 0.5  # seconds before a run that met backpressure is followed by the next


def send_stream_chunk(
    position: Position, chunk: list[Message], sealer: Sealer, coordinator: Coordinator, keep: int
) -> None:
    """Queue one chunk of one shard for etl.mask_and_write_stream, sealed and kept like an SQS chunk."""
    chunks.hand_on(
        mask_and_write_stream, coordinator, records.pack_chunk(chunk, sealer), len(chunk), keep, position.as_dict()
    )
    metrics.instruments().stream_read.inc(len(chunk))


@app.task(name=FETCH_STREAM, bind=True, acks_late=False, ignore_result=True)
def fetch_stream(self: Any) -> dict[str, Any]:
    """Beat's task for Kinesis: lease free shards, read them for a few seconds, fan out chunks."""
    rt = runtime.get()
    s = rt.settings
    report = runner.run(
        rt.stream(),
        rt,
        rt.coordinator,
        lambda position, chunk: send_stream_chunk(position, chunk, rt.sealer, rt.coordinator, chunks.keep_seconds(rt)),
        chunk_size=s.chunk_size,
        chunk_bytes=s.chunk_max_bytes,
        budget_seconds=s.fetch_seconds,
        shards_per_fetch=s.kinesis_shards_per_fetch,
        start=s.kinesis_start,
        reread_after=s.visibility_timeout,
        pause=lambda: chunks.pause(rt),
        room=lambda: chunks.room(rt),
        heartbeat=lambda: rt.coordinator.heartbeat("fetch", self.request.hostname or "?"),
        on_expired=lambda: metrics.instruments().stream_expired.inc(),
    )
    stopped = report.get("stopped")
    if stopped == "budget" or (stopped == "backpressure" and _one_successor(rt, s.kinesis_stream_name)):
        # Its shards are read on soon, not at beat's next tick (up to ETL_FETCH_INTERVAL away): at
        # once after its budget; after ROOM_WAIT on backpressure, having freed its worker process
        # for the chunks it waits for. A run that finds no shard free queues nothing, and of the
        # runs meeting backpressure only one per half ROOM_WAIT queues a successor (with many
        # shards and one per run, each would find a shard and chain: runs multiplied, on setup calls).
        wait = ROOM_WAIT if stopped == "backpressure" else 0.0
        self.apply_async(countdown=wait, expires=s.fetch_interval + wait)
    return report


def _one_successor(rt: runtime.Runtime, stream: str) -> bool:
    """True for the first run to ask within half a ROOM_WAIT (a Redis flag; shorter than the wait,
    so that the successor, meeting backpressure again, may queue its own); False if Redis is away."""
    try:
        return rt.coordinator.flag(stream_key(stream, "successor"), ROOM_WAIT / 2)
    except TransientError:
        return False


@app.task(name=MASK_AND_WRITE_STREAM, **CHUNK_TASK_OPTIONS)
def mask_and_write_stream(self: Any, ref: str, position: dict[str, str]) -> dict[str, int]:
    """Validate, mask and write one chunk of one shard; its checkpoint moves in the same commit.

    A chunk that never commits (out of retries, lost with the broker) holds its shard's
    checkpoint back; the next fetch reads on from the checkpoint after SQS_VISIBILITY_TIMEOUT.
    """
    rt = runtime.get()
    messages = chunks.open_chunk(self, rt, ref, "its records are read again from the checkpoint")
    if messages is None:
        return {"inserted": 0, "rejected": 0, "duplicates": 0}
    where = Position(**position)
    with chunks.chunk_attempt(
        self,
        rt,
        "its records stay in the stream",
        lambda: log.warning(
            "chunk %s: time limit hit; shard %s will be read again from its checkpoint", self.request.id, where.shard_id
        ),
    ) as conn:
        report = runner.process_chunk(
            messages,
            where,
            masker=rt.masker,
            sealer=rt.sealer,
            conn=conn,
            label=self.request.id or "",
            vault=rt.vault(),
        )
    chunks.committed(self, rt, report, messages, fetch_stream, deleted=False, ref=ref)
    return {"inserted": report.inserted, "rejected": report.rejected, "duplicates": report.duplicates}
