"""Helpers for the integration tests: real services, real processes (started by etl.processes).

Servers of the run's own: unless ETL_TEST_DATABASE_URL and ETL_TEST_BROKER_URL name servers you
started (CI does, see .ci/run), importing this module starts an embedded PostgreSQL and Redis on
free ports for this test run and stops them when the run ends. The machine's servers are never
touched, two runs at once never meet, and the chaos scenarios restart these, never yours.

Import this before anything reads ``etl``'s Celery config: it points this process's Celery
producer at the test broker.
"""

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _own_servers() -> None:
    """The run's servers (etl.embedded.for_run), kept until this test process exits."""
    import atexit
    from contextlib import ExitStack

    from etl import embedded  # etl's Celery config is read lazily: not yet, so the broker set below holds

    stack = ExitStack()
    stack.enter_context(embedded.for_run("etl-test-servers-"))
    atexit.register(stack.close)


_own_servers()
DATABASE_URL = os.environ["ETL_TEST_DATABASE_URL"]
BROKER_URL = os.environ["ETL_TEST_BROKER_URL"]
# Tasks sent from this process (tests that park chunks on the broker) must reach the test broker.
os.environ["CELERY_BROKER_URL"] = BROKER_URL

from etl import processes, sealing, sqs, store, vault  # noqa: E402
from etl.processes import MotoServer, ProcessGroup  # noqa: E402

MASKING_KEY = "integration-test-masking-key-0123456789"
PAYLOAD_KEY = sealing.new_key()
VAULT_PRIVATE_KEY, VAULT_PUBLIC_KEY = vault.new_keypair()
AWS_ENV = processes.LOCAL_AWS
__all__ = ["MotoServer", "ProcessGroup", "processes"]


def pg_dump(*args: str) -> bytes:
    """A dump of the test database, made with the pg_dump that matches its server."""
    embedded_dir = os.environ.get("ETL_TEST_EMBEDDED_DIR")
    binary = "pg_dump"
    if embedded_dir:
        from etl import embedded

        binary = str(embedded.Postgres(Path(embedded_dir) / "postgres").bin / "pg_dump")
    return subprocess.run([binary, *args, DATABASE_URL], capture_output=True, check=True).stdout


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def reset_schema(url: str = DATABASE_URL) -> store.Connection:
    """A connection to a test database emptied and migrated afresh."""
    conn = store.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
    store.migrate(conn)
    return conn


def pipeline_env(queue_url: str, endpoint: str, **extra: str) -> dict[str, str]:
    return processes.local_env(
        database_url=DATABASE_URL,
        broker_url=BROKER_URL,
        queue_url=queue_url,
        sqs_endpoint=endpoint,
        ETL_MASKING_KEY=MASKING_KEY,
        ETL_PAYLOAD_KEY=PAYLOAD_KEY,
        ETL_VAULT_PUBLIC_KEY=VAULT_PUBLIC_KEY,  # workers: seal only
        ETL_FETCH_INTERVAL="1",
        ETL_FETCH_SECONDS="2",  # short runs: processes stop fast between tests
        ETL_CHUNK_SIZE="20",
        **extra,
    )


def officer_env(env: dict[str, str]) -> dict[str, str]:
    """A worker's environment plus what only the PII officers' tooling holds: the private key."""
    return {**env, "ETL_VAULT_PRIVATE_KEY": VAULT_PRIVATE_KEY}


def drained(queue: sqs.Queue, conn: store.Connection, expected: int) -> Callable[[], bool]:
    """True once ``expected`` messages are rows or rejections and the queue is empty."""

    def check() -> bool:
        s = store.stats(conn)
        if s["rows"] + s["rejected"] < expected:
            return False
        d = queue.depth()
        return d["visible"] == d["in_flight"] == 0

    return check
