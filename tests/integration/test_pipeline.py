"""The whole pipeline against real Postgres, Redis, moto SQS and Celery worker/beat processes."""

import base64
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from etl import store
from etl.crypto.masking import Masker
from etl.crypto.sealing import Sealer
from etl.model import appversion, events, records
from etl.ops import samples
from etl.sources.sqs import queue as sqs
from etl.store import schema
from tests.conftest import shared_samples_path
from tests.support import (
    DATABASE_URL,
    MASKING_KEY,
    PAYLOAD_KEY,
    ProcessGroup,
    chunk_lines,
    drained,
    pg_dump,
    receive_all,
    send_chunk,
    sent_timestamps,
    task_runs,
    wait_until,
)

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).parents[1] / "fixtures"


def event(ip: str, device_id: str, user: str = "u", version: str = "1.2.3") -> str:
    return json.dumps(
        {
            "user_id": user,
            "device_type": "ios",
            "ip": ip,
            "device_id": device_id,
            "app_version": version,
            "locale": "GB",
        }
    )


def rows(conn: store.Connection) -> list[tuple]:  # type: ignore[type-arg]
    return store.query(
        conn,
        "SELECT message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date "
        "FROM user_logins ORDER BY message_id",
    )


def test_every_valid_sample_lands_exactly_once(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection
) -> None:
    shared = shared_samples_path()  # fails where ../shared is missing, unless the run opted out
    bodies = samples.read_bodies(shared) if shared else samples.generate(100, seed=1)
    ids = queue.send(bodies)
    sent_ms = sent_timestamps(queue, len(ids))  # create_date is the day SQS received the message
    pipeline.start("worker", "beat")
    wait_until(drained(queue, conn, len(bodies)), 120, "the queue to drain")

    expected = {mid: events.parse_event(body) for mid, body in zip(ids, bodies, strict=True)}
    valid = {mid: e for mid, e in expected.items() if isinstance(e, events.LoginEvent)}
    masker = Masker(MASKING_KEY)
    got = rows(conn)
    assert len(got) == len(valid) and len({r[0] for r in got}) == len(got)
    for message_id, user_id, device_type, masked_ip, masked_device, locale, version, created in got:
        e = valid[message_id]
        assert (user_id, device_type, locale) == (e.user_id, e.device_type, e.locale)
        assert masked_ip == masker.mask_ip(e.ip) and masked_device == masker.mask_device_id(e.device_id)
        assert version == appversion.encode(e.app_version)
        assert created == datetime.fromtimestamp(sent_ms[message_id] / 1000, tz=UTC).date()
    assert store.stats(conn)["rejected"] == len(bodies) - len(valid)
    if shared:
        assert (len(valid), len(bodies) - len(valid)) == (99, 1)
    # the analysts' way back to the version text agrees with the Python contract
    texts = store.query(conn, "SELECT app_version, app_version_text FROM user_logins_readable")
    assert all(appversion.decode(code) == text for code, text in texts)


def test_duplicates_share_a_token_and_different_values_do_not(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection
) -> None:
    ids = queue.send(
        [
            event("198.51.100.7", "111-11-1111", "a"),
            event("198.51.100.7", "222-22-2222", "b"),  # same ip as a
            event("203.0.113.9", "111-11-1111", "c"),  # same device as a
            event("203.0.113.10", "333-33-3333", "d"),  # nothing shared
        ]
    )
    pipeline.start("worker", "beat")
    wait_until(drained(queue, conn, len(ids)), 60, "the queue to drain")
    by_user = {r[1]: r for r in rows(conn)}
    assert by_user["a"][3] == by_user["b"][3] != by_user["c"][3] != by_user["d"][3]
    assert by_user["a"][4] == by_user["c"][4] != by_user["b"][4] != by_user["d"][4]
    stats = store.stats(conn)
    assert (stats["shared_ip_tokens"], stats["shared_device_tokens"]) == (1, 1)


