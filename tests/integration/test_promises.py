"""README promises the other integration tests do not exercise, against real services and processes."""

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from etl import settings, store
from etl.crypto import vault
from etl.crypto.masking import Masker
from etl.crypto.sealing import Sealer
from etl.errors import ConfigError, Forbidden, TerminalError, TransientError
from etl.model import records
from etl.model.records import Message
from etl.pii import service as pii
from etl.sources.sqs import queue as sqs
from tests.support import (
    BROKER_URL,
    DATABASE_URL,
    MASKING_KEY,
    PAYLOAD_KEY,
    VAULT_PRIVATE_KEY,
    VAULT_PUBLIC_KEY,
    ProcessGroup,
    drained,
    stash,
    wait_until,
)

pytestmark = pytest.mark.integration


def event(i: int) -> str:
    return json.dumps(
        {
            "user_id": f"u{i}",
            "device_type": "ios",
            "ip": f"10.9.{i // 250}.{i % 250}",
            "device_id": f"dev-{i}",
            "app_version": "1.2.3",
            "locale": "GB",
        }
    )


@contextmanager
def writes_stalled() -> Iterator[store.Connection]:
    """Hold an ACCESS EXCLUSIVE lock on user_logins in an open transaction: every chunk write waits."""
    holder = store.connect(DATABASE_URL, statement_timeout_ms=0)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE user_logins IN ACCESS EXCLUSIVE MODE")
        yield holder
    finally:
        holder.rollback()
        holder.close()


def receive_all(queue: sqs.Queue, count: int, visibility_timeout: int) -> list[Message]:
    received: list[Message] = []
    deadline = time.monotonic() + 30
    while len(received) < count and time.monotonic() < deadline:
        received += queue.receive(10, wait_seconds=1, visibility_timeout=visibility_timeout)
    assert len(received) == count
    return received


def row_count(conn: store.Connection) -> int:
    return int(store.query(conn, "SELECT count(*) FROM user_logins")[0][0])


def duplicate_ids(conn: store.Connection) -> int:
    return int(store.query(conn, "SELECT count(*) - count(DISTINCT message_id) FROM user_logins")[0][0])


# ---- 1. the soft time limit releases a chunk's messages at once ------------------------------------


def test_a_chunk_past_its_soft_time_limit_releases_its_messages_at_once(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection, broker: redis.Redis
) -> None:
    """docs/reliability.md, "shutdown": a chunk that hits its soft time limit sets visibility 0.

    The chunk is published with a 3 s soft limit (Celery honours per-message limits) while its
    write is stalled by a table lock; its messages were received with a 60 s visibility timeout.
    They must be visible again long before those 60 s.
    """
    from etl.worker import chunks, tasks

    queue.send([event(i) for i in range(5)])
    received = receive_all(queue, 5, visibility_timeout=60)
    with writes_stalled():
        tasks.mask_and_write.apply_async(
            args=[stash(records.pack_chunk(received, Sealer([PAYLOAD_KEY])))],
            argsrepr=chunks.chunk_argsrepr(len(received)),
            soft_time_limit=3,
            time_limit=40,
        )
        assert queue.depth()["visible"] == 0
        pipeline.start("worker", SQS_VISIBILITY_TIMEOUT="60")
        wait_until(lambda: "Task etl.mask_and_write" in pipeline.log("worker"), 30, "the worker to take the chunk")
        started = time.monotonic()
        wait_until(lambda: queue.depth()["visible"] == 5, 20, "the released messages to be visible again")
        assert time.monotonic() - started < 30  # far below the 60 s visibility timeout
        assert "time limit hit; releasing its 5 messages back to SQS" in pipeline.log("worker")
        # the task has ended for good: its stashed chunk goes now, not at its TTL
        wait_until(lambda: not list(broker.scan_iter("etl:chunk:*")), 20, "the released chunk's key to go")
    assert row_count(conn) == 0


def test_a_chunk_task_that_fails_for_good_leaves_no_chunk_in_redis(pipeline: ProcessGroup, broker: redis.Redis) -> None:
    """A task whose chunk cannot be opened (not ours, or a key holding a list) fails once, is not
    retried, and its key does not wait for its TTL: failures cannot pile chunks up in Redis."""
    from etl.worker import tasks

    junk = stash(b"\x81" + bytes(80))
    broker.rpush("etl:chunk:a-list", "x")
    for ref in (junk, "etl:chunk:a-list"):
        tasks.mask_and_write.apply_async(args=[ref], argsrepr="<sealed chunk>")
    pipeline.start("worker")
    wait_until(lambda: pipeline.log("worker").count("TerminalError") >= 2, 60, "both tasks to fail")
    wait_until(lambda: not list(broker.scan_iter("etl:chunk:*")), 20, "their keys to go")
    log = pipeline.log("worker")
    assert "Retry in" not in log and "holds no chunk (WRONGTYPE)" in log


