"""Helpers shared by the integration tests and the chaos suite: real services, real processes.

Import this before anything imports ``etl``'s Celery config: it points this process's Celery
producer at the test broker.
"""

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATABASE_URL = os.environ.get("ETL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
BROKER_URL = os.environ.get("ETL_TEST_BROKER_URL", "redis://127.0.0.1:6379/15")
# Tasks sent from this process (tests that park chunks on the broker) must reach the test broker.
os.environ["CELERY_BROKER_URL"] = BROKER_URL

from etl import db, demo, sealing, sqs, vault  # noqa: E402

MASKING_KEY = "integration-test-masking-key-0123456789"
PAYLOAD_KEY = sealing.new_key()
VAULT_KEY = vault.new_master_key()
AWS_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class MotoServer:
    """moto's SQS server in a thread of this process, on a free loopback port."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.port = demo.free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop()


def reset_schema(url: str = DATABASE_URL) -> db.Connection:
    """A connection to a test database emptied and migrated afresh."""
    conn = db.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
    db.migrate(conn)
    return conn


@dataclass
class Pipeline:
    """Starts real Celery processes against the test services; ``stop()`` ends them."""

    env: dict[str, str]
    workdir: Path
    procs: dict[str, Any] = field(default_factory=dict)
    flower_port: int = 0

    def start(self, *names: str, **env: str) -> None:
        """Start processes by name: "worker", "beat", "flower", or e.g. "beat2" for a second beat."""
        for name in names:
            kind = name.rstrip("0123456789")
            self.flower_port = self.flower_port or demo.free_port()
            own = {
                "FLOWER_PORT": str(self.flower_port),
                "FLOWER_ADDRESS": "127.0.0.1",
                "ETL_BEAT_SCHEDULE_FILE": str(self.workdir / f"{name}-schedule"),
            }
            self.procs[name] = demo.spawn(demo.celery_command(kind), {**self.env, **own, **env}, self.log_path(name))

    def stop(self, *names: str) -> None:
        for name in names or list(self.procs):
            demo.stop(self.procs.pop(name))

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def log(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")


def pipeline_env(queue_url: str, endpoint: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **AWS_ENV,
        "AWS_ENDPOINT_URL_SQS": endpoint,
        "SQS_QUEUE_URL": queue_url,
        "DATABASE_URL": DATABASE_URL,
        "CELERY_BROKER_URL": BROKER_URL,
        "ETL_MASKING_KEY": MASKING_KEY,
        "ETL_PAYLOAD_KEY": PAYLOAD_KEY,
        "ETL_VAULT_KEY": VAULT_KEY,
        "ETL_FETCH_INTERVAL": "1",
        "ETL_FETCH_SECONDS": "2",  # short runs: processes stop fast between tests
        "ETL_CHUNK_SIZE": "20",
        **extra,
    }


def drained(queue: sqs.Queue, conn: db.Connection, expected: int) -> Callable[[], bool]:
    """True once ``expected`` messages are rows or rejections and the queue is empty."""

    def check() -> bool:
        s = db.stats(conn)
        if s["rows"] + s["rejected"] < expected:
            return False
        d = queue.depth()
        return d["visible"] == d["in_flight"] == 0

    return check
