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


def test_a_chunk_cut_by_bytes_at_the_default_cap_fits_a_1_mib_broker_whole(
    queue: sqs.Queue, conn: store.Connection, small_redis: str, sqs_endpoint: str, tmp_path: Path
) -> None:
    """ETL_CHUNK_MAX_BYTES's default (960 KiB, an upper estimate) stays under a 1 MiB broker's cap
    with the task's envelope: chunks of ~9 KB bodies, cut by bytes at the cap, all land and no
    message is refused on its own."""
    bodies = [json.dumps({**json.loads(event(i)), "note": "x" * 9_000}) for i in range(120)]
    ids = queue.send(bodies)
    env = {**pipeline_env(queue.url, sqs_endpoint, CELERY_BROKER_URL=small_redis), "ETL_CHUNK_SIZE": "1000"}
    group = ProcessGroup(env=env, workdir=tmp_path)
    try:
        group.start("worker", "beat")
        wait_until(drained(queue, conn, len(ids)), 120, "every message's row or rejection")
    finally:
        group.stop()
    assert not store.query(conn, "SELECT 1 FROM rejected_messages WHERE reason = 'broker_refused'")
    assert "refused" not in (tmp_path / "worker.log").read_text()


def test_a_body_the_broker_refuses_costs_no_neighbour(
    queue: sqs.Queue, conn: store.Connection, small_redis: str, sqs_endpoint: str, tmp_path: Path
) -> None:
    """15 valid events and one body of emoji too big for the broker, all in one chunk (the byte
    bound lifted): the chunk is split, the 15 land, the big one alone is rejected, nothing valid
    reaches the dead-letter queue."""
    big = EMOJI * 262_125  # 1,048,500 bytes: within SQS's 1 MiB, over 1 MiB on the broker with its identifiers
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
    assert hashlib.sha256(big.encode()).hexdigest() in detail and "1048500 bytes" in detail
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
    assert [m for m, _ in store.rejected_to_replay(conn, None, 10)] == [ids[5]]  # no body kept: nothing to replay
    assert sqs.Queue(queue.url + "-dlq").depth()["visible"] == 0


