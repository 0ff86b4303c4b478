"""``etl demo``: the whole pipeline on this machine, from an empty queue to a summary.

Starts an embedded SQS server (moto), applies migrations, seeds events, runs a real Celery
worker, beat and Flower as separate processes until every seeded message is a row or a
rejection and the queue is empty, prints a summary and stops everything it started.
"""

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from etl import db, samples, sealing, settings, sqs, vault
from etl.cli import send_with_progress

SHARED_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "sample_logins.json.gz"
LOG_DIR = Path(".demo")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# The one definition of how each process is started. docker-compose.yml runs the same argument
# lists (a unit test holds them equal); what differs between places is only the environment
# (ETL_BEAT_SCHEDULE_FILE, FLOWER_ADDRESS, FLOWER_PORT, ...).
COMMANDS = {
    "worker": ["celery", "-A", "etl", "worker", "--loglevel=INFO", "--concurrency=2"],
    "beat": ["celery", "-A", "etl", "beat", "--loglevel=INFO"],
    "flower": ["celery", "-A", "etl", "flower", "--max_tasks=10000"],
}


def celery_command(kind: str) -> list[str]:
    """COMMANDS[kind], run with this interpreter (so the .venv need not be on PATH)."""
    return [sys.executable, "-m", *COMMANDS[kind]]


