"""Thin Celery tasks: wiring only. The logic lives in etl.pipeline.

Task names are explicit and stable: queued work must survive a refactor.
"""

import logging
import sys
from typing import Any

from celery.signals import worker_init

from etl import locks, pipeline, records, runtime
from etl.celery_app import app
from etl.errors import ConfigError, TransientError
from etl.records import Message
from etl.sealing import Sealer

log = logging.getLogger("etl.tasks")


@worker_init.connect
def _refuse_to_start_without_keys(**_: Any) -> None:
    """A worker without its secrets would fail every chunk: refuse to start, and say why."""
    try:
        runtime.get()
    except ConfigError as exc:
        print(f"etl worker: {exc}", file=sys.stderr)
        sys.exit(2)


def send_chunk(chunk: list[Message], sealer: Sealer) -> None:
    """Queue one chunk for etl.mask_and_write: sealed, with a PII-free argsrepr for Flower."""
    mask_and_write.apply_async(
        args=[records.pack_chunk(chunk, sealer)],
        argsrepr=f"<sealed chunk of {len(chunk)} messages>",
        kwargsrepr="{}",
    )


@app.task(name="etl.fetch", acks_late=False, ignore_result=True)
def fetch() -> dict[str, Any]:
    """Beat's task: pull SQS batches for a few seconds and fan them out as chunks."""
    rt = runtime.get()
    s = rt.settings
    with locks.lease(s.broker_url, "etl:fetch-lock", s.fetch_seconds + 30) as held:
        if not held:
            return {"skipped": "another fetch is running"}

        report = pipeline.fetch(
            rt.queue,
            lambda chunk: send_chunk(chunk, rt.sealer),
            chunk_size=s.chunk_size,
            max_messages=s.fetch_max_messages,
            budget_seconds=s.fetch_seconds,
            visibility_timeout=s.visibility_timeout,
        )
    if report.received:
        log.info(
            "fetched %d messages in %d chunks (%d receives, %.2fs)",
            report.received,
            report.chunks,
            report.receive_calls,
            report.seconds,
        )
    return {"received": report.received, "chunks": report.chunks}


@app.task(
    name="etl.mask_and_write",
    bind=True,
    acks_late=True,
    autoretry_for=(TransientError,),
    retry_backoff=2,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=5,
    ignore_result=True,
)
def mask_and_write(self: Any, sealed: str) -> dict[str, int]:
    """Validate, mask and write one chunk in one transaction, then delete it from SQS.

    Transient failures retry with backoff; after the last retry the messages simply return to
    SQS when their visibility timeout runs out (and to the dead-letter queue after 5 receives).
    """
    rt = runtime.get()
    messages = records.unpack_chunk(sealed, rt.sealer)
    try:
        report = pipeline.process_chunk(
            messages, masker=rt.masker, sealer=rt.sealer, conn=rt.conn(), source=rt.queue, label=self.request.id or ""
        )
    except TransientError as exc:
        rt.drop_conn()
        log.warning(
            "chunk %s: %s (attempt %d); its messages stay in SQS", self.request.id, exc, self.request.retries + 1
        )
        raise
    return {"inserted": report.inserted, "rejected": report.rejected, "duplicates": report.duplicates}
