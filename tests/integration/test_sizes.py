"""Bytes, not counts (issue 20): real worker and beat, moto SQS, a Redis of the test's own."""

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support import ProcessGroup, drained, pipeline_env, wait_until

from etl import store  # isort: skip  (after tests.support, which points Celery at the test broker)
from etl.demo import embedded
from etl.sources.sqs import queue as sqs

pytestmark = pytest.mark.integration
EMOJI = "\U0001f600"  # 4 UTF-8 bytes; 12 as a JSON \\ud83d\\ude00 escape


def event(i: int) -> str:
    return json.dumps(
        {"user_id": f"u{i}", "device_type": "ios", "ip": f"10.0.0.{i}", "device_id": f"d{i}", "app_version": "1.0"}
    )


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server whose largest value is 1 MiB (``proto-max-bulk-len``'s lowest setting, as
    some managed services cap it)."""
    server = embedded.Redis(tmp_path / "redis")
    server.start()
    client = redis.Redis(port=server.port)
    client.config_set("proto-max-bulk-len", "1mb")
    client.close()
    yield f"redis://127.0.0.1:{server.port}/15"
    server.stop()


def test_a_body_the_broker_refuses_costs_no_neighbour(
    queue: sqs.Queue, conn: store.Connection, small_redis: str, sqs_endpoint: str, tmp_path: Path
) -> None:
    """15 valid events and one body of emoji too big for the broker, all in one chunk (the byte
    bound lifted): the chunk is split, the 15 land, the big one alone is rejected, nothing valid
    reaches the dead-letter queue."""
    big = EMOJI * 230_000  # 920,000 bytes: within SQS's 1 MiB, over 1 MiB on the broker however encoded
    bodies = [event(i) for i in range(8)] + [big] + [event(i) for i in range(8, 15)]
    ids = queue.send(bodies)
    env = pipeline_env(
        queue.url,
        sqs_endpoint,
        CELERY_BROKER_URL=small_redis,
        ETL_CHUNK_MAX_BYTES=str(64 * 1024 * 1024),  # one chunk of 16: the split is what is tested
    )
    group = ProcessGroup(env=env, workdir=tmp_path)
    try:
        group.start("worker", "beat")
        wait_until(drained(queue, conn, 16), 120, "the 15 events as rows and the big body as a rejection")
    finally:
        group.stop()
    landed = {r[0] for r in store.query(conn, "SELECT message_id FROM user_logins")}
    assert landed == set(ids) - {ids[8]}
    rejected = store.query(conn, "SELECT message_id, reason, detail, sealed_body, body_chars FROM rejected_messages")
    assert len(rejected) == 1
    message_id, reason, detail, sealed_body, chars = rejected[0]
    assert (message_id, reason, sealed_body, chars) == (ids[8], "broker_refused", "", len(big))
    assert hashlib.sha256(big.encode()).hexdigest() in detail and "920000 bytes" in detail
    dlq = sqs.Queue(queue.url + "-dlq")
    assert dlq.depth()["visible"] == 0


def test_the_issues_body_fits_a_small_broker_and_a_body_over_the_source_limit_is_too_large(
    queue: sqs.Queue, conn: store.Connection, small_redis: str, sqs_endpoint: str, tmp_path: Path
) -> None:
    """At the default ETL_CHUNK_MAX_BYTES, on the 1 MiB Redis: the issue's 256 KiB emoji body
    (1.4 MB on the broker before) travels and is rejected as invalid_json with its sealed body; a
    body over SQS's 1 MiB (moto lets one in) is ``too_large`` with its digest, its body not kept."""
    issue_body = EMOJI * (256 * 1024 // 4)
    over = EMOJI * 300_000  # 1,200,000 bytes
    bodies = [event(i) for i in range(5)] + [issue_body] + [event(i) for i in range(5, 10)] + [over]
    ids = queue.send(bodies)
    group = ProcessGroup(env=pipeline_env(queue.url, sqs_endpoint, CELERY_BROKER_URL=small_redis), workdir=tmp_path)
    try:
        group.start("worker", "beat")
        wait_until(drained(queue, conn, 12), 120, "10 rows and 2 rejections")
    finally:
        group.stop()
    assert store.stats(conn)["rows"] == 10
    rejected = {
        r[0]: r[1:]
        for r in store.query(
            conn, "SELECT message_id, reason, sealed_body <> '', body_chars, detail FROM rejected_messages"
        )
    }
    assert rejected[ids[5]][:3] == ("invalid_json", True, len(issue_body))
    assert rejected[ids[11]][:3] == ("too_large", False, len(over))
    assert "1200000 bytes" in rejected[ids[11]][3] and hashlib.sha256(over.encode()).hexdigest() in rejected[ids[11]][3]
    assert sqs.Queue(queue.url + "-dlq").depth()["visible"] == 0


def test_broker_bytes_per_body_byte_stay_under_one_and_a_half(broker: redis.Redis) -> None:
    """What a chunk weighs in Redis, measured there (no worker takes it): about 4/3 of its bodies
    whatever their characters, plus an envelope that does not grow with them (one base64 layer)."""
    from etl.crypto.sealing import Sealer
    from etl.model import records
    from etl.model.records import Message
    from etl.worker import tasks
    from tests.support import PAYLOAD_KEY

    sealer = Sealer([PAYLOAD_KEY])
    kinds = {"ascii": 'a"\\', "latin": "é", "cjk": "語", "emoji": EMOJI, "control": "\x01\n", "surrogate": "\ud800"}
    for name, unit in kinds.items():
        sizes = []
        for repeat in (0, 65_536 // len(unit.encode("utf-8", "surrogatepass"))):
            body = unit * repeat
            chunk = [Message(f"m-{i}", f"rh-{i}", body, 1_700_000_000_000) for i in range(4)]
            sealed_length = len(records.pack_chunk(chunk, sealer))
            tasks.send_chunk(chunk, sealer)
            stored = broker.lindex("etl", 0)
            assert stored is not None
            broker.delete("etl")
            sizes.append((len(stored), sealed_length, 4 * len(body.encode("utf-8", "surrogatepass"))))
        (empty, empty_sealed, _), (full, full_sealed, body_bytes) = sizes
        assert (full - empty) / body_bytes <= 1.5, name  # per body byte, on the broker
        assert full - full_sealed == empty - empty_sealed, name  # the envelope does not grow with the bodies
