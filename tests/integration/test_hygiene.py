"""Log and broker hygiene: no raw PII in DEBUG logs, no ciphertext as a chunk's argsrepr.

A worker at --loglevel=DEBUG must not let botocore print SQS responses (raw bodies), and every
publish of etl.mask_and_write - send_chunk's own, a retry, anyone's apply_async or send_task -
must carry a PII-free argsrepr, since Flower and task events show it as the task's arguments.
"""

import json
from typing import Any

import pytest
import redis

from tests.support import PAYLOAD_KEY, ProcessGroup, drained, processes, send_chunk, stash, wait_until

from etl.model import records  # isort: skip  (after tests.support, which points Celery at the test broker)
from etl import store
from etl.sources.sqs import queue as sqs

from etl.crypto.sealing import Sealer  # isort: skip

pytestmark = pytest.mark.integration

IPS = ["198.51.100.17", "198.51.100.29", "203.0.113.41", "2001:db8::4:53"]
DEVICES = ["hyg-dev-7f3a-0001", "hyg-dev-7f3a-0002", "hyg-dev-7f3a-0003", "hyg-dev-7f3a-0004"]


def event(user: str, ip: str, device_id: str) -> str:
    return json.dumps({"user_id": user, "device_type": "ios", "ip": ip, "device_id": device_id, "app_version": "1.2.3"})


def bodies() -> list[str]:
    good = [event(f"hyg-user-{i}", ip, dev) for i, (ip, dev) in enumerate(zip(IPS, DEVICES, strict=True))]
    rejected = json.dumps({"ip": "198.51.100.250", "device_id": "hyg-dev-7f3a-0099"})  # missing fields
    return [*good, rejected]


SECRETS = [*IPS, *DEVICES, "198.51.100.250", "hyg-dev-7f3a-0099"]
FERNET = "gAAAAA"  # how every Fernet token (a sealed chunk) starts: version byte and timestamp


def start_at_debug(group: ProcessGroup, *names: str) -> None:
    """Like ProcessGroup.start, with COMMANDS' --loglevel replaced by DEBUG (and metrics off)."""
    for name in names:
        cmd = ["--loglevel=DEBUG" if a.startswith("--loglevel") else a for a in processes.celery_command(name)]
        assert "--loglevel=DEBUG" in cmd, cmd
        env = {**group.env, "ETL_BEAT_SCHEDULE_FILE": str(group.workdir / f"{name}-schedule"), "ETL_METRICS_PORT": "0"}
        group.procs[name] = processes.spawn(cmd, env, group.log_path(name))


def test_worker_and_beat_at_debug_log_no_raw_pii(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection
) -> None:
    sent = bodies()
    queue.send(sent)
    start_at_debug(pipeline, "worker", "beat")
    wait_until(drained(queue, conn, len(sent)), 90, "the queue to drain")
    assert store.stats(conn)["rows"] == len(IPS)
    pipeline.stop()  # every line written

    worker, beat = pipeline.log("worker"), pipeline.log("beat")
    assert "DEBUG/MainProcess" in worker and "DEBUG/MainProcess" in beat  # really at DEBUG
    assert "Task etl.fetch" in worker and "Task etl.mask_and_write" in worker  # SQS was really read here
    for name, text in (("worker", worker), ("beat", beat)):
        found = [s for s in SECRETS if s in text]
        assert not found, f"{len(found)} raw PII values in the {name} log at DEBUG"


def queued_chunks(client: redis.Redis) -> list[dict[str, Any]]:
    """Headers of every etl.mask_and_write message kombu holds, oldest first: waiting in "etl", then
    delivered but unacked."""
    raw = [json.loads(m) for m in reversed(client.lrange("etl", 0, -1))]  # kombu pushes on the left
    raw += [json.loads(m)[0] for m in client.hvals("unacked")]
    return [m["headers"] for m in raw if m["headers"].get("task") == "etl.mask_and_write"]


def chunk_messages(count: int) -> list[records.Message]:
    return [
        records.Message(f"hyg-{i}", f"receipt-{i}", body, 1_700_000_000_000) for i, body in enumerate(bodies()[:count])
    ]


def test_a_chunk_published_without_our_argsrepr_gets_a_pii_free_one(broker: redis.Redis) -> None:
    from etl.worker import tasks
    from etl.worker.celery import app

    sealed = records.pack_chunk(chunk_messages(3), Sealer([PAYLOAD_KEY]))
    old = Sealer([PAYLOAD_KEY]).seal(b"[]")  # a chunk as publishers before the stash sent it: in the task
    tasks.mask_and_write.apply_async(args=[old])  # as Celery itself re-publishes: no argsrepr
    app.send_task("etl.mask_and_write", args=[stash(sealed)], argsrepr=repr([old]), kwargsrepr="{'x': 1}")
    send_chunk(chunk_messages(3))

    headers = queued_chunks(broker)
    assert [h["argsrepr"] for h in headers] == ["<sealed chunk>", "<sealed chunk>", "<sealed chunk of 3 messages>"]
    assert all(h["kwargsrepr"] == "{}" for h in headers)
    dump = json.dumps(headers)
    assert FERNET not in dump and not [s for s in SECRETS if s in dump]


def test_a_retried_chunk_keeps_its_argsrepr(pipeline: ProcessGroup, queue: sqs.Queue, broker: redis.Redis) -> None:
    """Postgres down: the chunk is retried (autoretry on TransientError), re-published by Celery."""

    queue.send([event(f"hyg-retry-{i}", ip, dev) for i, (ip, dev) in enumerate(zip(IPS, DEVICES, strict=True))])
    received: list[records.Message] = []
    while len(received) < len(IPS):
        received += queue.receive(10, wait_seconds=1, visibility_timeout=120)
    send_chunk(received)
    pipeline.start("worker", DATABASE_URL="postgresql://postgres@127.0.0.1:1/test")

    def retried() -> list[dict[str, Any]]:
        return [h for h in queued_chunks(broker) if int(h.get("retries") or 0) >= 1]

    headers = wait_until(retried, 60, "a retry of the chunk on the broker", interval=0.05)
    assert "its messages stay in SQS" in pipeline.log("worker")
    assert all(h["argsrepr"] == f"<sealed chunk of {len(IPS)} messages>" for h in headers), headers
    assert all(h["kwargsrepr"] == "{}" for h in headers)
    assert FERNET not in json.dumps(headers)
