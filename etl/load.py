"""The chunk write both sources share: transform a chunk and write it in one transaction.

If Postgres refuses a chunk, its messages are written one by one so one bad row never holds the
others back. Used by the SQS (etl.sources.sqs.fetch) and Kinesis (etl.sources.kinesis.fetch) paths.
"""

import logging
import time
from dataclasses import dataclass

from etl import store
from etl.crypto.masking import Masker
from etl.crypto.sealing import Sealer
from etl.crypto.vault import Vault
from etl.errors import TerminalError
from etl.model import records
from etl.model.records import ChunkResult, Message
from etl.model.shards import Position

log = logging.getLogger("etl.pipeline")


@dataclass(frozen=True)
class ChunkReport:
    messages: int
    inserted: int
    duplicates: int
    rejected: int
    not_deleted: int
    seconds: float
    write_seconds: float  # transform + write + commit, without the SQS delete
    rejected_by_reason: dict[str, int]


def write(
    messages: list[Message],
    *,
    masker: Masker,
    sealer: Sealer,
    conn: store.Connection,
    label: str = "",
    vault: Vault | None = None,
    position: Position | None = None,
) -> store.WriteResult:
    """Transform a chunk and write it in one transaction (with a stream chunk's ``position``);
    if Postgres refuses the chunk, write its messages one by one."""
    result = records.transform(messages, masker, sealer, vault)
    try:
        return store.write_chunk(conn, result, position)
    except TerminalError as exc:
        log.warning("chunk %s: Postgres refused the chunk (%s); writing its messages one by one", label, exc)
        written = write_one_by_one(conn, messages, result, sealer)
        if position is not None:  # every message is now a row or a rejection: the range is done
            store.write_chunk(conn, ChunkResult([], []), position)
        return written


def chunk_report(
    messages: list[Message],
    written: store.WriteResult,
    not_deleted: list[str],
    started: float,
    write_seconds: float,
    label: str,
) -> ChunkReport:
    """The report of one committed chunk, logged with its counts as fields."""
    report = ChunkReport(
        messages=len(messages),
        inserted=written.inserted,
        duplicates=written.duplicates,
        rejected=written.rejected,
        not_deleted=len(not_deleted),
        seconds=time.monotonic() - started,
        write_seconds=write_seconds,
        rejected_by_reason=written.rejected_by_reason,
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
        extra={
            "chunk": label,
            "messages": report.messages,
            "inserted": report.inserted,
            "duplicates": report.duplicates,
            "rejected": report.rejected,
            "not_deleted": report.not_deleted,
            "seconds": round(report.seconds, 4),
        },
    )
    return report


def write_one_by_one(
    conn: store.Connection, messages: list[Message], result: ChunkResult, sealer: Sealer
) -> store.WriteResult:
    """The safety net for a chunk Postgres refused: isolate the row(s) it will not take.

    Each message is written in its own transaction; one that Postgres still refuses becomes a
    ``db_refused`` rejection, so the good messages beside it are never held back.
    """
    by_id = {m.message_id: m for m in messages}
    results = []
    for message_id, single in result.singles():
        try:
            results.append(store.write_chunk(conn, single))
        except TerminalError as exc:
            refused = records.refused(by_id[message_id], str(exc), sealer)
            results.append(store.write_chunk(conn, ChunkResult([], [refused])))
    return store.WriteResult.total(results)
