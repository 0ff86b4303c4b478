"""`make bench`: throughput, cost and memory of the pipeline, each against a limit measured in
the same run (these machines are noisy: only ratios within one run mean anything).

Sections (see README "Performance"):
 1. LocalStack (host mode): raw ReceiveMessage+DeleteMessageBatch drain vs the real pipeline.
 2. Capacity through an SQS stand-in (15 ms per call, no CPU): 1, 2, 3 worker processes and a
    small grid of chunk size x SQS threads.
 3. Write stage: the pipeline's own write path vs COPY + INSERT ON CONFLICT in 10,000-row batches.
 4. Cost: SQS calls per message at load; ReceiveMessage calls per minute on an idle queue.
 5. Memory: worker RSS at the start and end of a 200,000-message run.
 6. A naive baseline: receive 10 -> mask -> one INSERT+COMMIT per row -> delete.

    python -m bench.run [--quick] [--skip-localstack]

Writes bench/results.json and bench/throughput.png. Runs on an embedded Postgres and Redis of its own
unless ETL_TEST_DATABASE_URL and ETL_TEST_BROKER_URL name servers (the machine's are never touched).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from bench import profile
from bench.cpu import CpuMeter, StandIn, bare_loop
from bench.report import plot, stage_table, table, verdicts
from etl import embedded, processes, records, samples, sealing, settings, sqs, store, vault
from etl.masking import Masker
from etl.store import ingest

# The run's servers: yours when ETL_TEST_DATABASE_URL / ETL_TEST_BROKER_URL are set, else an
# embedded pair of its own (etl.embedded.for_run); set in main().
DATABASE_URL = ""
BROKER_URL = ""
AWS_ENV = processes.LOCAL_AWS
STANDIN: StandIn  # the run's HTTP SQS stand-in (bench/standin.py), started in main()

HERE = Path(__file__).parent
LOCALSTACK_VENV = processes.LOCALSTACK_VENV
LOCALSTACK_PINS = [
    "localstack-core[base-runtime]==2026.3.0",
    "cbor2<6",
    "pyopenssl<26",
    "cryptography>=45.0.7,<47",
    "service_identity",
]
MASKING_KEY = "bench-masking-key-0123456789abcdefghijkl"
PAYLOAD_KEY = sealing.new_key()
VAULT_PUBLIC_KEY = vault.new_keypair()[1]
BARE_PROCESSES, BARE_THREADS = 2, 8  # the bare loop: as many calls in flight as LocalStack's raw drain
PROFILE_SECONDS = 20


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def base_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": DATABASE_URL,
        "CELERY_BROKER_URL": BROKER_URL,
        "ETL_MASKING_KEY": MASKING_KEY,
        "ETL_PAYLOAD_KEY": PAYLOAD_KEY,
        "ETL_FETCH_INTERVAL": "1",
        "ETL_FETCH_SECONDS": "5",
        "ETL_BEAT_SCHEDULE_FILE": f"/tmp/bench-beat-{os.getpid()}",
        **extra,
    }


def fresh() -> store.Connection:
    redis.Redis.from_url(BROKER_URL).flushdb()
    return embedded.fresh_schema(DATABASE_URL)


def rows(conn: store.Connection) -> int:
    """Messages processed so far: rows plus rejections."""
    return int(
        store.query(conn, "SELECT (SELECT count(*) FROM user_logins) + (SELECT count(*) FROM rejected_messages)")[0][0]
    )


def rss_kb(pid: int) -> int:
    """Resident memory of a process and its children, in KiB."""
    total = 0
    pids = [pid] + [
        int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    ]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class Processes:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logdir = Path(f"/tmp/bench-logs-{os.getpid()}")
        self.logdir.mkdir(exist_ok=True)

    def worker(self, env: dict[str, str], concurrency: int) -> subprocess.Popen[bytes]:
        cmd = processes.celery_command("worker")
        cmd = [a if not a.startswith("--concurrency") else f"--concurrency={concurrency}" for a in cmd]
        cmd = [a if not a.startswith("--loglevel") else "--loglevel=WARNING" for a in cmd]
        return self._spawn(cmd, env, "worker")

    def beat(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return self._spawn(processes.celery_command("beat"), env, "beat")

    def _spawn(self, cmd: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        proc = processes.spawn(cmd, env, self.logdir / f"{name}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            processes.stop(proc, grace=20)
        self.procs = []


# ---- 2, 4, 5: through the stand-in -----------------------------------------------------------


def standin_env(**extra: str) -> dict[str, str]:
    return base_env(**AWS_ENV, AWS_ENDPOINT_URL_SQS=STANDIN.endpoint, SQS_QUEUE_URL=STANDIN.queue_url("bench"), **extra)


def standin_run(
    concurrency: int,
    chunk: int,
    threads: int,
    seconds: float,
    total: int | None = None,
    sample_rss_at: int | None = None,
    vault: bool = False,
    client: str = "lean",
    profile_seconds: float = 0,
) -> dict[str, Any]:
    """Steady-state msg/s and CPU per message of the real worker + beat on the HTTP stand-in."""
    conn = fresh()
    STANDIN.reset(total)
    env = standin_env(
        ETL_CHUNK_SIZE=str(chunk),
        ETL_SQS_THREADS=str(threads),
        ETL_SQS_CLIENT=client,
        **({"ETL_VAULT_PUBLIC_KEY": VAULT_PUBLIC_KEY} if vault else {}),
    )
    procs = Processes()
    result: dict[str, Any] = {
        "client": client,
        "processes": concurrency,
        "chunk": chunk,
        "threads": threads,
        "vault": vault,
    }
    try:
        worker = procs.worker(env, concurrency)
        beat = procs.beat(env)
        warm = sample_rss_at or 2 * chunk * concurrency
        deadline = time.monotonic() + 120
        while rows(conn) < warm:
            if time.monotonic() > deadline:
                raise RuntimeError(f"stand-in run made no progress; see {procs.logdir}")
            time.sleep(0.2)
        time.sleep(1)  # past start-up: pool processes forked, connections open
        if total is None:
            STANDIN.reset()  # a timed window; a fixed-total run counts every call from the start
        meter = CpuMeter(worker.pid, beat.pid)
        meter.start()
        standin_cpu0 = STANDIN.cpu()
        r0, t0 = rows(conn), time.monotonic()
        result["rss_start_kb"] = rss_kb(worker.pid)
        if total is None:
            time.sleep(seconds)
        else:
            while rows(conn) < total:
                time.sleep(0.5)
        r1, t1 = rows(conn), time.monotonic()
        cpu = meter.seconds()
        standin_cpu = STANDIN.cpu() - standin_cpu0
        if profile_seconds:
            result["profile"] = profile.record([worker.pid, beat.pid], profile_seconds, procs.logdir)
        result["rss_end_kb"] = rss_kb(worker.pid)
        calls = STANDIN.stats()["calls"]
        result["msg_per_s"] = round((r1 - r0) / (t1 - t0))
        result["rows_measured"] = r1 - r0
        result["cpu_us_per_message"] = round(cpu / max(1, r1 - r0) * 1e6, 1)
        result["standin_cpu_us_per_message"] = round(standin_cpu / max(1, r1 - r0) * 1e6, 1)
        result["calls"] = calls
        counted = total if total is not None else r1 - r0
        result["calls_per_message"] = round(sum(calls.values()) / max(1, counted), 4)
    finally:
        procs.stop()
        conn.close()
    return result


def idle_receives(seconds: float) -> dict[str, Any]:
    """ReceiveMessage calls per minute on an empty queue, with the default fetch settings."""
    conn = fresh()
    STANDIN.reset(0)
    env = standin_env()
    for k in ("ETL_FETCH_INTERVAL", "ETL_FETCH_SECONDS"):
        env.pop(k)  # the defaults are what is measured
    procs = Processes()
    try:
        procs.worker(env, 2)
        procs.beat(env)
        time.sleep(10)  # start-up
        STANDIN.reset(0)
        time.sleep(seconds)
        calls = int(STANDIN.stats()["calls"].get("ReceiveMessage", 0))
    finally:
        procs.stop()
        conn.close()
    return {"seconds": seconds, "receive_calls": calls, "per_minute": round(calls * 60 / seconds, 2)}


# ---- 6: the naive baseline ---------------------------------------------------------------------


def naive(seconds: float) -> dict[str, Any]:
    """One process: receive 10 -> mask -> INSERT + COMMIT per row -> delete, via the stand-in."""
    conn = fresh()
    STANDIN.reset()
    os.environ.update({**AWS_ENV, "AWS_ENDPOINT_URL_SQS": STANDIN.endpoint})
    queue = sqs.Queue(STANDIN.queue_url("naive"), sqs.make_client(kind="boto3"), threads=1)
    masker, sealer = Masker(MASKING_KEY), sealing.Sealer([PAYLOAD_KEY])
    done = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        messages = queue.receive(10)
        result = records.transform(messages, masker, sealer)
        for row in result.rows:
            store.write_chunk(conn, records.ChunkResult([row], []))
        for rej in result.rejected:
            store.write_chunk(conn, records.ChunkResult([], [rej]))
        queue.delete(messages)
        done += len(messages)
    elapsed = time.monotonic() - started
    conn.close()
    return {"msg_per_s": round(done / elapsed), "messages": done}


# ---- 3: the write stage --------------------------------------------------------------------------


def write_stage(total: int, chunk: int) -> dict[str, Any]:
    conn = fresh()
    masker, sealer = Masker(MASKING_KEY), sealing.Sealer([PAYLOAD_KEY])
    bodies = samples.generate(1000, seed=5, malformed_rate=0)
    now = int(time.time() * 1000)

    def make_rows(tag: str) -> list[records.LoginRow]:
        msgs = [records.Message(f"{tag}-{i}", "rh", bodies[i % len(bodies)], now) for i in range(total)]
        return records.transform(msgs, masker, sealer).rows

    ours = make_rows("ours")
    started = time.monotonic()
    for i in range(0, len(ours), chunk):
        store.write_chunk(conn, records.ChunkResult(ours[i : i + chunk], []))
    ours_rate = len(ours) / (time.monotonic() - started)

    raw = make_rows("raw")
    cols = "message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date"
    started = time.monotonic()
    for i in range(0, len(raw), 10_000):
        buf = ingest.copy_text(raw[i : i + 10_000])  # the same COPY text our path sends
        with conn, conn.cursor() as cur:
            cur.execute(f"CREATE TEMP TABLE stage ({cols.replace(',', ' text,')} text) ON COMMIT DROP")
            cur.copy_expert(f"COPY stage ({cols}) FROM STDIN", buf)
            cur.execute(
                f"INSERT INTO user_logins ({cols}) SELECT message_id, user_id, device_type, masked_ip, "
                "masked_device_id, locale, app_version::integer, create_date::date FROM stage "
                "ON CONFLICT (message_id) DO NOTHING"
            )
    raw_rate = len(raw) / (time.monotonic() - started)
    conn.close()
    return {
        "rows": total,
        "chunk": chunk,
        "ours_rows_per_s": round(ours_rate),
        "raw_rows_per_s": round(raw_rate),
        "ratio": round(ours_rate / raw_rate, 3),
    }


# ---- 1: LocalStack -------------------------------------------------------------------------------


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
            got = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
            if not got:
                empty += 1
                continue
            empty = 0
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]
            client.delete_message_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]
            with lock:
                done += len(got)
                last = time.time()

    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(loop) for _ in range(threads)]:
            f.result()
    return done, last


def raw_drain(queue: sqs.Queue, processes: int, threads: int) -> float:
    """Messages/s of bare receive+delete loops: as many processes and calls in flight as the pipeline."""
    import multiprocessing

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--skip-localstack", action="store_true")
    parser.add_argument("--only", help="comma-separated steps to run (e.g. vault,write_stage); the table shows those")
    args = parser.parse_args(argv)
    seconds = 8 if args.quick else 15
    res: dict[str, Any] = {
        "machine": {"cores": os.cpu_count()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    defaults = settings.load({})
    chunk, threads = defaults.chunk_size, defaults.sqs_threads

    def bare(kind: str) -> dict[str, Any]:
        os.environ.update({**AWS_ENV, "AWS_ENDPOINT_URL_SQS": STANDIN.endpoint})
        return bare_loop(STANDIN.queue_url("bare"), BARE_PROCESSES, BARE_THREADS, seconds, kind)

    def pair(p: int, profile_seconds: float = 0) -> list[dict[str, Any]]:
        return [
            standin_run(p, chunk, threads, seconds, client=c, profile_seconds=profile_seconds)
            for c in ("boto3", "lean")
        ]

    steps: list[tuple[str, Callable[[], Any]]] = [
        # CPU per message: the bare stock-boto3 loop before and after the pipeline runs (its mean is the
        # yardstick), the bare loop on the lean client (the SQS client's own share), the pipeline on each client
        ("bare_before", lambda: bare("boto3")),
        ("capacity", lambda: [r for p in (1, 2, 3) for r in pair(p)]),
        ("bare_lean", lambda: bare("lean")),
        ("bare_after", lambda: bare("boto3")),
        ("profile", lambda: pair(2, profile_seconds=PROFILE_SECONDS)),
        ("vault", lambda: [standin_run(2, chunk, threads, seconds, vault=v) for v in (False, True)]),
        ("write_stage", lambda: write_stage(20_000 if args.quick else 50_000, chunk)),
        ("naive", lambda: naive(5 if args.quick else 10)),
        ("idle", lambda: idle_receives(30 if args.quick else 60)),
        (
            "memory",
            lambda: standin_run(2, chunk, threads, 0, total=50_000 if args.quick else 200_000, sample_rss_at=10_000),
        ),
    ]
    if not args.skip_localstack:
        steps.insert(0, ("localstack", lambda: localstack(5_000 if args.quick else 20_000, 8)))
    if args.only:
        wanted = set(args.only.split(","))
        steps = [s for s in steps if s[0] in wanted]
    global STANDIN
    STANDIN = StandIn(latency_ms=15, logdir=Path(f"/tmp/bench-logs-{os.getpid()}"))
    res["standin"] = {"endpoint": STANDIN.endpoint, "latency_ms": 15}
    for name, step in steps:
        log(f"== {name}")
        started = time.monotonic()
        res[name] = step()
        log(f"   {json.dumps(res[name])[:300]} ({time.monotonic() - started:.0f}s)")
    STANDIN.stop()
    if args.only:  # a partial run: print its rows, keep the full results file as it is
        print(table(verdicts(res)))
        print(stage_table(res))
        return 0
    if res.get("localstack") is None:
        res["localstack_skipped"] = "skipped (--skip-localstack or no Python 3.13)"
    res["verdicts"] = [{"measure": n, "value": v, "target": t, "ok": ok} for n, v, t, ok in verdicts(res)]
    (HERE / "results.json").write_text(json.dumps(res, indent=2, default=str))
    plot(res["capacity"], HERE / "throughput.png")
    print(table(verdicts(res)))
    print(stage_table(res))
    print(f"\nwrote {HERE / 'results.json'} and {HERE / 'throughput.png'}")
    return 0


def run(argv: list[str] | None = None) -> int:
    global DATABASE_URL, BROKER_URL
    with embedded.for_run("bench-servers-"):
        DATABASE_URL, BROKER_URL = os.environ["ETL_TEST_DATABASE_URL"], os.environ["ETL_TEST_BROKER_URL"]
        return main(argv)


if __name__ == "__main__":
    sys.exit(run())
