"""Metrics move by the right amounts; Flower refuses strangers."""

import base64
import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from etl import store
from etl.sources.sqs import queue as sqs
from tests.support import ProcessGroup, drained, wait_until

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_run_moves_the_counters_by_the_right_amounts(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection
) -> None:
    good = [
        json.dumps({"user_id": f"u{i}", "device_type": "ios", "ip": "10.0.0.1", "device_id": "d", "app_version": "1.0"})
        for i in range(25)
    ]
    queue.send([*good, "not json", "[]", '{"user_id": "x"}'])
    # a port the worker itself listens on (another run may take a free port first: then another)
    port = pipeline.start_listening("worker", "ETL_METRICS_PORT", unavailable="metrics port", timeout=90)
    pipeline.start("beat")
    wait_until(drained(queue, conn, 28), 60, "the queue to drain")
    m = wait_until(lambda: scrape(port), 10, "the metrics endpoint")

    assert m[("etl_rows_written_total", ())] == 25
    assert m[("etl_rejected_total", (("reason", "invalid_json"),))] == 1
    assert m[("etl_rejected_total", (("reason", "not_an_object"),))] == 1
    assert m[("etl_rejected_total", (("reason", "missing_field"),))] == 1
    # moto, like SQS, may deliver a message twice: counts of work done are at least the messages,
    # and every extra delivery of a valid message shows up as a skipped duplicate
    received = m[("etl_messages_received_total", ())]
    assert received >= 28 and m[("etl_messages_deleted_total", ())] >= 28
    assert m[("etl_duplicates_skipped_total", ())] <= received - 28
    assert m[("etl_end_to_end_lag_seconds_count", ())] == m[("etl_messages_deleted_total", ())]
    assert m[("etl_chunk_write_seconds_count", ())] >= 1
    assert m[("etl_sqs_messages", (("state", "visible"),))] == 0
    assert ("etl_broker_queued_chunks", ()) in m


def test_flower_refuses_an_unauthenticated_request(pipeline: ProcessGroup) -> None:
    pipeline.start("flower", FLOWER_BASIC_AUTH="ops:s3cret")
    url = f"http://127.0.0.1:{pipeline.flower_port}/"

    def status(headers: dict[str, str]) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            return 0

    wait_until(lambda: status({}) != 0, 30, "flower to listen")
    assert status({}) == 401
    assert status({"Authorization": "Basic " + base64.b64encode(b"ops:wrong").decode()}) == 401
    assert status({"Authorization": "Basic " + base64.b64encode(b"ops:s3cret").decode()}) == 200


def test_json_logs_carry_chunk_counts(pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection) -> None:
    body = json.dumps({"user_id": "j", "device_type": "ios", "ip": "10.7.7.7", "device_id": "d7", "app_version": "1"})
    queue.send([body] * 3)
    pipeline.start("worker", "beat", ETL_LOG_FORMAT="json")
    wait_until(drained(queue, conn, 3), 60, "the queue to drain")

    def chunk_lines() -> list[dict[str, object]]:  # read afresh each time: the line follows the delete
        lines = [json.loads(x) for x in pipeline.log("worker").splitlines() if x.startswith("{")]
        return [x for x in lines if x.get("inserted") is not None]

    chunks = wait_until(chunk_lines, 5, "a chunk line")
    assert chunks[0]["inserted"] == 3 and chunks[0]["logger"] == "etl.pipeline"
    assert "10.7.7.7" not in pipeline.log("worker")
