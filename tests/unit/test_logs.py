import json
import logging

from etl.logs import JsonFormatter


def test_json_line_carries_the_chunk_fields_and_nothing_else() -> None:
    record = logging.LogRecord("etl.pipeline", logging.INFO, __file__, 1, "chunk %s: %d rows", ("c1", 5), None)
    record.chunk = "c1"
    record.inserted = 5
    record.body = "raw body with 10.0.0.1"  # not an allowed field: must not be emitted
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "chunk c1: 5 rows" and line["chunk"] == "c1" and line["inserted"] == 5
    assert line["level"] == "INFO" and "ts" in line and "body" not in line
