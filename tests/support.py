"""Helpers for the integration tests: real services, real processes (started by etl.demo.processes).

Servers of the run's own: unless ETL_TEST_DATABASE_URL and ETL_TEST_BROKER_URL name servers you
started (CI does, see .ci/run), importing this module starts an embedded PostgreSQL and Redis on
free ports for this test run and stops them when the run ends. The machine's servers are never
touched, two runs at once never meet, and the chaos scenarios restart these, never yours.

Under pytest-xdist (``make test`` runs TEST_WORKERS of them) each worker process has servers of
its own, so no test sees another's rows, queues or restarts: its own embedded pair, or on yours a
database ``<yours>_gw<n>`` and the n-th URL of ETL_TEST_BROKER_URL (a space-separated list; one
URL: a redis-server of the worker's own). See etl.demo.embedded.for_run.

Import this before anything reads ``etl``'s Celery config: it points this process's Celery
producer at the test broker.
"""

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any


def _own_servers() -> Callable[[], None]:
    """The run's servers (etl.demo.embedded.for_run), kept until the session ends (conftest's
    pytest_sessionfinish) or, at the latest, until this test process exits; returns the stop."""
    import atexit
    from contextlib import ExitStack

    from etl.demo import embedded  # etl's Celery config is read lazily: not yet, so the broker set below holds

    worker = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... in a pytest-xdist worker
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    stack = ExitStack()
    stack.enter_context(embedded.for_run("etl-test-servers-", worker, workers))
    atexit.register(stack.close)
    return stack.close


stop_servers = _own_servers()
DATABASE_URL = os.environ["ETL_TEST_DATABASE_URL"]
BROKER_URL = os.environ["ETL_TEST_BROKER_URL"]
# Tasks sent from this process (tests that park chunks on the broker) must reach the test broker.
os.environ["CELERY_BROKER_URL"] = BROKER_URL

from etl import store  # noqa: E402
from etl.crypto import sealing, vault  # noqa: E402
from etl.demo import embedded, processes  # noqa: E402
from etl.demo.processes import MotoServer, ProcessGroup  # noqa: E402
from etl.progress import Progress  # noqa: E402
from etl.sources.sqs import queue as sqs  # noqa: E402

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
        from etl.demo import embedded

        binary = str(embedded.Postgres(Path(embedded_dir) / "postgres").bin / "pg_dump")
    return subprocess.run([binary, *args, DATABASE_URL], capture_output=True, check=True).stdout


def send_chunk(messages: list[Any], keep: int = 600) -> str:
    """Publish ``messages`` as one etl.mask_and_write chunk, as a fetch does (sealed, kept in Redis
    under a key of its own); the key."""
    from etl.worker import tasks
    from etl.worker.coordination import Coordinator

    return tasks.send_chunk(messages, sealing.Sealer([PAYLOAD_KEY]), Coordinator(BROKER_URL), keep)


def stash(sealed: bytes, keep: int = 600) -> str:
    """``sealed`` kept in the test broker's Redis as a fetch keeps a chunk; its key."""
    from etl.worker.coordination import Coordinator

    return Coordinator(BROKER_URL).stash(sealed, keep)


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
    return embedded.fresh_schema(url)


# What the suite shrinks so that a hundred messages make several chunks and processes stop fast.
SMALL = {"ETL_FETCH_INTERVAL": "1", "ETL_FETCH_SECONDS": "2", "ETL_CHUNK_SIZE": "20"}
# Settings README's guarantees are stated for; pipeline_env(at_defaults=True) leaves them unset.
TUNING = ("ETL_CHUNK_SIZE", "ETL_SQS_THREADS", "ETL_FETCH_SECONDS", "ETL_FETCH_INTERVAL", "ETL_MAX_QUEUED_CHUNKS")


def pipeline_env(queue_url: str, endpoint: str, at_defaults: bool = False, **extra: str) -> dict[str, str]:
    """The workers' environment: small chunks and short fetches, or (``at_defaults``) settings.py's
    own defaults for chunk size, SQS threads, fetch budget and interval, and the broker cap."""
    env = processes.local_env(
        database_url=DATABASE_URL,
        broker_url=BROKER_URL,
        queue_url=queue_url,
        sqs_endpoint=endpoint,
        ETL_MASKING_KEY=MASKING_KEY,
        ETL_PAYLOAD_KEY=PAYLOAD_KEY,
        ETL_VAULT_PUBLIC_KEY=VAULT_PUBLIC_KEY,  # workers: seal only
        **({} if at_defaults else SMALL),
        **extra,
    )
    if at_defaults:
        env = {k: v for k, v in env.items() if k not in TUNING or k in extra}
    return env