def spawn(cmd: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a process with its output in ``log_path``, in its own process group."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes], grace: float = 15) -> None:
    """SIGTERM (a warm shutdown for Celery), then SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def demo_env() -> tuple[dict[str, str], list[str]]:
    """The environment for the demo's processes, with throwaway keys where none are set."""
    env = dict(os.environ)
    notes = []
    if not env.get("ETL_MASKING_KEY"):
        env["ETL_MASKING_KEY"] = secrets.token_urlsafe(48)
        notes.append("ETL_MASKING_KEY not set: using a throwaway key for this demo (tokens will differ next run)")
    if not env.get("ETL_PAYLOAD_KEY"):
        env["ETL_PAYLOAD_KEY"] = sealing.new_key()
        notes.append("ETL_PAYLOAD_KEY not set: using a throwaway key for this demo")
    if not env.get("ETL_VAULT_KEY") and not env.get("ETL_VAULT_KEY_FILE"):
        env["ETL_VAULT_KEY"] = vault.new_master_key()
        notes.append("ETL_VAULT_KEY not set: using a throwaway vault master key for this demo")
    if not env.get("FLOWER_BASIC_AUTH"):
        env["FLOWER_BASIC_AUTH"] = f"demo:{secrets.token_urlsafe(12)}"
        user, _, password = env["FLOWER_BASIC_AUTH"].partition(":")
        notes.append(f"FLOWER_BASIC_AUTH not set: Flower asks for user {user!r}, throwaway password {password!r}")
    env.setdefault("AWS_ACCESS_KEY_ID", "demo")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env.setdefault("ETL_FETCH_INTERVAL", "2")
    env.setdefault("ETL_FETCH_SECONDS", "2")  # short fetch runs, so the demo stops quickly
    env.setdefault("ETL_BEAT_SCHEDULE_FILE", str(LOG_DIR / "celerybeat-schedule"))
    env.setdefault("FLOWER_ADDRESS", "127.0.0.1")
    return env, notes


def run(file: Path | None = None, timeout: float = 180, flower_port: int = 5555) -> int:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    env, notes = demo_env()
    env["FLOWER_PORT"] = str(flower_port)
    for note in notes:
        print(f"note: {note}")
    LOG_DIR.mkdir(exist_ok=True)

    with ExitStack() as stack:
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        stack.callback(server.stop)
        env["AWS_ENDPOINT_URL_SQS"] = f"http://127.0.0.1:{port}"
        os.environ.update(
            {
                k: env[k]
                for k in ("AWS_ENDPOINT_URL_SQS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
            }
        )
        queue_url = sqs.create_queue("login-queue")
        env["SQS_QUEUE_URL"] = queue_url
        print(f"sqs: embedded moto server at {env['AWS_ENDPOINT_URL_SQS']}, queue {queue_url}")

        config = settings.load(env)
        conn = db.connect(config.database_url)
        stack.callback(conn.close)
        applied = db.migrate(conn)
        print(
            "postgres: schema "
            + ("migrated" if applied else "up to date")
            + f" ({settings._redact(config.database_url)})"
        )

        if file is None and SHARED_SAMPLES.exists():
            file = SHARED_SAMPLES
        bodies = samples.read_bodies(file) if file else samples.generate(100, seed=1)
        print(f"seeding {len(bodies)} events from {file or 'the generator (seed 1)'}")
        queue = sqs.Queue(queue_url)
        ids = send_with_progress(queue, bodies)

        started = time.monotonic()
        procs = {}
        for kind in ("worker", "beat") + (("flower",) if flower_port else ()):
            if kind == "flower" and port_in_use(flower_port):
                print(f"flower: port {flower_port} is busy, skipping Flower (use --flower-port)")
                continue
            procs[kind] = spawn(celery_command(kind), env, LOG_DIR / f"{kind}.log")
            stack.callback(stop, procs[kind])
        flower = f", flower at http://127.0.0.1:{flower_port}" if "flower" in procs else ""
        print(f"celery: worker, beat{flower}; logs in {LOG_DIR}/")

        done = 0
        depth = {"visible": len(ids), "in_flight": 0}
        while time.monotonic() - started < timeout:
            for kind, proc in procs.items():
                if proc.poll() is not None and kind != "flower":
                    print(f"\n{kind} exited with code {proc.returncode}; see {LOG_DIR / (kind + '.log')}")
                    return 1
            result = db.stats(conn, ids)
            done = result["rows"] + result["rejected"]
            depth = queue.depth()
            print(
                f"\rprocessed {done}/{len(ids)}, queue: {depth['visible']} waiting, {depth['in_flight']} in flight   ",
                end="",
                flush=True,
            )
            if done == len(ids) and depth["visible"] == depth["in_flight"] == 0:
                break
            time.sleep(0.5)
        else:
            left = len(ids) - done
            print(f"\ntimed out after {timeout:.0f}s with {left} messages unprocessed; see {LOG_DIR}/worker.log")
            return 1
        elapsed = time.monotonic() - started
        print()
        counts = scrape_metrics(int(env.get("ETL_METRICS_PORT") or 9808), result["rows"])
        details = db.query(
            conn, "SELECT reason, detail FROM rejected_messages WHERE message_id = ANY(%s) ORDER BY reason", (ids,)
        )
        print_summary(result, details, len(ids), elapsed, depth)
        if counts:
            port = int(env.get("ETL_METRICS_PORT") or 9808)
            print(f"metrics    http://127.0.0.1:{port}/metrics: " + ", ".join(f"{k} {v:g}" for k, v in counts.items()))
    return 0


def scrape_metrics(port: int, rows: int, timeout: float = 5) -> dict[str, float]:
    """The worker's main counters from its metrics endpoint (empty if it is not reachable)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    wanted = (
        "etl_rows_written_total",
        "etl_rejected_total",
        "etl_messages_deleted_total",
        "etl_duplicates_skipped_total",
    )
    deadline = time.monotonic() + timeout
    counts: dict[str, float] = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return {}
        counts = {name: 0.0 for name in wanted}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in counts:
                    counts[sample.name] += sample.value
        if counts["etl_rows_written_total"] >= rows:
            break
        time.sleep(0.5)
    return {k.removeprefix("etl_").removesuffix("_total"): v for k, v in counts.items()}


def print_summary(
    result: dict[str, Any], details: list[tuple[Any, ...]], sent: int, elapsed: float, depth: dict[str, int]
) -> None:
    print("=" * 64)
    print(f"sent       {sent} messages")
    print(f"rows       {result['rows']}")
    print(f"rejected   {result['rejected']}")
    for reason, detail in details:
        print(f"             {reason}: {detail}")
    print(
        f"duplicates {result['shared_ip_tokens']} shared ip tokens ({result['rows_with_shared_ip']} rows), "
        f"{result['shared_device_tokens']} shared device tokens ({result['rows_with_shared_device']} rows)"
    )
    print(f"queue      {depth['visible']} waiting, {depth['in_flight']} in flight (empty)")
    print(f"throughput {sent / elapsed:.1f} messages/s ({elapsed:.1f}s from worker start, including start-up)")
    print("=" * 64)
