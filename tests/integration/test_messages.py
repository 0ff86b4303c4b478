"""Every error of a command says what failed, where, and what to do: one line, non-zero exit, in
bounded time (README "When something is wrong"). Real servers, real `etl` processes."""

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.support import AWS_ENV, BROKER_URL, DATABASE_URL, MASKING_KEY, PAYLOAD_KEY

from etl import store  # isort: skip  (after tests.support, which points Celery at the test broker)
from etl.crypto.masking import Masker
from etl.crypto.sealing import Sealer
from etl.model import records
from etl.model.records import Message

PG = urlsplit(DATABASE_URL)
PG_AT = f"{PG.hostname}:{PG.port or 5432}"


def etl(*args: str, timeout: float = 60, **env: str) -> tuple[int, str, str, float]:
    """`etl args` with only ``env`` (and AWS's test credentials) set: (exit code, stdout, stderr, seconds)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "AWS_", "DATABASE_", "CELERY_", "SQS_"))}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "etl.ops.cli", *args],
        env={**base, **AWS_ENV, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout, result.stderr, time.monotonic() - started


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://postgres:s3cret@127.0.0.1:1/etl", ["127.0.0.1:1/etl as postgres", "connection refused"]),
        ("postgresql://postgres:s3cret@no-such-host.invalid/etl", ["no-such-host.invalid:5432/etl", "unknown host"]),
        (
            f"postgresql://postgres:s3cret@{PG_AT}/no_such_database",
            [f"{PG_AT}/no_such_database as postgres", "no such database", "createdb"],
        ),
        (f"postgresql://no_such_user:s3cret@{PG_AT}/postgres", ["as no_such_user", "no such user", "CREATE ROLE"]),
        ("mysql://root:s3cret@127.0.0.1/etl", ["scheme mysql://", "postgresql://"]),
    ],
    # ids without the server's port: each xdist worker may have an embedded Postgres of its own
    ids=["refused", "unknown-host", "no-such-database", "no-such-user", "wrong-scheme"],
)
def test_database_errors_say_what_where_and_what_to_do(url: str, says: list[str]) -> None:
    code, _, err, took = etl("stats", DATABASE_URL=url)
    assert code == 2 and took < 30
    assert err.count("\n") == 1 and err.startswith("etl stats: "), err
    assert all(s in err for s in says), err
    assert "DATABASE_URL" in err and "s3cret" not in err


def test_redis_errors_say_where() -> None:
    code, out, _, _ = etl("health", CELERY_BROKER_URL="redis://:s3cret@127.0.0.1:1/0")
    assert code == 1 and "Redis" in out and "127.0.0.1:1/0" in out and "connection refused" in out
    assert "CELERY_BROKER_URL" in out and "s3cret" not in out


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An endpoint that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


@pytest.mark.parametrize("command", [("stats",), ("init", "--create-queue")])
def test_an_sqs_endpoint_that_never_answers_costs_at_most_30_s_and_says_so(
    silent_endpoint: str, command: tuple[str, ...]
) -> None:
    code, out, err, took = etl(
        *command,
        DATABASE_URL=DATABASE_URL,
        AWS_ENDPOINT_URL_SQS=silent_endpoint,
        SQS_QUEUE_URL=f"{silent_endpoint}/000000000000/q",
        timeout=90,
    )
    assert code != 0 and took <= 30
    assert f"waiting for SQS at {silent_endpoint}" in err  # said while waiting, not only at the end
    said = (err if command[0] == "init" else out).splitlines()[-1]
    assert silent_endpoint in said and "no answer in time" in said and "AWS_ENDPOINT_URL_SQS" in said


@pytest.mark.parametrize("program", ["worker", "beat"])
@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ({"ETL_SQS_THREADS": "abc"}, "ETL_SQS_THREADS='abc' is not a whole number"),
        ({"ETL_CHUNK_SIZE": "0"}, "ETL_CHUNK_SIZE must be at least 1"),
        ({"ETL_CHUNKSIZE": "10"}, "ETL_CHUNKSIZE is not a setting of etl: did you mean ETL_CHUNK_SIZE?"),
    ],
)
def test_worker_and_beat_refuse_a_bad_setting_in_one_line(program: str, setting: dict[str, str], says: str) -> None:
    result = celery(program, DATABASE_URL=DATABASE_URL, **setting)
    assert result.returncode == 2
    assert result.stderr.strip() == f"etl {program}: {says}" or result.stderr.startswith(f"etl {program}: {says}")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def celery(program: str, **env: str) -> "subprocess.CompletedProcess[str]":
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "AWS_", "DATABASE_", "CELERY_", "SQS_"))}
    keys = {"ETL_MASKING_KEY": MASKING_KEY, "ETL_PAYLOAD_KEY": PAYLOAD_KEY, "ETL_METRICS_PORT": "0"}
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "etl.worker", program, "--loglevel=INFO"],
        env={**base, **AWS_ENV, **keys, "CELERY_BROKER_URL": BROKER_URL, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_worker_whose_login_may_not_write_refuses_to_start_naming_the_role(logins: dict[str, str]) -> None:
    result = celery("worker", DATABASE_URL=logins["analyst"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("etl worker: the login t_analyst_") and "INSERT on user_logins" in line
    assert "GRANT etl_writer TO t_analyst_" in line


def test_replay_of_an_unknown_reason_lists_the_reasons(conn: store.Connection) -> None:
    rejected = records.transform(
        [Message("m-1", "r-1", "not json", int(time.time() * 1000))], Masker(MASKING_KEY), Sealer([PAYLOAD_KEY])
    )
    store.write_chunk(conn, rejected)
    (reason,) = [r for (r,) in store.query(conn, "SELECT reason FROM rejected_messages")]
    keys = {"ETL_MASKING_KEY": MASKING_KEY, "ETL_PAYLOAD_KEY": PAYLOAD_KEY}
    code, _, err, _ = etl("rejected", "replay", "--reason", "no_such_reason", DATABASE_URL=DATABASE_URL, **keys)
    assert code == 2 and "no rejected message has reason 'no_such_reason'" in err and f"{reason} (1)" in err