def run_demo(cwd: Path, env: dict[str, str]) -> "subprocess.CompletedProcess[str]":
    """`etl demo` as `make demo` runs it (no Flower), in ``cwd`` with ``env``; its output kept."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "etl.ops.cli", "demo", "--flower-port", "0", "--timeout", "120"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
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


def receive_all(queue: sqs.Queue, count: int, visibility_timeout: int, timeout: float = 30) -> list[Any]:
    """Exactly ``count`` distinct messages, however SQS splits them over receives (at most 10 each).

    A message received again (its visibility ran out during the loop) is kept once.
    """
    by_id: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while len(by_id) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"received {len(by_id)} of {count} messages within {timeout}s")
        for m in queue.receive(10, wait_seconds=1, visibility_timeout=visibility_timeout):
            by_id.setdefault(m.message_id, m)
    assert len(by_id) == count, f"received {len(by_id)} messages, expected {count}"
    return list(by_id.values())


def sent_timestamps(queue: sqs.Queue, count: int) -> dict[str, int]:
    """{message_id: SentTimestamp ms} of the ``count`` messages on the queue, left visible again."""
    messages = receive_all(queue, count, visibility_timeout=60)
    assert not queue.change_visibility(messages, 0), "could not make the peeked messages visible again"
    return {m.message_id: m.sent_timestamp_ms for m in messages}


# Celery's worker log: "[2026-01-01 12:00:00,123: INFO/ForkPoolWorker-1] <message>"
_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/[^\]]+\] (.*)$", re.MULTILINE)
_SUCCEEDED = re.compile(r"^Task ([\w.]+)\[([0-9a-f-]+)\] succeeded in ([0-9.e-]+)s: (.*)$")
_CHUNK = re.compile(
    r"^chunk (\S*): (\d+) messages -> (\d+) rows, (\d+) already written, (\d+) rejected, (\d+) not deleted"
)
_FETCHED = re.compile(r"^fetched (\d+) messages in (\d+) chunks")


@dataclass(frozen=True)
class TaskRun:
    """One finished task, from the worker's text log: when it ran (log clock) and what it returned."""

    name: str
    task_id: str
    started: float
    ended: float
    result: str


@dataclass(frozen=True)
class ChunkLine:
    """The pipeline's line for one processed chunk."""

    task_id: str
    messages: int
    inserted: int
    duplicates: int
    rejected: int
    not_deleted: int


def _log_lines(log: str) -> list[tuple[float, str]]:
    return [
        (datetime.strptime(ts, "%Y-%m-%d %H:%M:%S,%f").timestamp(), message) for ts, message in _LOG_LINE.findall(log)
    ]


def task_runs(log: str, name: str) -> list[TaskRun]:
    """Tasks called ``name`` that succeeded, per the worker's "Task ... succeeded in Xs: result" lines."""
    runs = []
    for ended, message in _log_lines(log):
        m = _SUCCEEDED.match(message)
        if m and m[1] == name:
            runs.append(TaskRun(name, m[2], ended - float(m[3]), ended, m[4]))
    return runs


def chunk_lines(log: str) -> list[ChunkLine]:
    """Every "chunk <task id>: N messages -> ..." line of a worker's text log."""
    out = []
    for _, message in _log_lines(log):
        m = _CHUNK.match(message)
        if m:
            out.append(ChunkLine(m[1], *(int(g) for g in m.groups()[1:])))
    return out


def fetched_messages(log: str) -> int:
    """Messages received from SQS, summed over the fetch runs' "fetched N messages" lines."""
    return sum(int(m[1]) for _, message in _log_lines(log) if (m := _FETCHED.match(message)))


class FrontServer:
    """A real HTTP server in front of an SQS server: it records what each call sent (target and
    the access key of its signature), answers the first ``fail`` calls itself with ``status`` and
    an SQS-style JSON error, and forwards the rest, the first ``stall`` of them (after the first
    ``stall_after``) only after ``stall_seconds``. For retries, timeouts, error mapping and
    credential refresh, the same for both SQS clients; with ``tls`` it serves HTTPS with that
    context."""

    def __init__(self, upstream: str, tls: Any = None) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        front = self
        self.calls: list[tuple[str, str]] = []  # (X-Amz-Target, access key id)
        self.fail = 0
        self.status = 503
        self.code = "ServiceUnavailable"
        self.query_error = ""
        self.stall = 0
        self.stall_seconds = 0.0
        self.stall_after = 0  # calls forwarded at once before the stalled ones
        up = urlsplit(upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # no access log
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                auth = self.headers.get("Authorization", "")
                key = auth.split("Credential=", 1)[-1].split("/", 1)[0] if "Credential=" in auth else ""
                front.calls.append((self.headers.get("X-Amz-Target", ""), key))
                if front.fail > 0:
                    front.fail -= 1
                    payload = json.dumps({"__type": f"com.amazonaws.sqs#{front.code}", "message": "injected"}).encode()
                    self.send_response(front.status)
                    if front.query_error:
                        self.send_header("x-amzn-query-error", front.query_error)
                    self.send_header("Content-Type", "application/x-amz-json-1.0")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if front.stall_after > 0:
                    front.stall_after -= 1
                elif front.stall > 0:
                    front.stall -= 1
                    time.sleep(front.stall_seconds)
                conn = http.client.HTTPConnection(up.hostname or "", up.port, timeout=30)
                skip = {"host", "content-length", "connection"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                conn.request("POST", self.path, body, headers)
                resp = conn.getresponse()
                payload = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                conn.close()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.endpoint = f"{'https' if tls else 'http'}://{'localhost' if tls else '127.0.0.1'}:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Quiet(Progress):
    """A progress display that shows nothing (seeding in tests)."""

    def start(self, total: int, label: str) -> None:
        pass

    def advance(self, n: int) -> None:
        pass
