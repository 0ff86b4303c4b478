"""Structured JSON logs (stdlib only): one object per line, with the chunk's counts as fields.

Enabled with ETL_LOG_FORMAT=json; Celery's own lines are converted too. Log calls in etl pass
counts, ids and timings as ``extra``; message bodies and raw values are never logged at all.
"""

import json
import logging
from datetime import UTC, datetime

# The ``extra`` fields etl's log calls may carry; anything else on a record is not emitted.
FIELDS = (
    "chunk",
    "messages",
    "inserted",
    "duplicates",
    "rejected",
    "not_deleted",
    "seconds",
    "received",
    "chunks",
    "receive_calls",
    "stopped",
    "attempt",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "msg": record.getMessage(),
        }
        entry.update({k: getattr(record, k) for k in FIELDS if hasattr(record, k)})
        if record.exc_info:
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return json.dumps(entry, default=str)


def use_json(logger: logging.Logger) -> None:
    """Give every handler of ``logger`` the JSON formatter."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())