# ---- 2. SIGTERM during a fetch: it stops receiving and hands on what it holds ------------------------


@pytest.mark.long(20)
def test_sigterm_stops_a_running_fetch_which_hands_on_what_it_holds(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection
) -> None:
    """docs/reliability.md, "shutdown". SIGTERM goes to the worker's main process only, the way
    docker and Kubernetes stop a container. The fetch (budget 30 s, a queue that never runs dry)
    must stop at once, hand on its chunks, and everything must drain long before the visibility
    timeout, exactly once."""
    sent: list[str] = []
    stop_sending = threading.Event()

    def produce() -> None:
        i = 0
        while not stop_sending.is_set():
            sent.extend(queue.send([event(i + k) for k in range(10)]))
            i += 10
            stop_sending.wait(0.1)

    env = {
        "ETL_FETCH_SECONDS": "30",
        "ETL_SQS_THREADS": "1",
        "ETL_CHUNK_SIZE": "10",
        "ETL_MAX_QUEUED_CHUNKS": "1000",  # so only the shutdown can stop the fetch early
        "SQS_VISIBILITY_TIMEOUT": "90",
    }
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        pipeline.start("worker", "beat", **env)
        wait_until(lambda: row_count(conn) > 0, 60, "the first chunks to commit while a fetch runs")
        pipeline.stop("beat")
        worker = pipeline.procs["worker"]
        signalled = time.monotonic()
        os.kill(worker.pid, signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail("the worker did not stop within 20 s of SIGTERM: the fetch kept receiving to its 30 s budget")
        stopped_after = time.monotonic() - signalled
    finally:
        stop_sending.set()
        producer.join()
    log = pipeline.log("worker")
    assert "stopped: shutdown" in log
    assert stopped_after < 20
    del pipeline.procs["worker"]

    pipeline.start("worker", "beat", **env)
    wait_until(drained(queue, conn, len(sent)), 60, "everything to drain, well before the 90 s visibility timeout")
    assert row_count(conn) == len(sent) and duplicate_ids(conn) == 0


# ---- 3. backpressure: the broker holds at most ETL_MAX_QUEUED_CHUNKS (+ one fetch round) -------------


def queued_chunks(broker: redis.Redis) -> int:
    """Chunks (not fetch tasks) waiting in the broker's queue "etl"."""
    waiting = broker.lrange("etl", 0, -1)
    return sum(1 for raw in waiting if json.loads(raw)["headers"]["task"] == "etl.mask_and_write")


def test_backpressure_bounds_the_broker_queue_while_writes_are_stalled(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection, broker: redis.Redis
) -> None:
    bound, chunk, round_size = 2, 5, 10  # one fetch round: ETL_SQS_THREADS=1 -> 10 messages = 2 chunks
    ids = queue.send([event(i) for i in range(100)])
    env = {
        "ETL_MAX_QUEUED_CHUNKS": str(bound),
        "ETL_CHUNK_SIZE": str(chunk),
        "ETL_SQS_THREADS": "1",
        "ETL_FETCH_SECONDS": "5",
        "SQS_VISIBILITY_TIMEOUT": "60",
    }
    most = 0
    with writes_stalled():
        pipeline.start("worker", "beat", **env)

        def backpressured() -> bool:
            nonlocal most
            most = max(most, queued_chunks(broker))
            return "stopped: backpressure" in pipeline.log("worker")

        wait_until(backpressured, 60, "a fetch to stop for backpressure", interval=0.05)
        wait_until(lambda: queue.depth()["in_flight"] <= 40, 5, "the fetch to leave the rest in SQS")
        most = max(most, queued_chunks(broker))
        assert most <= bound + round_size // chunk, f"{most} chunks queued"
        assert queue.depth()["visible"] >= 100 - 40
    wait_until(drained(queue, conn, len(ids)), 120, "everything to drain once writes resume")
    assert row_count(conn) == len(ids) and duplicate_ids(conn) == 0


# ---- 4. poison messages reach the dead-letter queue after 5 receives ---------------------------------


def test_a_message_received_five_times_moves_to_the_dead_letter_queue(queue: sqs.Queue) -> None:
    """The redrive wiring etl.sources.sqs.queue.create_queue sets up (docs/operations.md, the DLQ runbook)."""
    (message_id,) = queue.send([event(1)])
    for attempt in range(1, 6):
        (got,) = wait_until(lambda: queue.receive(1, wait_seconds=1, visibility_timeout=0), 10, f"receive {attempt}")
        assert (got.message_id, got.receive_count) == (message_id, attempt)
    assert queue.receive(10, wait_seconds=1, visibility_timeout=0) == []
    dlq = sqs.Queue(queue.url + "-dlq")
    moved = wait_until(lambda: dlq.receive(10, wait_seconds=1), 10, "the message in the DLQ")
    assert [(m.message_id, m.body) for m in moved] == [(message_id, event(1))]
    assert queue.depth() == {"visible": 0, "in_flight": 0, "delayed": 0}


@pytest.mark.long(60)
def test_a_chunk_that_always_fails_transiently_ends_in_the_dead_letter_queue(
    pipeline: ProcessGroup, queue: sqs.Queue
) -> None:
    """End to end: a worker whose Postgres is unreachable never deletes; SQS moves the message away."""
    (message_id,) = queue.send([event(2)])
    pipeline.start("worker", "beat", DATABASE_URL="postgresql://postgres@127.0.0.1:1/test", SQS_VISIBILITY_TIMEOUT="10")
    dlq = sqs.Queue(queue.url + "-dlq")
    wait_until(lambda: dlq.depth()["visible"] == 1, 150, "the poison message to reach the DLQ")
    pipeline.stop()
    assert [m.message_id for m in dlq.receive(10, wait_seconds=1)] == [message_id]
    assert queue.depth() == {"visible": 0, "in_flight": 0, "delayed": 0}


# ---- 5. driver errors provoked on the real server are classified --------------------------------------


def failure(conn: store.Connection, *statements: str) -> Exception:
    with pytest.raises(Exception) as info, store.transaction(conn, "test") as cur:
        for sql in statements:
            cur.execute(sql)
    return info.value


def test_real_postgres_errors_are_classified(conn: store.Connection) -> None:
    role = f"etl_test_nopriv_{uuid.uuid4().hex[:8]}"
    check = failure(conn, "CREATE TEMP TABLE t (x int CHECK (x > 0))", "INSERT INTO t VALUES (-1)")
    assert type(check) is TerminalError and "23514" in str(check)
    assert type(failure(conn, "SELECT * FROM no_such_table")) is ConfigError
    assert type(failure(conn, "SET LOCAL statement_timeout = 50", "SELECT pg_sleep(5)")) is TransientError
    with store.transaction(conn, "role") as cur:
        cur.execute(f"CREATE ROLE {role} NOLOGIN")
    try:
        forbidden = failure(conn, f"SET LOCAL ROLE {role}", "SELECT count(*) FROM public.user_logins")
        assert type(forbidden) is Forbidden and "42501" in str(forbidden)
    finally:
        with store.transaction(conn, "role") as cur:
            cur.execute(f"DROP ROLE {role}")
    with pytest.raises(TransientError):
        store.connect("postgresql://postgres@127.0.0.1:1/test")


def test_a_write_stuck_on_a_lock_times_out_as_a_transient_error(conn: store.Connection) -> None:
    """docs/reliability.md: "a statement timeout turns a stuck write into a retry"."""
    chunk = records.transform(
        [Message("m-1", "r-1", event(1), int(time.time() * 1000))], Masker(MASKING_KEY), Sealer([PAYLOAD_KEY])
    )
    writer = store.connect(DATABASE_URL, statement_timeout_ms=500)
    try:
        with writes_stalled(), pytest.raises(TransientError, match="57014"):
            store.write_chunk(writer, chunk)
        assert store.write_chunk(writer, chunk).inserted == 1  # the retry succeeds once the lock is gone
    finally:
        writer.close()


# ---- 7. rotations: batched, resumable across batches -------------------------------------------------


class Interrupt(Exception):
    pass


class Recorded:
    """A Progress that records what it is told and can interrupt the job after some batches."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.total: int | None = None
        self.steps: list[int] = []
        self.stop_after = stop_after

    def start(self, total: int, what: str) -> None:
        self.total = total

    def advance(self, done: int) -> None:
        self.steps.append(done)
        if self.stop_after is not None and len(self.steps) >= self.stop_after:
            raise Interrupt


def base_env(**extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": DATABASE_URL,
        "CELERY_BROKER_URL": BROKER_URL,
        "ETL_MASKING_KEY": MASKING_KEY,
        "ETL_PAYLOAD_KEY": PAYLOAD_KEY,
        "ETL_VAULT_PUBLIC_KEY": VAULT_PUBLIC_KEY,
        **extra,
    }


def originals(count: int) -> dict[str, dict[str, str]]:
    """user -> its raw ip and device_id."""
    return {f"u{i}": {"ip": f"10.9.0.{i}", "device_id": f"dev-{i}"} for i in range(count)}


def load_vault(conn: store.Connection, users: int) -> None:
    """``users`` events, each with its own ip and device: 2 vault entries per user, under one data key."""
    config = settings.load(base_env())
    writer = pii.writer_vault(config, conn)
    messages = [Message(f"m-{i}", f"r-{i}", event(i), int(time.time() * 1000)) for i in range(users)]
    store.write_chunk(conn, records.transform(messages, Masker(MASKING_KEY), Sealer([PAYLOAD_KEY]), vault=writer))


def vault_contents(conn: store.Connection, config: settings.Settings) -> dict[tuple[str, str], str]:
    """(user, field) -> the value its row's token opens to, read with the keys in ``config``."""
    vaults = pii._Vaults(config, conn)
    entries = {(f, t): c for f, t, c in store.query(conn, "SELECT field, token, ciphertext FROM pii_vault")}
    out = {}
    rows = store.query(conn, "SELECT user_id, masked_ip, masked_device_id FROM user_logins")
    for user, ip_token, device_token in rows:
        for field, token in (("ip", ip_token), ("device_id", device_token)):
            out[(user, field)] = vault.decrypt(vaults, field, token, entries[(field, token)])
    return out


def test_vault_key_rotation_resumes_across_batches(conn: store.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pii, "ROTATE_BATCH", 3)
    load_vault(conn, 4)  # 8 entries: batches of 3, 3, 2
    new_private, new_public = vault.new_keypair()
    rotated = settings.load(
        base_env(ETL_VAULT_PUBLIC_KEY=new_public, ETL_VAULT_PRIVATE_KEY=f"{new_private},{VAULT_PRIVATE_KEY}")
    )
    recipient = vault.fingerprint(vault.parse_public_key(new_public))

    first = Recorded(stop_after=1)
    with pytest.raises(Interrupt):
        pii.rotate_vault_key(rotated, conn, "test", first)
    assert (first.total, first.steps) == (8, [3])
    assert store.query(conn, "SELECT count(*) FROM pii_vault")[0][0] == 8
    from etl.store import pii as tables

    assert tables.count_not_sealed_to(conn, recipient) == 5  # the first batch is committed

    second = Recorded()
    assert pii.rotate_vault_key(rotated, conn, "resume", second) == (5, recipient)
    assert (second.total, second.steps) == (5, [3, 2])
    assert tables.count_not_sealed_to(conn, recipient) == 0
    third = Recorded()
    assert pii.rotate_vault_key(rotated, conn, "again", third) == (0, recipient) and third.steps == []

    only_new = settings.load(base_env(ETL_VAULT_PUBLIC_KEY=new_public, ETL_VAULT_PRIVATE_KEY=new_private))
    expected = {(u, f): v for u, values in originals(4).items() for f, v in values.items()}
    assert vault_contents(conn, only_new) == expected


def test_masking_key_rotation_resumes_across_batches(conn: store.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pii, "ROTATE_BATCH", 3)
    load_vault(conn, 4)  # 8 k1 entries and 4 rows
    new_key = "a-brand-new-masking-key-0123456789abcdef"
    config = settings.load(
        base_env(ETL_MASKING_KEY=new_key, ETL_MASKING_KEY_VERSION="2", ETL_VAULT_PRIVATE_KEY=VAULT_PRIVATE_KEY)
    )
    from etl.store import pii as tables

    first = Recorded(stop_after=1)
    with pytest.raises(Interrupt):
        pii.rotate_masking_key(config, conn, "test", first)
    assert (first.total, first.steps) == (8, [3])
    assert tables.count_old_tokens(conn, 2) == 5  # the first batch (entries and rows) is committed

    second = Recorded()
    tokens, _ = pii.rotate_masking_key(config, conn, "resume", second)
    assert (tokens, second.total, second.steps) == (5, 5, [3, 2])
    assert tables.count_old_tokens(conn, 2) == 0 and store.query(conn, "SELECT count(*) FROM pii_vault") == [(8,)]
    masker = Masker(new_key, 2)
    got = store.query(conn, "SELECT user_id, masked_ip, masked_device_id FROM user_logins ORDER BY user_id")
    assert got == [(u, masker.mask_ip(v["ip"]), masker.mask_device_id(v["device_id"])) for u, v in originals(4).items()]
    expected = {(u, f): v for u, values in originals(4).items() for f, v in values.items()}
    assert vault_contents(conn, config) == expected


def test_masking_key_rotation_counts_every_row_it_moves(conn: store.Connection) -> None:
    """Issue 22: the count came from the last page of one UPDATE (100 rows a page), not all of them."""
    load_vault(conn, 250)  # 250 rows, 500 k1 entries: one batch, several pages per field
    config = settings.load(
        base_env(
            ETL_MASKING_KEY="a-brand-new-masking-key-0123456789abcdef",
            ETL_MASKING_KEY_VERSION="2",
            ETL_VAULT_PRIVATE_KEY=VAULT_PRIVATE_KEY,
        )
    )
    assert pii.rotate_masking_key(config, conn, "count", Recorded()) == (500, 500)  # 250 ip + 250 device updates
