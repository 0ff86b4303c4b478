"""Kinesis as the source (ETL_SOURCE=kinesis), against moto's Kinesis server and real Celery
worker and beat processes, real Postgres and Redis; the exactly-once tests (``on_both``) run
again on kinesis-mock, the Kinesis server LocalStack runs.

What is checked is what the design promises: every valid record one row and every bad one one
rejection, checkpoints at each shard's last sequence number, a checkpoint that never passes an
uncommitted record, children of a split read only after their parent is finished, and nothing
lost or doubled when workers are SIGKILLed or the Redis broker is restarted.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg2
import pytest
import redis

from tests.support import (
    AWS_ENV,
    DATABASE_URL,
    ProcessGroup,
    Quiet,
    pipeline_env,
    run_demo,
    wait_until,
)

from etl.model import events, shards  # isort: skip
from etl import store
from etl.ops import samples, seeding
from etl.sources.kinesis import stream as kinesis

pytestmark = pytest.mark.integration


SERVERS = ["moto", "kinesis-mock"]
on_both = pytest.mark.parametrize("kinesis_endpoint", SERVERS, indirect=True)


@pytest.fixture
def kinesis_endpoint(request: pytest.FixtureRequest, sqs_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The Kinesis server a test runs on: moto's (the session's SQS server serves Kinesis too),
    or kinesis-mock where a test is parametrized with ``on_both``; local credentials set here
    (a session fixture first made inside another test has its environment undone after it)."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    if getattr(request, "param", "moto") == "moto":
        return sqs_endpoint
    return str(request.getfixturevalue("kinesis_mock"))


@pytest.fixture
def stream(kinesis_endpoint: str) -> Iterator[kinesis.Stream]:
    """A fresh 2-shard stream per test, on the test's Kinesis server."""
    saved = os.environ.get("AWS_ENDPOINT_URL_KINESIS")
    os.environ["AWS_ENDPOINT_URL_KINESIS"] = kinesis_endpoint
    s = kinesis.Stream(f"logins-{uuid.uuid4().hex[:8]}")
    s.create(2)
    yield s
    if saved is None:
        os.environ.pop("AWS_ENDPOINT_URL_KINESIS", None)
    else:
        os.environ["AWS_ENDPOINT_URL_KINESIS"] = saved


def stream_env(stream: kinesis.Stream, endpoint: str, **extra: str) -> dict[str, str]:
    return pipeline_env(
        "http://unused.invalid/000000000000/none",
        endpoint,
        ETL_SOURCE="kinesis",
        KINESIS_STREAM_NAME=stream.name,
        AWS_ENDPOINT_URL_KINESIS=endpoint,
        **extra,
    )


@pytest.fixture
def streaming(
    stream: kinesis.Stream, conn: store.Connection, broker: redis.Redis, tmp_path: Path, kinesis_endpoint: str
) -> Iterator[ProcessGroup]:
    p = ProcessGroup(env=stream_env(stream, kinesis_endpoint), workdir=tmp_path)
    yield p
    p.stop()


def put(stream: kinesis.Stream, bodies: list[str]) -> None:
    assert len(seeding.put(stream, bodies, Quiet())) == len(bodies)


def valid_count(bodies: list[str]) -> int:
    return sum(isinstance(events.parse_event(b), events.LoginEvent) for b in bodies)


