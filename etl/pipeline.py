"""The two steps of the pipeline, written against narrow interfaces (no Celery here).

* ``fetch``: pull SQS batches for a bounded time and hand them on in chunks.
* ``process_chunk``: transform a chunk, write it in one transaction, and only after the commit
  delete its messages from SQS.

Both take their I/O objects as arguments, so tests hand in real ones and the Celery tasks stay
thin wrappers that only wire settings to these functions.
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from etl import db, records
from etl.masking import Masker
from etl.records import Message
from etl.sealing import Sealer

log = logging.getLogger("etl.pipeline")


class MessageSource(Protocol):
    def receive(
        self, max_messages: int = 10, wait_seconds: int = 0, visibility_timeout: int = 120
    ) -> list[Message]: ...
    def delete(self, messages: list[Message]) -> list[str]: ...
    def change_visibility(self, messages: list[Message], seconds: int) -> list[str]: ...


@dataclass(frozen=True)
class FetchReport:
    received: int
    chunks: int
    receive_calls: int
    seconds: float


@dataclass(frozen=True)
class ChunkReport:
    messages: int
    inserted: int
    duplicates: int
    rejected: int
    not_deleted: int
    seconds: float


def fetch(
    source: MessageSource,
    dispatch: Callable[[list[Message]], None],
    *,
    chunk_size: int,
    max_messages: int,
    budget_seconds: float,
    visibility_timeout: int,
    clock: Callable[[], float] = time.monotonic,
) -> FetchReport:
    """Receive for up to ``budget_seconds`` (or ``max_messages``), dispatching full chunks.

    Long-polls only while holding nothing, so a partial chunk is never kept waiting: it is sent
    as soon as the queue runs dry. If a chunk cannot be dispatched (broker down), its messages
    are made visible again at once instead of waiting out their visibility timeout.
    """
    started = clock()
    deadline = started + budget_seconds
    pending: list[Message] = []
    received = chunks = calls = 0

    def send(chunk: list[Message]) -> None:
        nonlocal chunks
        try:
            dispatch(chunk)
        except Exception:
            log.warning("dispatch of %d messages failed; releasing them back to SQS", len(chunk))
            try:
                source.change_visibility(chunk, 0)
            except Exception:
                log.warning("release failed too; the messages return after their visibility timeout")
            raise
        chunks += 1

    try:
        while received < max_messages:
            remaining = deadline - clock()
            if remaining <= 0:
                break
            wait = 0 if pending else math.floor(remaining)
            batch = source.receive(
                max_messages=min(10, max_messages - received),
                wait_seconds=wait,
                visibility_timeout=visibility_timeout,
            )
            calls += 1
            received += len(batch)
            pending.extend(batch)
            while len(pending) >= chunk_size:
                chunk, pending = pending[:chunk_size], pending[chunk_size:]
                send(chunk)
            if not batch and pending:
                chunk, pending = pending, []
                send(chunk)  # the queue ran dry: do not keep a partial chunk waiting
            elif not batch and wait == 0:
                break  # less than a second left and nothing came
    finally:
        if pending:
            send(pending)
    return FetchReport(received=received, chunks=chunks, receive_calls=calls, seconds=clock() - started)


def process_chunk(
    messages: list[Message],
    *,
    masker: Masker,
    sealer: Sealer,
    conn: db.Connection,
    source: MessageSource,
    label: str = "",
) -> ChunkReport:
    """Transform, write in one transaction, commit, then delete from SQS.

    A crash anywhere before the delete leaves the messages in SQS; their redelivery finds the
    rows already written (ON CONFLICT on message_id) and only deletes them.
    """
    started = time.monotonic()
    result = records.transform(messages, masker, sealer)
    written = db.write_chunk(conn, result)
    not_deleted = source.delete(messages)
    report = ChunkReport(
        messages=len(messages),
        inserted=written.inserted,
        duplicates=written.duplicates,
        rejected=len(result.rejected),
        not_deleted=len(not_deleted),
        seconds=time.monotonic() - started,
    )
    log.info(
        "chunk %s: %d messages -> %d rows, %d already written, %d rejected, %d not deleted, %.3fs",
        label,
        report.messages,
        report.inserted,
        report.duplicates,
        report.rejected,
        report.not_deleted,
        report.seconds,
    )
    if not_deleted:
        log.warning(
            "chunk %s: SQS did not delete %d messages; they will be redelivered and skipped as already written",
            label,
            len(not_deleted),
        )
    return report
