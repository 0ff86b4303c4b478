"""Thin Celery tasks for SQS: wiring only. The logic lives in etl.sources.sqs.fetch and etl.load,
what both sources' tasks share in etl.worker.chunks.

Task names are explicit and stable: queued work must survive a refactor.
"""

import logging
from contextlib import ExitStack
from typing import Any

from etl.crypto.sealing import Sealer
from etl.errors import TransientError
from etl.model import records
from etl.model.records import Message
from etl.sources.sqs import fetch as sqs_fetch
from etl.worker import chunks, metrics, runtime
from etl.worker.celery import app
from etl.worker.chunks import CHUNK_TASK_OPTIONS, MASK_AND_WRITE
from etl.worker.coordination import Coordinator

log = logging.getLogger("etl.tasks")


def send_chunk(chunk: list[Message], sealer: Sealer, coordinator: Coordinator, keep: int) -> str:
    """Queue one chunk for etl.mask_and_write: sealed, kept in Redis for ``keep`` seconds, the task
    carrying its key and a PII-free argsrepr for Flower (etl.worker.chunks.hand_on); the key."""
    key = chunks.hand_on(mask_and_write, coordinator, records.pack_chunk(chunk, sealer), len(chunk), keep)
    metrics.instruments().received.inc(len(chunk))  # counted as handed on, so a scrape mid-run is current
    return key


@app.task(name="etl.fetch", bind=True, acks_late=False, ignore_result=True)
def fetch(self: Any) -> dict[str, Any]:
    """Beat's task: pull SQS batches for a few seconds and fan them out as chunks."""
    rt = runtime.get()
    s = rt.settings
    # The lease outlives a normal run (budget + one last call) but not by much: a fetcher killed
    # mid-run blocks the next one for at most ~10 s.
    with ExitStack() as stack:
        try:
            held = stack.enter_context(rt.coordinator.lease("etl:fetch-lock", s.fetch_seconds + 10))
        except TransientError as exc:
            log.warning("fetch skipped: %s (the next beat tries again)", exc)
            return {"skipped": "redis unavailable"}
        if not held:
            return {"skipped": "another fetch is running"}
        rt.coordinator.heartbeat("fetch", self.request.hostname or "?")
        keep = chunks.keep_seconds(rt)

        def dispatch(chunk: list[Message]) -> None:
            send_chunk(chunk, rt.sealer, rt.coordinator, keep)

        report = sqs_fetch.fetch(
            rt.queue,
            dispatch,
            chunk_size=s.chunk_size,
            chunk_bytes=s.chunk_max_bytes,
            max_messages=s.fetch_max_messages,
            budget_seconds=s.fetch_seconds,
            visibility_timeout=s.visibility_timeout,
            receive_batch=10 * s.sqs_threads,
            linger=s.chunk_linger,
            pause=lambda: chunks.pause(rt),
        )
    rt.coordinator.heartbeat("fetch", self.request.hostname or "?")
    if report.stopped in ("budget", "max_messages"):
        # The next run starts now, not at beat's next tick (up to ETL_FETCH_INTERVAL away: arrivals
        # would wait that long). Beat's ticks stay the safety net; a second run finds the lease held.
        self.apply_async(expires=s.fetch_interval)
    if report.received or report.stopped == "backpressure":
        log.info(
            "fetched %d messages in %d chunks (%d receives, %.2fs, stopped: %s)",
            report.received,
            report.chunks,
            report.receive_calls,
            report.seconds,
            report.stopped,
            extra={
                "received": report.received,
                "chunks": report.chunks,
                "receive_calls": report.receive_calls,
                "seconds": round(report.seconds, 4),
                "stopped": report.stopped,
            },
        )
    return {"received": report.received, "chunks": report.chunks, "stopped": report.stopped}


@app.task(name=MASK_AND_WRITE, **CHUNK_TASK_OPTIONS)
def mask_and_write(self: Any, ref: str) -> dict[str, int]:
    """Validate, mask and write one chunk in one transaction, then delete it from SQS.

    Transient failures retry with backoff; after the last retry the messages simply return to
    SQS when their visibility timeout runs out (and to the dead-letter queue after 5 receives).
    """
    rt = runtime.get()
    messages = chunks.open_chunk(self, rt, ref, "its messages come back from SQS")
    if messages is None:
        return {"inserted": 0, "rejected": 0, "duplicates": 0}

    def release() -> None:
        log.warning("chunk %s: time limit hit; releasing its %d messages back to SQS", self.request.id, len(messages))
        sqs_fetch.release(rt.queue, messages)

    with chunks.chunk_attempt(self, rt, "its messages stay in SQS", release) as conn:
        report = sqs_fetch.process_chunk(
            messages,
            masker=rt.masker,
            sealer=rt.sealer,
            conn=conn,
            source=rt.queue,
            visibility_timeout=rt.settings.visibility_timeout,
            label=self.request.id or "",
            vault=rt.vault(),
        )
    chunks.committed(self, rt, report, messages, fetch, deleted=True, ref=ref)
    return {"inserted": report.inserted, "rejected": report.rejected, "duplicates": report.duplicates}