def shard_records(stream: kinesis.Stream) -> dict[str, list[str]]:
    """Every shard's sequence numbers, read straight from the stream (the test's own reader)."""
    client = boto3.client("kinesis", endpoint_url=os.environ["AWS_ENDPOINT_URL_KINESIS"], **_aws())
    out: dict[str, list[str]] = {}
    for shard in stream.shards():
        it = client.get_shard_iterator(
            StreamName=stream.name, ShardId=shard.shard_id, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        seqs: list[str] = []
        while it:
            page = client.get_records(ShardIterator=it, Limit=10_000)
            seqs += [r["SequenceNumber"] for r in page["Records"]]
            if not page["Records"]:
                break
            it = page.get("NextShardIterator")
        out[shard.shard_id] = seqs
    return out


def _aws() -> dict[str, str]:
    return {
        "region_name": AWS_ENV["AWS_DEFAULT_REGION"],
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    }


def counts(conn: store.Connection) -> tuple[int, int]:
    s = store.stats(conn)
    return int(s["rows"]), int(s["rejected"])


def checkpoints(conn: store.Connection, stream: kinesis.Stream) -> dict[str, str]:
    return {sid: cp.seq for sid, cp in store.streams.checkpoints(conn, stream.name).items()}


def all_in(conn: store.Connection, total: int) -> Any:
    return lambda: sum(counts(conn)) >= total


@on_both
def test_every_record_once_and_checkpoints_at_the_end(
    stream: kinesis.Stream, streaming: ProcessGroup, conn: store.Connection
) -> None:
    bodies = samples.generate(300, seed=7, malformed_rate=0.1)
    put(stream, bodies)
    streaming.start("worker", "beat")
    wait_until(all_in(conn, len(bodies)), 120, "every record written or rejected")
    rows, rejected = counts(conn)
    assert (rows, rejected) == (valid_count(bodies), len(bodies) - valid_count(bodies))
    assert rejected > 10
    seqs = shard_records(stream)
    assert all(seqs.values()), "both shards got records (partitioned by user_id)"
    ids = {r[0] for r in store.query(conn, "SELECT message_id FROM user_logins")}
    ids |= {r[0] for r in store.query(conn, "SELECT message_id FROM rejected_messages")}
    assert ids == {shards.message_id(stream.name, sid, q) for sid, qs in seqs.items() for q in qs}
    expected = {sid: qs[-1] for sid, qs in seqs.items()}
    wait_until(lambda: checkpoints(conn, stream) == expected, 30, "checkpoints at each shard's last record")
    assert store.query(conn, "SELECT count(*) FROM stream_ranges")[0][0] == 0, "covered ranges are forgotten"
    dates = store.query(conn, "SELECT DISTINCT create_date = (now() AT TIME ZONE 'UTC')::date FROM user_logins")
    assert dates == [(True,)], "create_date is the UTC day of ApproximateArrivalTimestamp"
    stats = json.loads(etl_command(streaming, "stats", "--json"))
    assert {s["shard_id"]: s["checkpoint"] for s in stats["shards"]} == expected
    shown = stats["shards"]
    assert all(s["ranges_waiting"] == 0 and s["behind_ms"] is not None for s in shown), json.dumps(shown)
    verdict = json.loads(etl_command(streaming, "health", "--json"))
    assert verdict["healthy"], verdict
    # a replay goes back onto the stream (the pipeline reads nothing else), and is read from it
    out = etl_command(streaming, "rejected", "replay", "--limit", "3")
    assert "replayed 3 rejected messages to " + stream.name in out
    wait_until(lambda: counts(conn)[1] == rejected + 3, 60, "the replayed records to be read again")
    replays = store.query(conn, "SELECT new_message_id FROM rejected_replays")
    assert len(replays) == 3 and all(r[0].startswith(stream.name + "/") for r in replays)


@pytest.mark.long(15)
def test_fetch_runs_that_meet_backpressure_leave_the_workers_to_the_chunks(
    stream: kinesis.Stream, kinesis_endpoint: str, conn: store.Connection, broker: redis.Redis, tmp_path: Path
) -> None:
    """One shard per fetch run and two worker processes: both can be holding a fetch run at once.
    A run that met a full broker and waited in its process for room (as one did for a while)
    left no process for the chunks it waited on: rows came once per fetch budget (20 s). A run
    now ends on backpressure and the next follows shortly."""
    bodies = samples.generate(1500, seed=9, malformed_rate=0.0)
    put(stream, bodies)
    env = stream_env(stream, kinesis_endpoint, ETL_KINESIS_SHARDS_PER_FETCH="1", ETL_MAX_QUEUED_CHUNKS="2")
    p = ProcessGroup(env={**env, "ETL_FETCH_SECONDS": "20"}, workdir=tmp_path)
    try:
        p.start("worker", "beat")
        wait_until(all_in(conn, len(bodies)), 60, "every record, with both processes free to write")
        assert counts(conn) == (len(bodies), 0)
    finally:
        p.stop()


def etl_command(group: ProcessGroup, *args: str) -> str:
    """The `etl` command, run as an operator would, with the pipeline's environment."""
    done = subprocess.run(
        [sys.executable, "-m", "etl.ops.cli", *args], env=group.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def hold_message_id(message_id: str) -> psycopg2.extensions.connection:
    """An open transaction that inserted ``message_id``: a chunk writing it waits on the unique index."""
    blocker = psycopg2.connect(DATABASE_URL)
    with blocker.cursor() as cur:
        cur.execute("INSERT INTO user_logins (message_id, user_id) VALUES (%s, 'blocker')", (message_id,))
    return blocker  # not committed


@pytest.mark.long(11)
def test_checkpoint_never_passes_an_uncommitted_record(
    stream: kinesis.Stream, kinesis_endpoint: str, conn: store.Connection, broker: redis.Redis, tmp_path: Path
) -> None:
    """The first chunk of a shard is held inside Postgres while the later ones commit: the
    checkpoint must stay before it; once it commits, the checkpoint jumps over all of them."""
    bodies = [b for b in samples.generate(200, seed=3, malformed_rate=0.0)][:120]
    put(stream, bodies)
    seqs = shard_records(stream)
    shard_id, held = max(seqs.items(), key=lambda kv: len(kv[1]))
    assert len(held) >= 50
    blocker = hold_message_id(shards.message_id(stream.name, shard_id, held[3]))  # inside the first chunk of 20
    p = ProcessGroup(env=stream_env(stream, kinesis_endpoint), workdir=tmp_path)
    try:
        p.start("worker", "beat")
        later = len(held) - 20

        def later_chunks_committed() -> bool:
            rows = store.query(
                conn, "SELECT count(*) FROM user_logins WHERE message_id LIKE %s", (f"{stream.name}/{shard_id}/%",)
            )
            return int(rows[0][0]) >= later

        wait_until(later_chunks_committed, 90, "the chunks after the held one to commit")
        time.sleep(2)  # and give a wrong checkpoint every chance to move
        assert checkpoints(conn, stream)[shard_id] == shards.START, "checkpoint passed an uncommitted record"
        waiting = store.query(
            conn, "SELECT count(*) FROM stream_ranges WHERE stream = %s AND shard_id = %s", (stream.name, shard_id)
        )
        assert waiting[0][0] >= 2, "the later chunks' ranges wait for the gap"
        blocker.rollback()
        wait_until(lambda: checkpoints(conn, stream)[shard_id] == held[-1], 60, "the checkpoint to jump to the end")
        assert counts(conn) == (len(bodies), 0)
    finally:
        blocker.close()
        p.stop()


@pytest.fixture
def aws_resharding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make moto split shards as Kinesis does.

    moto 5.2 differs from Kinesis in two ways that matter here: SplitShard moves the parent's
    records into the children (with new sequence numbers), and PutRecords keeps routing to the
    closed parent. Kinesis keeps a closed parent's records where they are and routes new ones
    to the open children. The server (in this process) is corrected to that; the client side,
    the worker and beat stay real.
    """
    from moto.kinesis import models

    def open_shard_for_key(self: Any, partition_key: str, explicit_hash_key: str) -> Any:
        key = int(
            explicit_hash_key or models.md5_hash(partition_key.encode()).hexdigest(), 10 if explicit_hash_key else 16
        )
        return next(s for s in self.shards.values() if s.is_open and s.starting_hash <= key < s.ending_hash)

    split = models.Stream.split_shard

    def split_keeping_records(self: Any, shard_to_split: str, new_starting_hash_key: str) -> None:
        parent = self.shards[shard_to_split]
        kept, parent.records = parent.records, type(parent.records)()
        try:
            split(self, shard_to_split, new_starting_hash_key)
        finally:
            parent.records = kept

    monkeypatch.setattr(models.Stream, "get_shard_for_key", open_shard_for_key)
    monkeypatch.setattr(models.Stream, "split_shard", split_keeping_records)


@pytest.mark.long(12)
def test_a_split_shard_finishes_before_its_children(
    stream: kinesis.Stream,
    kinesis_endpoint: str,
    conn: store.Connection,
    broker: redis.Redis,
    tmp_path: Path,
    aws_resharding: None,
) -> None:
    """Split a shard during ingestion, with its last chunk held uncommitted: nothing from its
    children is written until the parent is finished; then all of it is, once."""
    first = samples.generate(120, seed=11, malformed_rate=0.0)
    put(stream, first)
    before = shard_records(stream)
    parent, parent_seqs = max(before.items(), key=lambda kv: len(kv[1]))
    client = boto3.client("kinesis", endpoint_url=kinesis_endpoint, **_aws())
    hash_range = next(s for s in client.list_shards(StreamName=stream.name)["Shards"] if s["ShardId"] == parent)
    low, high = int(hash_range["HashKeyRange"]["StartingHashKey"]), int(hash_range["HashKeyRange"]["EndingHashKey"])
    client.split_shard(StreamName=stream.name, ShardToSplit=parent, NewStartingHashKey=str((low + high) // 2))
    wait_until(lambda: stream.status() == "ACTIVE", 30, "the split to finish")
    children = [s.shard_id for s in stream.shards() if parent in s.parents]
    assert len(children) == 2
    second = samples.generate(120, seed=12, malformed_rate=0.0)
    put(stream, second)
    assert shard_records(stream)[parent] == parent_seqs, "a closed shard takes no new records"
    assert any(shard_records(stream)[c] for c in children)
    blocker = hold_message_id(shards.message_id(stream.name, parent, parent_seqs[-1]))
    p = ProcessGroup(env=stream_env(stream, kinesis_endpoint), workdir=tmp_path)
    try:
        p.start("worker", "beat")
        other = [sid for sid in before if sid != parent]

        def rows_of(shard_ids: list[str]) -> int:
            patterns = [f"{stream.name}/{sid}/%" for sid in shard_ids]
            return int(
                store.query(conn, "SELECT count(*) FROM user_logins WHERE message_id LIKE ANY (%s)", (patterns,))[0][0]
            )

        wait_until(lambda: rows_of([parent]) >= len(parent_seqs) - 20, 90, "the parent's chunks but the held one")
        wait_until(lambda: rows_of(other) > 0, 60, "the unsplit shard to be read")
        time.sleep(4)  # several fetch runs: the children must stay unread while the parent is unfinished
        assert rows_of(children) == 0, "a child was read before its parent was finished"
        blocker.rollback()
        total = len(first) + len(second)
        wait_until(all_in(conn, total), 120, "every record of parent and children")
        assert counts(conn) == (total, 0)
        after = shard_records(stream)
        expected = {sid: qs[-1] for sid, qs in after.items() if qs}
        wait_until(
            lambda: {k: v for k, v in checkpoints(conn, stream).items() if k in expected} == expected,
            30,
            "every shard's checkpoint at its last record",
        )
        ended = store.streams.shard_report(conn, stream.name)
        assert [s["end"] for s in ended if s["shard_id"] == parent] == [parent_seqs[-1]]
    finally:
        blocker.close()
        p.stop()


@on_both
@pytest.mark.long(45)
def test_sigkilled_workers_and_a_restarted_lease_owner_lose_and_double_nothing(
    stream: kinesis.Stream, kinesis_endpoint: str, conn: store.Connection, broker: redis.Redis, tmp_path: Path
) -> None:
    """Pool processes SIGKILLed mid-chunk, the whole worker (the fetch lease owner) SIGKILLed
    and restarted: chunks lost with them are read again from the checkpoint after
    SQS_VISIBILITY_TIMEOUT, and every record ends as exactly one row or rejection."""
    bodies = samples.generate(400, seed=21, malformed_rate=0.05)
    put(stream, bodies)
    env = stream_env(stream, kinesis_endpoint, SQS_VISIBILITY_TIMEOUT="10")
    p = ProcessGroup(env=env, workdir=tmp_path)
    try:
        p.start("worker", "beat")
        killed = 0
        for fraction in (0.15, 0.35):
            wait_until(lambda f=fraction: sum(counts(conn)) >= f * len(bodies), 120, f"{fraction:.0%} written")
            for pid in _pool_pids(p.procs["worker"].pid):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        wait_until(lambda: sum(counts(conn)) >= 0.55 * len(bodies), 120, "55% written")
        p.procs["worker"].kill()
        p.procs.pop("worker").wait()
        p.stop("beat")
        time.sleep(1)
        p.start("worker", "beat")
        wait_until(all_in(conn, len(bodies)), 180, "every record after the kills")
        assert killed >= 2
        assert counts(conn) == (valid_count(bodies), len(bodies) - valid_count(bodies))
        seqs = shard_records(stream)
        expected = {sid: qs[-1] for sid, qs in seqs.items()}
        wait_until(lambda: checkpoints(conn, stream) == expected, 60, "checkpoints at each shard's last record")
    finally:
        p.stop()


def _pool_pids(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


@pytest.mark.long(16)
def test_chunks_lost_after_they_were_handed_on_are_read_again_after_the_timeout(
    stream: kinesis.Stream, kinesis_endpoint: str, conn: store.Connection, broker: redis.Redis, tmp_path: Path
) -> None:
    """The state a lost chunk leaves (a broker that lost it, a chunk out of retries): the read
    pointer in Redis is past records whose chunk never committed. The fetch trusts the pointer
    while the chunk may still commit, then reads on from the checkpoint."""
    bodies = samples.generate(100, seed=31, malformed_rate=0.0)
    put(stream, bodies)
    seqs = shard_records(stream)
    for shard_id, shard_seqs in seqs.items():  # every record "handed on" just now, none committed
        pointer = {"seq": shard_seqs[-1], "pending_since": time.time()}
        broker.hset(f"etl:stream:{stream.name}:pointers", shard_id, json.dumps(pointer))
    p = ProcessGroup(env=stream_env(stream, kinesis_endpoint, SQS_VISIBILITY_TIMEOUT="10"), workdir=tmp_path)
    try:
        started = time.monotonic()
        p.start("worker", "beat")
        wait_until(lambda: checkpoints(conn, stream), 30, "the shards to be recorded")
        while time.monotonic() - started < 7:
            assert counts(conn) == (0, 0), "read again before the chunks in flight could have committed"
            time.sleep(0.5)
        wait_until(all_in(conn, len(bodies)), 90, "every record, read again from the checkpoint")
        assert counts(conn) == (len(bodies), 0)
        assert "reading on from it again" in p.log("worker")
        expected = {sid: qs[-1] for sid, qs in seqs.items()}
        wait_until(lambda: checkpoints(conn, stream) == expected, 30, "checkpoints at each shard's last record")
    finally:
        p.stop()


@pytest.mark.long(13)
def test_the_demo_runs_on_a_stream(tmp_path: Path) -> None:
    """`ETL_SOURCE=kinesis make demo`: the whole pipeline through a Kinesis stream, on servers of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "AWS_ENDPOINT", "DATABASE", "CELERY"))}
    env.update(ETL_SOURCE="kinesis", ETL_EMBEDDED="always", ETL_METRICS_PORT="0")
    done = run_demo(tmp_path, env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    sent = int(re.search(r"^sent\s+(\d+)", done.stdout, re.M)[1])  # type: ignore[index]
    rows = int(re.search(r"^rows\s+(\d+)", done.stdout, re.M)[1])  # type: ignore[index]
    rejected = int(re.search(r"^rejected\s+(\d+)", done.stdout, re.M)[1])  # type: ignore[index]
    assert sent == rows + rejected and rows > 0
    assert "kinesis: embedded moto server" in done.stdout and "\nstream     checkpoints " in done.stdout
    # again on the same .demo/: a new moto server, so a new stream under the same name, whose
    # sequence numbers start over; its own records are processed, none taken for the first run's
    again = run_demo(tmp_path, env)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "read from its start as " in again.stdout
    rows2 = int(re.search(r"^rows\s+(\d+)", again.stdout, re.M)[1])  # type: ignore[index]
    rejected2 = int(re.search(r"^rejected\s+(\d+)", again.stdout, re.M)[1])  # type: ignore[index]
    assert (rows2, rejected2) == (rows, rejected)
    assert "(0.0s from worker start" not in again.stdout


@pytest.mark.parametrize("fault", ["redis", "postgres"])
@pytest.mark.long(20)
def test_a_restarted_broker_or_database_loses_and_doubles_nothing_on_a_stream(
    fault: str,
    stream: kinesis.Stream,
    kinesis_endpoint: str,
    conn: store.Connection,
    broker: redis.Redis,
    tmp_path: Path,
) -> None:
    """The chaos scenarios that apply to a stream, with a chunk in flight (held inside Postgres)
    when the fault hits: Redis restarted without persistence (queued and unacknowledged chunks,
    read pointers and shard leases all lost) or PostgreSQL down for 10 s."""
    from chaos import harness

    if fault == "postgres" and not os.environ.get("ETL_TEST_EMBEDDED_DIR"):
        pytest.skip("restarts PostgreSQL only where it is the run's own (embedded); ETL_TEST_DATABASE_URL is yours")
    bodies = samples.generate(300, seed=41, malformed_rate=0.05)
    put(stream, bodies)
    shard_id, held = max(shard_records(stream).items(), key=lambda kv: len(kv[1]))
    blocker = hold_message_id(shards.message_id(stream.name, shard_id, held[0]))
    p = ProcessGroup(env=stream_env(stream, kinesis_endpoint, SQS_VISIBILITY_TIMEOUT="10"), workdir=tmp_path)
    try:
        p.start("worker", "beat")
        wait_until(lambda: sum(counts(conn)) >= 0.2 * len(bodies), 120, "20% written, one chunk held in flight")
        if fault == "redis":
            harness.bounce_redis(5)
        else:
            conn.close()
            harness.bounce_postgres(10)
        with contextlib.suppress(psycopg2.Error):  # gone with the restart, or let go now
            blocker.rollback()
        fresh = psycopg2.connect(DATABASE_URL)
        try:
            wait_until(all_in(fresh, len(bodies)), 180, f"every record after the {fault} restart")
            assert counts(fresh) == (valid_count(bodies), len(bodies) - valid_count(bodies))
            expected = {sid: qs[-1] for sid, qs in shard_records(stream).items()}
            wait_until(lambda: checkpoints(fresh, stream) == expected, 60, "checkpoints at each shard's last record")
        finally:
            fresh.close()
        # kombu 5.7 once failed here for good ("Unrecoverable error") restoring the unacknowledged
        # chunk through the lost connection: etl.worker.celery.survive_broker_loss
        assert "Unrecoverable error" not in p.log("worker")
    finally:
        blocker.close()
        p.stop()


def put_aggregated(
    stream: kinesis.Stream, bodies: list[str], seed: int, corrupt: int = 2
) -> tuple[dict[str, str], set[str]]:
    """Put ``bodies`` the way a KPL producer does: most packed into aggregated records of 2 to 45
    user records (aws-kinesis-agg), some plain, in random order and shards; plus ``corrupt``
    aggregates (bad digest, bad protobuf). Returns every user record's expected message id ->
    body, and the ids of the corrupt aggregates."""
    import hashlib
    import random

    from aws_kinesis_agg.aggregator import AggRecord

    rng = random.Random(seed)
    entries: list[tuple[list[str] | None, bytes]] = []  # (bodies inside, or None: corrupt) and the data
    i = 0
    while i < len(bodies):
        n = 1 if rng.random() < 0.25 else rng.randint(2, 45)
        group = bodies[i : i + n]
        i += n
        if len(group) == 1:
            entries.append((group, group[0].encode()))
            continue
        agg = AggRecord()
        for b in group:
            assert agg.add_user_record(uuid.uuid4().hex, b.encode())
        entries.append((group, bytes(agg.get_contents()[2])))
    for k in range(corrupt):
        agg = AggRecord()
        for b in samples.generate(5, seed=seed + k, malformed_rate=0.0):
            agg.add_user_record("k", b.encode())
        data = bytes(agg.get_contents()[2])
        if k % 2 == 0:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])  # the digest no longer matches
        else:
            body = data[4:-16][:-3]  # a protobuf cut short, under a digest that matches it
            data = data[:4] + body + hashlib.md5(body, usedforsecurity=False).digest()
        entries.insert(rng.randrange(len(entries)), (None, data))
    client = boto3.client("kinesis", endpoint_url=os.environ["AWS_ENDPOINT_URL_KINESIS"], **_aws())
    expected: dict[str, str] = {}
    broken: set[str] = set()
    for start in range(0, len(entries), 100):
        batch = entries[start : start + 100]
        got = client.put_records(
            StreamName=stream.name, Records=[{"Data": d, "PartitionKey": uuid.uuid4().hex} for _, d in batch]
        )
        assert not got.get("FailedRecordCount")
        for (group, _), r in zip(batch, got["Records"], strict=True):
            sid, seq = r["ShardId"], r["SequenceNumber"]
            if group is None:
                broken.add(shards.message_id(stream.name, sid, seq))
            elif len(group) == 1:
                expected[shards.message_id(stream.name, sid, seq)] = group[0]
            else:
                expected.update({shards.message_id(stream.name, sid, seq, j): b for j, b in enumerate(group)})
    return expected, broken