def test_a_chunk_weighs_its_bodies_in_redis_and_its_task_message_does_not_grow_with_them(
    broker: redis.Redis,
) -> None:
    """What a chunk weighs in Redis, measured there (no worker takes it): the stashed value grows
    by one byte per UTF-8 body byte whatever the characters (no escapes, no base64), and the task
    message on the queue, which carries only the key, does not grow with the bodies at all."""
    from etl.model.records import Message
    from tests.support import send_chunk

    kinds = {"ascii": 'a"\\', "latin": "é", "cjk": "語", "emoji": EMOJI, "control": "\x01\n", "surrogate": "\ud800"}
    for name, unit in kinds.items():
        sizes = []
        for repeat in (0, 65_536 // len(unit.encode("utf-8", "surrogatepass"))):
            body = unit * repeat
            key = send_chunk([Message(f"m-{i}", f"rh-{i}", body, 1_700_000_000_000) for i in range(4)])
            task, value = broker.lindex("etl", 0), broker.get(key)
            assert task is not None and value is not None
            assert broker.ttl(key) > 0  # kept for a while, not for ever
            broker.delete("etl", key)
            sizes.append((len(task), len(value), 4 * len(body.encode("utf-8", "surrogatepass"))))
        (empty_task, empty, _), (full_task, full, body_bytes) = sizes
        assert full - empty == body_bytes, name  # one stored byte per body byte
        assert full_task == empty_task < 2_000, name  # the task message: the key and headers only


FLOOD = 100  # bodies of 1,000,000 bytes (SQS's maximum is 1,048,576)


def heavy_bodies(count: int) -> list[str]:
    """Valid events padded to 1,000,000 bytes (an extra field: stored as a row, nothing big kept)."""
    pad = 1_000_000 - len(event(0)) - 10
    return [json.dumps({**json.loads(event(i)), "pad": "p" * pad}) for i in range(count)]


def flood(env: dict[str, str], broker_url: str, tmp_path: Path, conn: store.Connection, expected: int) -> None:
    """Run worker and beat on ``env`` until ``expected`` messages are written, then check README's
    bound at the default settings: Redis holds at most ETL_MAX_QUEUED_CHUNKS queued chunks plus
    one unacked per pool process and one being sent, each at most max(ETL_CHUNK_MAX_BYTES, one
    1 MiB body alone: ~1.45 MB), however many large bodies arrive. Peak RSS is printed."""
    import threading

    import psutil

    from etl import settings

    config = settings.load(env)
    client = redis.Redis.from_url(broker_url)
    client.config_set("proto-max-bulk-len", "512mb")  # the bound, not the refusal, is tested here
    baseline = int(client.info("memory")["used_memory"])
    peak_rss: dict[str, int] = {}
    stop = threading.Event()
    group = ProcessGroup(env=env, workdir=tmp_path)

    def sample() -> None:
        while not stop.wait(0.1):
            for name, proc in list(group.procs.items()):
                try:
                    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
                    for p in tree:
                        key = f"{name}:{'main' if p.pid == proc.pid else 'pool'}"
                        peak_rss[key] = max(peak_rss.get(key, 0), p.memory_info().rss)
                except psutil.Error:
                    pass

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        group.start("worker", "beat")
        sampler.start()
        wait_until(lambda: sum(store.stats(conn)[k] for k in ("rows", "rejected")) >= expected, 300, "the flood")
    finally:
        stop.set()
        group.stop()
    used_peak = int(client.info("memory")["used_memory_peak"]) - baseline
    client.close()
    # queued, one unacked per pool process, one in hand; x1.25 for the allocator's size classes
    # (a 1.4 MB value takes a 1.5-1.75 MiB block) and 4 MB for client buffers
    per_chunk = max(config.chunk_max_bytes, 1_450_000)
    bound = (config.max_queued_chunks + 2 + 1) * per_chunk * 1.25 + 4_000_000
    print(f"\n{config.source} flood: Redis used_memory peak +{used_peak / 1e6:.1f} MB (bound {bound / 1e6:.1f} MB)")
    for key, rss in sorted(peak_rss.items()):
        print(f"  peak RSS {key}: {rss / 1e6:.0f} MB")
    assert used_peak <= bound


def test_a_flood_of_maximum_size_bodies_stays_within_the_stated_memory_bound(
    queue: sqs.Queue, conn: store.Connection, small_redis: str, sqs_endpoint: str, tmp_path: Path
) -> None:
    """SQS, at the default settings: 100 bodies of 1 MB, 3 over 1 MiB, 20 small ones."""
    over = [EMOJI * 270_000 for _ in range(3)]  # 1,080,000 bytes: too_large
    bodies = [event(i) for i in range(20)] + heavy_bodies(FLOOD) + over
    queue.send(bodies)
    env = pipeline_env(queue.url, sqs_endpoint, at_defaults=True, CELERY_BROKER_URL=small_redis)
    flood(env, small_redis, tmp_path, conn, len(bodies))
    assert store.stats(conn)["rows"] == 20 + FLOOD
    reasons = dict(store.query(conn, "SELECT reason, count(*) FROM rejected_messages GROUP BY reason"))
    assert reasons == {"too_large": 3}
    assert drained(queue, conn, len(bodies))()


def test_a_flood_of_maximum_size_records_on_a_stream_stays_within_the_same_bound(
    conn: store.Connection, small_redis: str, sqs_endpoint: str, tmp_path: Path
) -> None:
    """Kinesis, at the default settings: 100 records of 1 MB and 20 small ones on two shards (moto
    hands a read of all of them at once; AWS would cap a read at 10 MiB)."""
    import os
    import uuid

    from etl.ops import seeding
    from etl.sources.kinesis import stream as kinesis
    from tests.support import Quiet

    os.environ["AWS_ENDPOINT_URL_KINESIS"] = sqs_endpoint
    try:
        stream = kinesis.Stream(f"flood-{uuid.uuid4().hex[:8]}")
        stream.create(2)
        bodies = [event(i) for i in range(20)] + heavy_bodies(FLOOD)
        assert len(seeding.put(stream, bodies, Quiet())) == len(bodies)
    finally:
        os.environ.pop("AWS_ENDPOINT_URL_KINESIS", None)
    env = pipeline_env(
        "http://unused.invalid/000000000000/none",
        sqs_endpoint,
        at_defaults=True,
        CELERY_BROKER_URL=small_redis,
        ETL_SOURCE="kinesis",
        KINESIS_STREAM_NAME=stream.name,
        AWS_ENDPOINT_URL_KINESIS=sqs_endpoint,
    )
    flood(env, small_redis, tmp_path, conn, len(bodies))
    assert store.stats(conn)["rows"] == len(bodies)
