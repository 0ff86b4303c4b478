"""Real services for integration tests: Postgres, Redis, a moto SQS server, Celery processes.

Nothing is mocked. Postgres and Redis must be running (`.ci/run` starts them); the SQS server
runs in this process (moto's ThreadedMotoServer) and Celery runs as real subprocesses with
exactly the command lines the demo and compose use.
"""

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import redis

from tests.support import (
    AWS_ENV,
    BROKER_URL,
    DATABASE_URL,
    MASKING_KEY,
    PAYLOAD_KEY,
    MotoServer,
    ProcessGroup,
    drained,
    pipeline_env,
    reset_schema,
    stop_servers,
    wait_until,
)

from etl import store  # isort: skip  (after tests.support, which points Celery at the test broker)
from etl.demo.processes import KINESIS_MOCK, KinesisMock
from etl.sources.sqs import queue as sqs

# What the insider tests' workers ingest (tests/integration/test_insiders.py and test_pii_finality.py).
INSIDER_EVENTS = [
    {"user_id": "ann", "device_type": "ios", "ip": "203.0.113.50", "device_id": "ann-phone", "app_version": "1.0"},
    {"user_id": "bob", "device_type": "ios", "ip": "198.51.100.4", "device_id": "bob-phone", "app_version": "1.0"},
]

__all__ = ["DATABASE_URL", "MASKING_KEY", "PAYLOAD_KEY", "ProcessGroup", "drained", "wait_until"]


@pytest.fixture(scope="session", autouse=True)
def services_up() -> None:
    """Fail loudly, with the fix, when a service the suite needs is down."""
    try:
        psycopg2.connect(DATABASE_URL, connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        pytest.exit(
            f"Postgres unreachable at {DATABASE_URL} ({exc}); start it (docs/development.md 'Tests')", returncode=3
        )
    try:
        redis.Redis.from_url(BROKER_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.exit(f"Redis unreachable at {BROKER_URL} ({exc}); start it (docs/development.md 'Tests')", returncode=3)


def pytest_sessionfinish() -> None:
    """The run's servers stop (and databases made for it go) before pytest-xdist ends the worker."""
    stop_servers()


@pytest.fixture(autouse=True)
def environment_restored() -> Iterator[None]:
    """What a test sets in os.environ (the chaos harness points AWS_* at its own moto server) is
    undone after it: the next test in this process (any order, under pytest-xdist) starts clean."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def sqs_endpoint() -> Iterator[str]:
    server = MotoServer()
    overrides = {"AWS_ENDPOINT_URL_SQS": server.endpoint, **AWS_ENV}
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    yield server.endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture(scope="session")
def kinesis_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """kinesis-mock's endpoint (Node.js; `make install` puts it in the venv). Skipped where it is
    not installed, unless ETL_TEST_REQUIRE_KINESIS_MOCK=1 (CI): there a missing server fails."""
    if KinesisMock.main() is None:
        why = f"kinesis-mock is not installed under {KINESIS_MOCK} (make install does it where npm is)"
        if os.environ.get("ETL_TEST_REQUIRE_KINESIS_MOCK") == "1":
            pytest.fail(why)
        pytest.skip(why)
    server = KinesisMock(tmp_path_factory.mktemp("kinesis-mock"))
    yield server.endpoint
    server.stop()


@pytest.fixture
def queue(sqs_endpoint: str) -> sqs.Queue:
    """A fresh queue (with its DLQ) per test."""
    return sqs.Queue(sqs.create_queue(f"login-queue-{uuid.uuid4().hex[:8]}"))


@pytest.fixture
def conn() -> Iterator[store.Connection]:
    """A connection to a freshly migrated test database."""
    connection = reset_schema()
    yield connection
    connection.close()


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    from etl.worker.celery import app

    assert app.conf.broker_url == BROKER_URL, "the test process must send to the test broker"
    client = redis.Redis.from_url(BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def pipeline(
    queue: sqs.Queue, conn: store.Connection, broker: redis.Redis, tmp_path: Path, sqs_endpoint: str
) -> Iterator[ProcessGroup]:
    p = ProcessGroup(env=pipeline_env(queue.url, sqs_endpoint), workdir=tmp_path)
    yield p
    p.stop()


@pytest.fixture
def logins(conn: store.Connection) -> Iterator[dict[str, str]]:
    """One login per project role: {"etl_writer": url, "analyst": url, "pii_officer": url}."""
    assert store.migrate(conn) == []
    store.create_roles(conn)
    suffix = uuid.uuid4().hex[:6]
    names = {role: f"t_{role}_{suffix}" for role in ("etl_writer", "analyst", "pii_officer")}
    with conn, conn.cursor() as cur:
        for role, name in names.items():
            cur.execute(f"CREATE ROLE {name} LOGIN IN ROLE {role}")
    yield {role: DATABASE_URL.replace("postgres@", f"{name}@") for role, name in names.items()}
    with conn, conn.cursor() as cur:
        for name in names.values():
            cur.execute(f"DROP OWNED BY {name}; DROP ROLE {name}")


@pytest.fixture
def written(pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection, logins: dict[str, str]) -> ProcessGroup:
    """Workers that log in as an etl_writer, as production runs them, after ingesting EVENTS."""
    pipeline.env["DATABASE_URL"] = logins["etl_writer"]
    queue.send([json.dumps(e) for e in INSIDER_EVENTS])
    pipeline.start("worker", "beat")
    wait_until(drained(queue, conn, len(INSIDER_EVENTS)), 60, "the workers to write as etl_writer")
    return pipeline