def test_crash_between_commit_and_delete_writes_no_second_row(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection
) -> None:
    """A worker that committed and died before deleting: SQS redelivers, nothing is doubled."""
    queue.send([event(f"10.0.0.{i}", f"d-{i}", f"u{i}") for i in range(15)])
    received = receive_all(queue, 15, visibility_timeout=2)
    chunk = records.transform(received, Masker(MASKING_KEY), Sealer([PAYLOAD_KEY]))
    assert store.write_chunk(conn, chunk).inserted == 15  # committed; the "crash" skips the delete

    pipeline.start("worker", "beat")
    wait_until(drained(queue, conn, 15), 60, "the redelivered messages to be deleted")
    assert len(rows(conn)) == 15
    # the chunk line is written after the SQS delete that drained() saw: wait for it
    wait_until(
        lambda: sum(c.duplicates for c in chunk_lines(pipeline.log("worker"))) >= 15,
        30,
        "the redelivered chunks' lines",
    )
    log = pipeline.log("worker")
    assert "already written" in log and ("15 already written" in log or "-> 0 rows" in log)
    chunks = chunk_lines(log)
    assert sum(c.duplicates for c in chunks) == 15 and sum(c.inserted + c.rejected for c in chunks) == 0, chunks


def test_a_chunk_delivered_twice_by_the_broker_writes_once(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection, broker: redis.Redis
) -> None:
    """Celery redelivery (acks_late after a lost worker) of the same chunk is harmless."""

    queue.send([event(f"10.1.0.{i}", f"d-{i}", f"u{i}") for i in range(10)])
    received = receive_all(queue, 10, visibility_timeout=60)
    send_chunk(received)
    send_chunk(received)
    pipeline.start("worker")
    wait_until(lambda: pipeline.log("worker").count("Task etl.mask_and_write") >= 4, 60, "both deliveries to finish")
    assert len(rows(conn)) == len(received)
    assert queue.depth()["visible"] == 0
    # Both deliveries succeeded: one wrote the 10 rows, the other found them written and skipped
    # them (not merely ran: a failed, retried or rejected second delivery does not count).
    wait_until(
        lambda: len(task_runs(pipeline.log("worker"), "etl.mask_and_write")) >= 2, 30, "both deliveries' results"
    )
    done = task_runs(pipeline.log("worker"), "etl.mask_and_write")
    chunks = {c.task_id: c for c in chunk_lines(pipeline.log("worker"))}
    assert sorted((c.messages, c.inserted, c.duplicates, c.rejected) for c in chunks.values()) == [
        (10, 0, 10, 0),
        (10, 10, 0, 0),
    ], chunks
    assert sorted(r.result for r in done) == [
        "{'inserted': 0, 'rejected': 0, 'duplicates': 10}",
        "{'inserted': 10, 'rejected': 0, 'duplicates': 0}",
    ]
    assert {r.task_id for r in done} == set(chunks)
    assert store.stats(conn)["rejected"] == 0


def test_each_rejection_reason_is_recorded_and_deleted(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection
) -> None:
    cases = [json.loads(line) for line in (FIXTURES / "edge_cases.jsonl").read_text().splitlines()]
    ids = queue.send([c["body"] for c in cases])
    pipeline.start("worker", "beat")
    wait_until(drained(queue, conn, len(cases)), 90, "the queue to drain")
    reasons = dict(store.query(conn, "SELECT message_id, reason FROM rejected_messages"))
    landed = {r[0] for r in rows(conn)}
    for mid, case in zip(ids, cases, strict=True):
        if case["expect"] == "ok":
            assert mid in landed
        else:
            assert reasons[mid] == case["expect"]
    assert set(reasons.values()) == set(events.PARSE_REASONS)
    # a rejected body is kept sealed, and opens to exactly what was sent
    sealed = dict(store.query(conn, "SELECT message_id, sealed_body FROM rejected_messages"))
    body_of = dict(zip(ids, [c["body"] for c in cases], strict=True))
    sealer = Sealer([PAYLOAD_KEY])
    assert all(sealer.open(s).decode("utf-8", "surrogatepass") == body_of[m] for m, s in sealed.items())


