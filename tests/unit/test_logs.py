import json
import logging
from collections.abc import Iterator

import pytest

from etl.logs import DRIVERS, JsonFormatter, quiet_drivers


def test_json_line_carries_the_chunk_fields_and_nothing_else() -> None:
    record = logging.LogRecord("etl.pipeline", logging.INFO, __file__, 1, "chunk %s: %d rows", ("c1", 5), None)
    record.chunk = "c1"
    record.inserted = 5
    record.body = "raw body with 10.0.0.1"  # not an allowed field: must not be emitted
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "chunk c1: 5 rows" and line["chunk"] == "c1" and line["inserted"] == 5
    assert line["level"] == "INFO" and "ts" in line and "body" not in line


@pytest.fixture
def levels() -> Iterator[None]:
    """Restore the levels the test changes."""
    names = ["", *DRIVERS, "botocore.parsers"]
    saved = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in saved.items():
        logging.getLogger(n).setLevel(level)


def test_drivers_stay_quiet_at_debug(levels: None) -> None:
    """At DEBUG, botocore.parsers would log whole SQS responses: raw bodies with ip and device_id."""
    logging.getLogger().setLevel(logging.DEBUG)
    quiet_drivers()
    for name in (*DRIVERS, "botocore.parsers", "botocore.endpoint", "urllib3.connectionpool"):
        logger = logging.getLogger(name)
        assert not logger.isEnabledFor(logging.DEBUG) and not logger.isEnabledFor(logging.INFO), name
        assert logger.isEnabledFor(logging.WARNING), name
    assert logging.getLogger("etl.pipeline").isEnabledFor(logging.DEBUG)  # etl's own lines are not muted


def test_drivers_never_get_louder_than_the_root(levels: None) -> None:
    logging.getLogger().setLevel(logging.ERROR)
    quiet_drivers()
    assert not logging.getLogger("botocore.parsers").isEnabledFor(logging.WARNING)


def test_the_worker_logging_signal_quiets_the_drivers(levels: None) -> None:
    from etl.worker import chunks

    logging.getLogger().setLevel(logging.DEBUG)
    logging.getLogger("botocore").setLevel(logging.NOTSET)
    chunks.setup_logs(logging.getLogger("celery.task"))
    assert not logging.getLogger("botocore.parsers").isEnabledFor(logging.DEBUG)
