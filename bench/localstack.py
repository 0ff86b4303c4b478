"""LocalStack (host mode): bare stock-boto3 receive+delete loops vs the real pipeline, as rates.

LocalStack closes the connection after every call, so this section measures rates, never CPU.
"""

import multiprocessing
import os
import shutil
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.context import AWS_ENV, Processes, base_env, fresh, log, rows
from etl.demo import processes
from etl.ops import samples
from etl.sources.sqs import queue as sqs

LOCALSTACK_VENV = processes.LOCALSTACK_VENV
LOCALSTACK_PINS = [
    "localstack-core[base-runtime]==2026.3.0",
    "cbor2<6",
    "pyopenssl<26",
    "cryptography>=45.0.7,<47",
    "service_identity",
]


def python313() -> str | None:
    root = (
        subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
        if shutil.which("pyenv")
        else ""
    )
    for candidate in [f"{root}/versions/3.13.0/bin/python3", shutil.which("python3.13") or ""]:
        if candidate and Path(candidate).exists():
            return candidate
    return None


def ensure_localstack() -> str | None:
    """Path of LocalStack's python, installing it if needed; None (with the reason logged) if impossible."""
    python = LOCALSTACK_VENV / "bin" / "python"
    if python.exists():
        return str(python)
    py313 = python313()
    if not py313:
        log("LocalStack section SKIPPED: it needs Python 3.13 (none found via pyenv or PATH)")
        return None
    log(f"installing LocalStack into {LOCALSTACK_VENV} (a few minutes, once)...")
    subprocess.run([py313, "-m", "venv", str(LOCALSTACK_VENV)], check=True)
    subprocess.run([str(LOCALSTACK_VENV / "bin" / "pip"), "install", "-q", *LOCALSTACK_PINS], check=True)
    return str(python)


def load(queue: sqs.Queue, bodies: list[str], threads: int = 8) -> float:
    started = time.monotonic()
    slices = [bodies[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(queue.send, slices))
    return len(bodies) / (time.monotonic() - started)


def _drain_process(url: str, threads: int) -> tuple[int, float]:
    """One process of the raw drain: ``threads`` loops of ReceiveMessage(10) + DeleteMessageBatch."""
    client = sqs.make_client(max_pool=threads + 2)
    done = 0
    last = time.time()
    lock = threading.Lock()

    def loop() -> None:
        nonlocal done, last
        empty = 0
        while empty < 3:
            got = client.call("ReceiveMessage", {"QueueUrl": url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 1}).get(
                "Messages", []
            )
            if not got:
                empty += 1
                continue
            empty = 0
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]
            client.call("DeleteMessageBatch", {"QueueUrl": url, "Entries": entries})
            with lock:
                done += len(got)
                last = time.time()

    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(loop) for _ in range(threads)]:
            f.result()
    return done, last


def raw_drain(queue: sqs.Queue, processes: int, threads: int) -> float:
    """Messages/s of bare receive+delete loops: as many processes and calls in flight as the pipeline."""

    started = time.time()
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        results = pool.starmap(_drain_process, [(queue.url, threads)] * processes)
    # until the last delete: the empty polls that end each loop are not draining time
    return sum(n for n, _ in results) / (max(t for _, t in results) - started)


def localstack(messages: int, receivers: int) -> dict[str, Any] | None:
    python = ensure_localstack()
    if python is None:
        return None
    server = processes.LocalStack(python)
    endpoint = server.endpoint
    try:
        os.environ.update({**AWS_ENV, "AWS_ENDPOINT_URL_SQS": endpoint})
        bodies = samples.generate(messages, seed=11)
        queue = sqs.Queue(sqs.create_queue(f"bench-raw-{uuid.uuid4().hex[:6]}"), threads=receivers)
        log(f"localstack: loading {messages} messages...")
        load_rate = load(queue, bodies)
        log(f"localstack: raw drain, 2 processes x {receivers} receivers...")
        raw = raw_drain(queue, 2, receivers)

        queue = sqs.Queue(sqs.create_queue(f"bench-pipe-{uuid.uuid4().hex[:6]}"), threads=receivers)
        load(queue, bodies)
        conn = fresh()
        env = base_env(
            **AWS_ENV, AWS_ENDPOINT_URL_SQS=endpoint, SQS_QUEUE_URL=queue.url, ETL_SQS_THREADS=str(receivers)
        )
        procs = Processes()
        log("localstack: pipeline drain...")
        try:
            procs.worker(env, 2)
            procs.beat(env)
            while queue.depth()["visible"] >= len(bodies):  # from the first receive on
                time.sleep(0.05)
            started = time.monotonic()
            expected = len(bodies)
            deadline = started + 600
            while rows(conn) < expected and time.monotonic() < deadline:
                time.sleep(0.2)
            pipeline_rate = rows(conn) / (time.monotonic() - started)
        finally:
            procs.stop()
            conn.close()
        return {
            "messages": messages,
            "receivers": receivers,
            "load_msg_per_s": round(load_rate),
            "raw_drain_msg_per_s": round(raw),
            "pipeline_msg_per_s": round(pipeline_rate),
            "ratio": round(pipeline_rate / raw, 3),
        }
    finally:
        server.stop()