@pytest.mark.long(12)
def test_postgres_unreachable_leaves_messages_in_sqs_until_it_is_back(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection
) -> None:
    queue.send([event(f"10.2.0.{i}", f"d-{i}", f"u{i}") for i in range(12)])
    pipeline.start("worker", "beat", DATABASE_URL="postgresql://postgres@127.0.0.1:1/test", SQS_VISIBILITY_TIMEOUT="10")
    wait_until(lambda: "its messages stay in SQS" in pipeline.log("worker"), 60, "a transient failure")
    depth = queue.depth()
    assert rows(conn) == [] and depth["visible"] + depth["in_flight"] == 12

    pipeline.stop()
    pipeline.start("worker", "beat", SQS_VISIBILITY_TIMEOUT="10")
    wait_until(drained(queue, conn, 12), 90, "the healthy worker to catch up")
    assert len(rows(conn)) == 12


def test_no_plaintext_pii_in_redis_flower_postgres_or_logs(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection, broker, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]

    ips = [f"192.0.2.{i}" for i in range(1, 21)]
    devices = [f"{i:03d}-55-{i:04d}" for i in range(1, 21)]
    bodies = [event(ip, dev, f"user-{i}") for i, (ip, dev) in enumerate(zip(ips, devices, strict=True))]
    bodies += [json.dumps({"ip": ips[0], "device_id": devices[0]}), "garbage " + ips[1]]  # rejected ones too
    queue.send(bodies)
    secrets = ips + devices

    # Chunks parked on the broker, before any worker takes them: only ciphertext in Redis.
    received = receive_all(queue, len(bodies), visibility_timeout=60)
    key = send_chunk(received)
    redis_dump = dump_redis(broker)
    assert b"sealed chunk of 22 messages" in redis_dump and key.encode() in redis_dump
    assert_absent(secrets, redis_dump, "Redis while chunks wait")

    pipeline.start("flower", FLOWER_BASIC_AUTH="tester:flower-secret")
    wait_until(lambda: "Visit me at" in pipeline.log("flower") or "Listening" in pipeline.log("flower"), 30, "flower")
    pipeline.start("worker", "beat")
    wait_until(drained(queue, conn, len(bodies)), 60, "the queue to drain")

    flower_tasks = wait_until(lambda: flower_json(pipeline.flower_port), 30, "flower to list tasks")
    assert "sealed chunk of 22 messages" in flower_tasks
    assert_absent(secrets, flower_tasks.encode(), "Flower's task API")
    assert_absent(secrets, dump_redis(broker), "Redis after the run")
    dump = pg_dump("--data-only")
    assert b"user-3" in dump  # the dump does hold the rows...
    assert_absent(secrets, dump, "pg_dump")  # ...but no raw ip or device_id
    for kind in ("worker", "beat", "flower"):
        assert_absent(secrets, pipeline.log(kind).encode(), f"the {kind} log")


def dump_redis(client) -> bytes:  # type: ignore[no-untyped-def]
    out = []
    for key in client.scan_iter(count=1000):
        out.append(key)
        kind = client.type(key)
        if kind == b"string":
            out.append(client.get(key) or b"")
        elif kind == b"list":
            out += client.lrange(key, 0, -1)
        elif kind == b"hash":
            for k, v in client.hgetall(key).items():
                out += [k, v]
        elif kind == b"set":
            out += list(client.smembers(key))
        elif kind == b"zset":
            out += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
    return b"\n".join(out)


def flower_json(port: int) -> str:
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/tasks",
        headers={"Authorization": "Basic " + base64.b64encode(b"tester:flower-secret").decode()},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            text: str = response.read().decode()
    except OSError:
        return ""
    return text if "mask_and_write" in text else ""


def assert_absent(secrets: list[str], haystack: bytes, where: str) -> None:
    found = [s for s in secrets if s.encode() in haystack]
    assert not found, f"{len(found)} raw PII values found in {where}"


