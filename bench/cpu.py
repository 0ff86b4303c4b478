"""CPU accounting for the benchmark: processes' CPU seconds from /proc, the HTTP stand-in's
control calls, and the bare stock-boto3 receive+delete loop every CPU figure is compared with.

CPU is counted per process (user + system, from /proc/<pid>/stat), so the servers the pipeline
talks to (the stand-in, Postgres, Redis) are never in the pipeline's figure.
"""

import http.client
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from etl.demo import processes
from etl.sources.sqs import queue as sqs

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15 of stat)


def tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    out = [pid]
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for child in children:
        out += tree(int(child))
    return out


class CpuMeter:
    """CPU seconds spent by a set of processes (and their descendants) since ``start()``."""

    def __init__(self, *roots: int) -> None:
        self.roots = roots
        self.start_cpu: dict[int, float] = {}

    def start(self) -> None:
        self.start_cpu = {p: cpu_seconds(p) for r in self.roots for p in tree(r)}

    def seconds(self) -> float:
        now = {p: cpu_seconds(p) for r in self.roots for p in tree(r)}
        # a process that started during the window counts from zero; one that ended is lost (none should)
        return sum(now[p] - self.start_cpu.get(p, 0.0) for p in now)


class StandIn:
    """The HTTP stand-in (bench/standin.py) as a process of its own, and its control calls."""

    def __init__(self, latency_ms: float = 15, logdir: Path = Path("/tmp")) -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        self.port = processes.free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "bench.standin", "--port", str(self.port), "--latency-ms", str(latency_ms)]
        self.proc = processes.spawn(cmd, os.environ, logdir / "standin.log")
        deadline = time.monotonic() + 20
        while not processes.port_in_use(self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the stand-in did not start; see {logdir / 'standin.log'}")
            time.sleep(0.1)

    def queue_url(self, name: str) -> str:
        return f"{self.endpoint}/000000000000/{name}"

    def _control(self, target: str, body: dict[str, Any]) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("POST", "/", json.dumps(body), {"X-Amz-Target": target})
        answer: dict[str, Any] = json.loads(conn.getresponse().read())
        conn.close()
        return answer

    def reset(self, total: int | None = None, rate: float | None = None) -> None:
        """Zero the counters; ``total`` messages in all, arriving at ``rate`` per second if given."""
        self._control("Bench.Reset", {"total": total, "rate": rate})

    def stats(self) -> dict[str, Any]:
        return self._control("Bench.Stats", {})

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        processes.stop(self.proc, grace=5)


# ---- the bare stock-boto3 loop --------------------------------------------------------------------


def _bare_process(url: str, threads: int, seconds: float, kind: str, wait: int = 0) -> tuple[int, float, float]:
    """One process: ``threads`` loops of ReceiveMessage(10, WaitTimeSeconds ``wait``) +
    DeleteMessageBatch for ``seconds``.
    Returns (messages, CPU seconds, wall seconds) of the measured window (after a warm-up)."""
    client = sqs.make_client(max_pool=threads + 2, kind=kind)
    done = 0
    lock = threading.Lock()
    stop = threading.Event()

    def loop() -> None:
        nonlocal done
        while not stop.is_set():
            got = client.call(
                "ReceiveMessage", {"QueueUrl": url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": wait}
            ).get("Messages", [])
            if got:
                entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]
                client.call("DeleteMessageBatch", {"QueueUrl": url, "Entries": entries})
            with lock:
                done += len(got)

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(loop) for _ in range(threads)]
        time.sleep(2)  # warm-up: connections, botocore's loaders
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu0, n0, t0 = usage.ru_utime + usage.ru_stime, done, time.monotonic()
        time.sleep(seconds)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu1, n1, t1 = usage.ru_utime + usage.ru_stime, done, time.monotonic()
        stop.set()
        for f in futures:
            f.result()
    return n1 - n0, cpu1 - cpu0, t1 - t0


def bare_loop(
    url: str, procs: int, threads: int, seconds: float, kind: str = "boto3", wait_seconds: int = 0
) -> dict[str, Any]:
    """Messages/s and CPU µs per message of bare receive+delete loops (stock boto3 by default;
    short polls unless ``wait_seconds``)."""
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        results = pool.starmap(_bare_process, [(url, threads, seconds, kind, wait_seconds)] * procs)
    messages = sum(r[0] for r in results)
    cpu = sum(r[1] for r in results)
    wall = max(r[2] for r in results)
    return {
        "client": kind,
        "processes": procs,
        "threads": threads,
        "messages": messages,
        "msg_per_s": round(messages / wall),
        "cpu_us_per_message": round(cpu / max(1, messages) * 1e6, 1),
    }
