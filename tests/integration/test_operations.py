"""Failure isolation, replay of rejections, and the health check, end to end."""

import itertools
import json
import subprocess
import sys
import time

import pytest

from etl import store
from etl.sources.sqs import queue as sqs
from tests.support import ProcessGroup, TaskRun, drained, fetched_messages, task_runs, wait_until

pytestmark = pytest.mark.integration


def event(user: str, version: str = "1.0") -> str:
    return json.dumps(
        {"user_id": user, "device_type": "ios", "ip": "10.9.8.7", "device_id": "d", "app_version": version}
    )


def etl(pipeline: ProcessGroup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etl.ops.cli", *args], env=pipeline.env, capture_output=True, text=True, timeout=60
    )


def test_a_row_postgres_refuses_is_isolated_from_its_chunk(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection
) -> None:
    with conn, conn.cursor() as cur:  # a rule the validator does not know about
        cur.execute("ALTER TABLE user_logins ADD CONSTRAINT no_evil CHECK (user_id <> 'evil')")
    queue.send([event(f"good-{i}") for i in range(9)] + [event("evil")])
    pipeline.start("worker", "beat")
    wait_until(drained(queue, conn, 10), 60, "the queue to drain")
    assert store.stats(conn)["rows"] == 9
    assert store.query(conn, "SELECT reason, detail FROM rejected_messages") == [
        ("db_refused", "Postgres write chunk refused: 23514 integrity constraint violation (CheckViolation)")
    ]


def test_rejected_messages_can_be_listed_and_replayed(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection
) -> None:
    queue.send([event(f"u{i}", version="1.2.3.4") for i in range(3)] + ["not json"])
    pipeline.start("worker", "beat")
    wait_until(drained(queue, conn, 4), 60, "the queue to drain")

    listed = etl(pipeline, "rejected", "list")
    assert listed.returncode == 0, listed.stderr
    assert "bad_app_version" in listed.stdout and "invalid_json" in listed.stdout
    assert "10.9.8.7" not in listed.stdout

    dry = etl(pipeline, "rejected", "replay", "--reason", "bad_app_version", "--dry-run")
    assert "would replay 3" in dry.stdout
    replay = etl(pipeline, "rejected", "replay", "--reason", "bad_app_version")
    assert replay.returncode == 0, replay.stderr
    assert "replayed 3" in replay.stdout
    # the replayed bodies are still bad: they come back as 3 new rejections
    wait_until(drained(queue, conn, 7), 60, "the replayed messages")
    assert store.query(conn, "SELECT count(*) FROM rejected_replays") == [(3,)]
    again = etl(pipeline, "rejected", "replay", "--reason", "bad_app_version", "--dry-run")
    assert "would replay 3" in again.stdout  # only the new rejections, never the replayed ones twice


@pytest.mark.long(13)
def test_health_reports_progress_and_a_stall(pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection) -> None:
    queue.send([event(f"h{i}") for i in range(5)])
    pipeline.start("worker", "beat")
    wait_until(drained(queue, conn, 5), 60, "the queue to drain")
    ok = etl(pipeline, "health", "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["healthy"] is True

    pipeline.stop()
    queue.send([event("late")])
    time.sleep(1.5)
    stalled = etl(pipeline, "health", "--max-idle", "1")
    assert stalled.returncode == 1 and "messages wait but nothing was committed" in stalled.stdout


def test_two_beats_do_not_double_fetch(pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection) -> None:
    """Two beats (one started by mistake) never make two fetch runs overlap: the lease skips one."""
    queue.send([event(f"b{i}") for i in range(40)])
    pipeline.start("worker", "beat", "beat2")  # a second beat, started by mistake
    wait_until(drained(queue, conn, 40), 90, "the queue to drain")
    assert store.query(conn, "SELECT count(*), count(DISTINCT message_id) FROM user_logins") == [(40, 40)]
    assert "Scheduler: Sending due task" in pipeline.log("beat2")  # both beats really were scheduling

    def fetch_runs() -> list[TaskRun]:  # re-read each time: the log grows while we wait
        return task_runs(pipeline.log("worker"), "etl.fetch")

    # Two beats every second and runs of ETL_FETCH_SECONDS=2. The runs that fetched (held the
    # lease) never overlapped; a run's start includes what it does before asking for the lease, at
    # most a fraction of a second in a fresh process. (Overlap needs two: wait for two.)
    wait_until(lambda: sum("skipped" not in r.result for r in fetch_runs()) >= 2, 30, "two fetch runs")
    fetched = sorted((r for r in fetch_runs() if "skipped" not in r.result), key=lambda r: r.started)
    for before, after in itertools.pairwise(fetched):
        assert after.started >= before.ended - 0.5, f"fetch runs overlapped: {before} and {after}"
    # ...because the runs that came while one was running were skipped
    wait_until(lambda: any("skipped" in r.result for r in fetch_runs()), 30, "a skipped fetch run")
    skipped = [r for r in fetch_runs() if "skipped" in r.result]
    assert all(r.result == "{'skipped': 'another fetch is running'}" for r in skipped), skipped
    # and the fetch runs together took the 40 messages once each, but for SQS's own at-least-once
    # delivery (moto redelivers one now and then, with or without a lease): at most one extra
    assert wait_until(lambda: fetched_messages(pipeline.log("worker")) >= 40, 10, "the fetch lines")
    assert fetched_messages(pipeline.log("worker")) <= 41