def test_worker_refuses_to_start_without_a_masking_key(pipeline: ProcessGroup) -> None:
    env = {k: v for k, v in pipeline.env.items() if k != "ETL_MASKING_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "etl.worker", "worker", "--loglevel=INFO"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ETL_MASKING_KEY is not set" in result.stderr and "etl keygen" in result.stderr


def test_migrations_adopt_a_preexisting_exercise_table(conn: store.Connection) -> None:
    with conn, conn.cursor() as cur:
        cur.execute("DROP TABLE user_logins CASCADE; DELETE FROM etl_schema_migrations")
        cur.execute(schema.USER_LOGINS_DDL)
        cur.execute("INSERT INTO user_logins (user_id, app_version) VALUES ('legacy', 230)")
    assert len(store.migrate(conn)) == len(schema.MIGRATIONS)
    assert store.migrate(conn) == []  # idempotent
    assert store.query(conn, "SELECT user_id, message_id FROM user_logins") == [("legacy", None)]
    codes = store.query(
        conn, "SELECT etl_app_version_code('2.3'), etl_app_version_code('6.02'), etl_app_version_code('1.2.3.4')"
    )
    assert codes == [(2_003_000, 6_002_000, None)]


def test_cli_seed_and_stats(queue: sqs.Queue, conn: store.Connection) -> None:
    env = {**os.environ, "SQS_QUEUE_URL": queue.url, "DATABASE_URL": DATABASE_URL}
    etl = [sys.executable, "-m", "etl.ops.cli"]
    seeded = subprocess.run([*etl, "seed", "--count", "25", "--seed", "7"], env=env, capture_output=True, text=True)
    assert seeded.returncode == 0, seeded.stderr
    assert "sent 25 messages" in seeded.stdout and "25/25" in seeded.stderr  # the progress bar
    stats = subprocess.run([*etl, "stats"], env=env, capture_output=True, text=True)
    assert stats.returncode == 0, stats.stderr
    assert "25 waiting" in stats.stdout


DEFAULTS_MESSAGES = 1_200  # more than a default chunk (1000) holds; moto slows down fast with more


@pytest.mark.long(95)
@pytest.mark.xdist_group("heavy")  # never beside another heavy run (tests/conftest.py)
def test_exactly_once_at_the_default_settings(
    queue: sqs.Queue, conn: store.Connection, broker: redis.Redis, tmp_path: Path, sqs_endpoint: str
) -> None:
    """README's guarantees are stated for the defaults (chunks of 1000, 32 SQS threads, 20 s
    fetches, visibility 120 s): every message once, as its row or its rejection, none twice."""
    from etl import settings
    from tests.support import pipeline_env

    env = pipeline_env(queue.url, sqs_endpoint, at_defaults=True)
    config = settings.load(env)
    assert (config.chunk_size, config.sqs_threads, config.fetch_seconds) == (1000, 32, 20.0)
    bodies = samples.generate(DEFAULTS_MESSAGES, seed=13)
    ids = queue.send(bodies)
    group = ProcessGroup(env=env, workdir=tmp_path)
    try:
        group.start("worker", "beat")
        wait_until(drained(queue, conn, len(ids)), 300, "the queue to drain")
    finally:
        group.stop()  # a warm stop: every chunk line is written

    expected = {mid: events.parse_event(body) for mid, body in zip(ids, bodies, strict=True)}
    valid = {mid: e for mid, e in expected.items() if isinstance(e, events.LoginEvent)}
    masker = Masker(MASKING_KEY)
    got = rows(conn)
    assert {r[0] for r in got} == set(valid) and len(got) == len(valid)
    for message_id, user_id, _, masked_ip, masked_device, _, version, _ in got:
        e = valid[message_id]
        assert user_id == e.user_id and version == appversion.encode(e.app_version)
        assert masked_ip == masker.mask_ip(e.ip) and masked_device == masker.mask_device_id(e.device_id)
    rejected = {r[0] for r in store.query(conn, "SELECT message_id FROM rejected_messages")}
    assert rejected == set(expected) - set(valid)

    log = group.log("worker")
    chunks = chunk_lines(log)
    # the default chunk size is in effect: chunks larger than the suite's 20 (how large depends on
    # moto: a round of 32 concurrent receives yields up to ~300 before the queue looks dry)
    assert max(c.messages for c in chunks) > 20, [c.messages for c in chunks]
    # each message handled once. Explained second writes: a chunk attempt that failed transiently
    # (e.g. moto answering a delete with HTTP 500 under load) is retried whole, and the retry finds
    # its rows written; and SQS's own rare redelivery. A delete that silently leaves messages
    # behind (every message of a chunk again, after the visibility timeout) is not explained.
    retried = set(re.findall(r"\] chunk (\S+): .*its messages stay in SQS", log))
    unexplained = sum(c.duplicates for c in chunks if c.task_id not in retried)
    assert unexplained <= DEFAULTS_MESSAGES // 50, f"{unexplained} messages written a second time"