@on_both
def test_aggregated_and_plain_records_through_sigkills_each_user_record_once(
    stream: kinesis.Stream, kinesis_endpoint: str, conn: store.Connection, broker: redis.Redis, tmp_path: Path
) -> None:
    """KPL-aggregated records (bad user records inside), plain ones and corrupt aggregates mixed
    on 2 shards; chunks of 20 user records, so chunk boundaries fall inside aggregates; pool
    processes and then the whole worker SIGKILLed mid-run: every valid user record one row,
    every bad one one rejection, each corrupt aggregate one `bad_aggregate` rejection."""
    bodies = samples.generate(700, seed=51, malformed_rate=0.08)
    expected, broken = put_aggregated(stream, bodies, seed=51)
    valid = valid_count(list(expected.values()))
    assert len(expected) == len(bodies) and valid < len(bodies)
    seqs = shard_records(stream)
    assert all(len(qs) > 5 for qs in seqs.values()), "both shards hold records"
    total = len(expected) + len(broken)
    p = ProcessGroup(env=stream_env(stream, kinesis_endpoint, SQS_VISIBILITY_TIMEOUT="10"), workdir=tmp_path)
    try:
        p.start("worker", "beat")
        killed = 0
        for fraction in (0.15, 0.35):
            wait_until(lambda f=fraction: sum(counts(conn)) >= f * total, 120, f"{fraction:.0%} written")
            for pid in _pool_pids(p.procs["worker"].pid):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        wait_until(lambda: sum(counts(conn)) >= 0.55 * total, 120, "55% written")
        p.procs["worker"].kill()
        p.procs.pop("worker").wait()
        p.stop("beat")
        time.sleep(1)
        p.start("worker", "beat")
        wait_until(all_in(conn, total), 180, "every user record after the kills")
        assert killed >= 2
        assert counts(conn) == (valid, total - valid)
        rows = {r[0] for r in store.query(conn, "SELECT message_id FROM user_logins")}
        rejected = dict(store.query(conn, "SELECT message_id, reason FROM rejected_messages"))
        assert rows | set(rejected) == set(expected) | broken, "no user record lost, none made up"
        assert {k for k, why in rejected.items() if why == events.BAD_AGGREGATE} == broken
        assert max(len(m) for m in rows | set(rejected)) <= 128
        assert any(m.count("/") == 3 for m in rows), "user records of aggregates carry a sub-sequence number"
        want = {sid: qs[-1] for sid, qs in seqs.items()}
        wait_until(lambda: checkpoints(conn, stream) == want, 60, "checkpoints at each shard's last record")
    finally:
        p.stop()


