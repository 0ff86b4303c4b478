"""Real services for integration tests: Postgres, Redis, a moto SQS server, Celery processes.

Nothing is mocked. Postgres and Redis must be running (`.ci/run` starts them); the SQS server
runs in this process (moto's ThreadedMotoServer) and Celery runs as real subprocesses with
exactly the command lines the demo and compose use.
"""

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis

DATABASE_URL = os.environ.get("ETL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
BROKER_URL = os.environ.get("ETL_TEST_BROKER_URL", "redis://127.0.0.1:6379/15")
# Tasks sent from this process (tests that park chunks on the broker) must reach the test broker.
os.environ["CELERY_BROKER_URL"] = BROKER_URL

from etl import db, demo, sealing, settings, sqs  # noqa: E402

pytestmark = pytest.mark.integration

MASKING_KEY = "integration-test-masking-key-0123456789"
PAYLOAD_KEY = sealing.new_key()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session", autouse=True)
def services_up() -> None:
    """Fail loudly, with the fix, when a service the suite needs is down."""
    try:
        psycopg2.connect(DATABASE_URL, connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        pytest.exit(f"Postgres unreachable at {DATABASE_URL} ({exc}); start it (see README 'Tests')", returncode=3)
    try:
        redis.Redis.from_url(BROKER_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.exit(f"Redis unreachable at {BROKER_URL} ({exc}); start it (see README 'Tests')", returncode=3)


@pytest.fixture(scope="session")
def sqs_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = demo.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    overrides = {
        "AWS_ENDPOINT_URL_SQS": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    yield endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def queue(sqs_endpoint: str) -> sqs.Queue:
    """A fresh queue (with its DLQ) per test."""
    return sqs.Queue(sqs.create_queue(f"login-queue-{uuid.uuid4().hex[:8]}"))


@pytest.fixture
def conn() -> Iterator[db.Connection]:
    """A connection to a freshly migrated test database."""
    connection = db.connect(DATABASE_URL)
    with connection, connection.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
    db.migrate(connection)
    yield connection
    connection.close()


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    from etl import app

    assert app.conf.broker_url == BROKER_URL, "the test process must send to the test broker"
    client = redis.Redis.from_url(BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@dataclass
class Pipeline:
    """Starts real Celery processes against the test services; stops them at teardown."""

    env: dict[str, str]
    workdir: Path
    procs: dict[str, Any] = field(default_factory=dict)
    flower_port: int = 0

    def start(self, *kinds: str, **env: str) -> None:
        for kind in kinds:
            self.flower_port = self.flower_port or demo.free_port()
            env = {"FLOWER_PORT": str(self.flower_port), "FLOWER_ADDRESS": "127.0.0.1", **env}
            self.procs[kind] = demo.spawn(demo.celery_command(kind), {**self.env, **env}, self.log_path(kind))

    def stop(self, *kinds: str) -> None:
        for kind in kinds or list(self.procs):
            demo.stop(self.procs.pop(kind))

    def log_path(self, kind: str) -> Path:
        return self.workdir / f"{kind}.log"

    def log(self, kind: str) -> str:
        return self.log_path(kind).read_text(errors="replace")


@pytest.fixture
def pipeline(queue: sqs.Queue, conn: db.Connection, broker: redis.Redis, tmp_path: Path) -> Iterator[Pipeline]:
    env = {
        **os.environ,
        "SQS_QUEUE_URL": queue.url,
        "DATABASE_URL": DATABASE_URL,
        "CELERY_BROKER_URL": BROKER_URL,
        "ETL_MASKING_KEY": MASKING_KEY,
        "ETL_PAYLOAD_KEY": PAYLOAD_KEY,
        "ETL_FETCH_INTERVAL": "1",
        "ETL_CHUNK_SIZE": "20",
        "ETL_BEAT_SCHEDULE_FILE": str(tmp_path / "celerybeat-schedule"),
    }
    p = Pipeline(env=env, workdir=tmp_path)
    yield p
    p.stop()


def drained(queue: sqs.Queue, conn: db.Connection, expected: int) -> Callable[[], bool]:
    """True once ``expected`` messages are rows or rejections and the queue is empty."""

    def check() -> bool:
        s = db.stats(conn)
        if s["rows"] + s["rejected"] < expected:
            return False
        d = queue.depth()
        return d["visible"] == d["in_flight"] == 0

    return check


def settings_for(queue_url: str) -> settings.Settings:
    return settings.load({"SQS_QUEUE_URL": queue_url, "ETL_MASKING_KEY": MASKING_KEY, "ETL_PAYLOAD_KEY": PAYLOAD_KEY})
