"""`etl doctor` (README "When something is wrong"): one line per check against the real services,
ok or FAIL with the fix, exit 1 when anything failed; and refusals that name the role needed."""

import os
import subprocess
import sys
import uuid

from tests.support import AWS_ENV, BROKER_URL, DATABASE_URL, MASKING_KEY, PAYLOAD_KEY, VAULT_PUBLIC_KEY

from etl import store  # isort: skip
from etl.sources.sqs import queue as sqs


def etl(*args: str, **env: str) -> "subprocess.CompletedProcess[str]":
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "AWS_", "DATABASE_", "CELERY_", "SQS_"))}
    return subprocess.run(
        [sys.executable, "-m", "etl.ops.cli", *args],
        env={**base, **AWS_ENV, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def worker_env(queue_url: str, endpoint: str, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": DATABASE_URL,
        "CELERY_BROKER_URL": BROKER_URL,
        "SQS_QUEUE_URL": queue_url,
        "AWS_ENDPOINT_URL_SQS": endpoint,
        "ETL_MASKING_KEY": MASKING_KEY,
        "ETL_PAYLOAD_KEY": PAYLOAD_KEY,
        "ETL_VAULT_PUBLIC_KEY": VAULT_PUBLIC_KEY,
        **extra,
    }


def lines(result: "subprocess.CompletedProcess[str]") -> dict[str, str]:
    """{check name: its line}."""
    return {line.split(":")[0].split()[-1]: line for line in result.stdout.splitlines()[:-1]}


def test_doctor_passes_a_working_setup(queue: sqs.Queue, conn: store.Connection, sqs_endpoint: str) -> None:
    result = etl("doctor", **worker_env(queue.url, sqs_endpoint))
    assert result.returncode == 0, result.stdout
    checks = result.stdout.splitlines()[:-1]
    assert all(line.startswith(("ok ", "warn ")) for line in checks), result.stdout
    assert [line.split(":")[0] for line in checks if line.startswith("warn ")] == ["warn metrics"], "no metrics dir"
    assert "checks passed" in result.stdout
    assert {"settings", "keys", "postgres", "roles", "redis", "eviction", "sqs", "visibility", "metrics"} <= set(
        lines(result)
    )


def test_doctor_names_each_problem_with_its_fix(
    conn: store.Connection, sqs_endpoint: str, logins: dict[str, str], tmp_path
) -> None:  # type: ignore[no-untyped-def]
    client = sqs.make_client()
    no_dlq = client.call("CreateQueue", {"QueueName": f"no-dlq-{uuid.uuid4().hex[:8]}"})["QueueUrl"]
    (tmp_path / "file").write_text("")
    env = worker_env(
        no_dlq,
        sqs_endpoint,
        DATABASE_URL=logins["analyst"],
        SQS_VISIBILITY_TIMEOUT="60",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "file"),
    )
    result = etl("doctor", **env)
    assert result.returncode == 1
    found = lines(result)
    assert found["roles"].startswith("FAIL") and "GRANT etl_writer TO t_analyst_" in found["roles"]
    assert found["sqs"].startswith("FAIL") and "dead-letter" in found["sqs"]
    assert found["visibility"].startswith("FAIL") and "SQS_VISIBILITY_TIMEOUT=120" in found["visibility"]
    assert found["metrics"].startswith("FAIL") and "not a directory" in found["metrics"]
    assert found["postgres"].startswith("ok") and found["redis"].startswith("ok")
    assert result.stdout.splitlines()[-1] == "4 of 9 checks failed"


def test_doctor_reports_a_bad_setting_and_an_unreachable_service(sqs_endpoint: str) -> None:
    result = etl("doctor", ETL_CHUNKSIZE="10")
    assert result.returncode == 1 and "did you mean ETL_CHUNK_SIZE?" in result.stdout
    result = etl(
        "doctor",
        **worker_env(f"{sqs_endpoint}/123456789012/q", sqs_endpoint, CELERY_BROKER_URL="redis://127.0.0.1:1/0"),
    )
    assert (
        result.returncode == 1 and "FAIL redis: Redis PING at 127.0.0.1:1/0 failed: connection refused" in result.stdout
    )
    result = etl("doctor", **worker_env(f"{sqs_endpoint}/123456789012/q", sqs_endpoint, ETL_PAYLOAD_KEY="x" * 44))
    assert result.returncode == 1 and lines(result)["keys"].startswith("FAIL keys: ETL_PAYLOAD_KEY"), result.stdout


def test_a_refusal_names_the_role_the_command_needs(conn: store.Connection, logins: dict[str, str]) -> None:
    result = etl("stats", DATABASE_URL=logins["analyst"])
    assert result.returncode == 2
    assert "42501" in result.stderr and "`etl stats` needs the tables' owner" in result.stderr
    result = etl("report", DATABASE_URL=logins["etl_writer"])
    assert result.returncode == 2 and "`etl report` needs the analyst role" in result.stderr