@on_both
def test_a_stream_deleted_and_re_created_is_read_from_its_start_and_said_so(
    stream: kinesis.Stream, kinesis_endpoint: str, conn: store.Connection, broker: redis.Redis, tmp_path: Path
) -> None:
    """The same name, another stream (its StreamCreationTimestamp differs): its sequence numbers
    start over, so the old checkpoints and message ids must not apply. Every record of the new
    stream lands, and the change is said in the log, `etl stats` and `etl health`."""
    first = samples.generate(100, seed=61, malformed_rate=0.0)
    put(stream, first)
    p = ProcessGroup(env=stream_env(stream, kinesis_endpoint), workdir=tmp_path)
    try:
        p.start("worker", "beat")
        wait_until(all_in(conn, len(first)), 90, "the first stream's records")
        before = checkpoints(conn, stream)
        client = boto3.client("kinesis", endpoint_url=kinesis_endpoint, **_aws())
        client.delete_stream(StreamName=stream.name)
        wait_until(lambda: stream.name not in client.list_streams()["StreamNames"], 30, "the stream to be deleted")
        stream.create(2)
        second = samples.generate(120, seed=62, malformed_rate=0.0)
        put(stream, second)
        seqs = shard_records(stream)
        wait_until(all_in(conn, len(first) + len(second)), 120, "every record of the re-created stream")
        assert counts(conn) == (len(first) + len(second), 0)
        key = f"{stream.name}~2"
        new_ids = {
            r[0]
            for r in store.query(conn, "SELECT message_id FROM user_logins WHERE message_id LIKE %s", (key + "/%",))
        }
        assert new_ids == {shards.message_id(key, sid, q) for sid, qs in seqs.items() for q in qs}
        assert checkpoints(conn, stream) == before, "the first stream's checkpoints stay as they were"
        want = {sid: qs[-1] for sid, qs in seqs.items()}
        got = lambda: {sid: cp.seq for sid, cp in store.streams.checkpoints(conn, key).items()}  # noqa: E731
        wait_until(lambda: got() == want, 30, "the new stream's checkpoints at its last records")
        assert p.log("worker").count("was deleted and re-created") == 1
        stats = etl_command(p, "stats")
        assert "re-created: this stream was created" in stats and f"as {key} (incarnation 2)" in stats
        assert json.loads(etl_command(p, "stats", "--json"))["stream"]["incarnation"] == 2
        assert "re-created: this stream was created" in etl_command(p, "health")
        # what the workers' metrics read: the new incarnation's shards, not the old one's frozen status
        published = lambda: {  # noqa: E731
            k.decode(): json.loads(v) for k, v in broker.hgetall(f"etl:stream:{stream.name}:incarnation").items()
        }
        assert published()["current"]["key"] == key
        status = lambda: {  # noqa: E731
            k.decode(): json.loads(v)["pointer"] for k, v in broker.hgetall(f"etl:stream:{key}:status").items()
        }
        wait_until(lambda: status() == want, 30, "the new incarnation's status at its last records")
    finally:
        p.stop()
