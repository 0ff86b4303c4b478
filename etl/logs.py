"""Log hygiene (stdlib only): quiet drivers, and structured JSON logs.

``quiet_drivers`` keeps the AWS and HTTP drivers at WARNING or above whatever a process's log
level: at DEBUG botocore logs whole SQS requests and responses, and a ReceiveMessage response
holds the raw bodies (plaintext ip and device_id). Workers and beat call it from their logging
signals, the ``etl`` command at start.

JSON logs are enabled with ETL_LOG_FORMAT=json: one object per line, with the chunk's counts as
fields; Celery's own lines are converted too. Log calls in etl pass counts, ids and timings as
``extra``; message bodies and raw values are never logged at all.
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


# Loggers that print request/response bodies at DEBUG (or, for urllib3, URLs and headers).
# Celery's and kombu's own DEBUG lines carry only sealed chunks and PII-free argsrepr.
DRIVERS = ("botocore", "boto3", "urllib3", "s3transfer")


def quiet_drivers() -> None:
    """Pin the DRIVERS loggers to WARNING, or to the root logger's level when that is higher.

    Their children (``botocore.parsers``, ``botocore.endpoint``, ...) inherit it. Call it after
    the process's logging is configured (a later ``logging.basicConfig`` does not undo it).
    """
    level = max(logging.WARNING, logging.getLogger().getEffectiveLevel())
    for name in DRIVERS:
        logging.getLogger(name).setLevel(level)


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
