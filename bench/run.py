"""`make bench`: throughput, CPU, cost and memory of the pipeline, each against a limit measured
in the same run (these machines are noisy: only ratios within one run mean anything).

Steps (see docs/performance.md):
 1. LocalStack (host mode, bench/localstack.py): bare receive+delete drain vs the real pipeline.
 2. CPU per message through the HTTP SQS stand-in (bench/standin.py, 15 ms per call): a bare
    stock-boto3 receive+delete loop (before and after the pipeline runs) and one on the lean
    client; the real worker + beat on each client with 1, 2, 3 processes (msg/s, CPU µs per
    message of the worker tree + beat, the stand-in's own CPU); a py-spy profile by stage.
 3. Vault on vs off; write stage vs COPY + INSERT ON CONFLICT in 10,000-row batches.
 4. Cost: SQS calls per message at load; ReceiveMessage calls per minute on an idle queue.
 5. Memory: worker RSS at the start and end of a 200,000-message run.
 6. A naive baseline: receive 10 -> mask -> one INSERT+COMMIT per row -> delete (stock boto3).
 7. Steady load (bench/steady.py): CPU per message and latency p50/p99 (SentTimestamp to
    committed row) at 10%, 50%, 90% of the capacity measured in step 2 (`--only steady` measures
    it first) and saturated, at the default fetch settings, each next to a bare loop at that rate;
    then the pipeline alone at 10%, saturated, saturated, 10% for how flat its cost is (`flatness`).

    python -m bench.run [--quick] [--skip-localstack] [--only step,step]

A full run (or one with --skip-localstack) writes bench/results.json and bench/throughput.png;
--quick and --only print their rows and leave both files as they are. About 20 minutes on 2
cores (plus a few the first time, installing LocalStack); logs in /tmp/bench-logs-<pid>/. Runs
on an embedded Postgres and Redis of its own unless ETL_TEST_DATABASE_URL and
ETL_TEST_BROKER_URL name servers (the machine's are never touched).
"""

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import chunk_codec, context, profile, steady
from bench.context import (
    AWS_ENV,
    MASKING_KEY,
    PAYLOAD_KEY,
    VAULT_PUBLIC_KEY,
    Processes,
    base_env,
    fresh,
    log,
    rows,
    rss_kb,
)
from bench.cpu import CpuMeter, StandIn, bare_loop
from bench.localstack import localstack
from bench.report import plot, stage_table, table, verdicts
from etl import settings, store
from etl.crypto import sealing
from etl.crypto.masking import Masker
from etl.demo import embedded
from etl.model import records
from etl.ops import samples
from etl.sources.sqs import queue as sqs
from etl.store import ingest

STANDIN: StandIn  # the run's HTTP SQS stand-in (bench/standin.py), started in main()
HERE = Path(__file__).parent
BARE_PROCESSES, BARE_THREADS = 2, 8  # the bare loop: as many calls in flight as LocalStack's raw drain
PROFILE_SECONDS = 20


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


STEPS = [
    "localstack",
    "bare_before",
    "capacity",
    "bare_lean",
    "bare_after",
    "profile",
    "vault",
    "write_stage",
    "naive",
    "idle",
    "steady",
    "flatness",
    "codec",
    "memory",
]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run (results.json is kept)")
    parser.add_argument("--skip-localstack", action="store_true")
    parser.add_argument(
        "--only",
        help=f"comma-separated steps to run, of: {', '.join(STEPS)} (the table shows those; results.json is kept)",
    )
    args = parser.parse_args(argv)
    if args.only is not None and not args.only.strip(", "):  # --only '' would run every step, --only , none
        parser.error(f"--only: name at least one step, of: {', '.join(STEPS)}")
    unknown = set((args.only or "").split(",")) - set(STEPS) - {""}
    if unknown:
        parser.error(f"--only: no step {', '.join(sorted(unknown))}; the steps are {', '.join(STEPS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
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

    def capacity() -> float:
        """Measured capacity, 2 processes, lean client: the capacity step's, or measured now."""
        runs = [r for r in res.get("capacity", []) if r["client"] == "lean" and r["processes"] == 2]
        if not runs:  # a partial run (--only steady,flatness): measured once, for both steps
            res["capacity"] = runs = [standin_run(2, chunk, threads, seconds)]
        return float(runs[0]["msg_per_s"])

    steps: list[tuple[str, Callable[[], Any]]] = [
        # CPU per message: the bare stock-boto3 loop before and after the pipeline runs (its mean is the
        # yardstick), the bare loop on the lean client (the SQS client's own share), the pipeline on each client
        ("bare_before", lambda: bare("boto3")),
        ("capacity", lambda: [r for p in (1, 2, 3) for r in pair(p)]),
        ("bare_lean", lambda: bare("lean")),
        ("bare_after", lambda: bare("boto3")),
        ("profile", lambda: pair(2, profile_seconds=PROFILE_SECONDS)),
        # off, on, on, off: one run each way is at the mercy of a drift in the machine's speed
        ("vault", lambda: [standin_run(2, chunk, threads, seconds, vault=v) for v in (False, True, True, False)]),
        ("write_stage", lambda: write_stage(20_000 if args.quick else 50_000, chunk)),
        ("naive", lambda: naive(5 if args.quick else 10)),
        ("idle", lambda: idle_receives(30 if args.quick else 60)),
        # issue 24: CPU per message and latency at 10/50/90% of capacity and saturated, at the
        # default fetch settings, each next to a bare loop at the same rate
        ("steady", lambda: steady.measure(STANDIN, standin_env, capacity(), 2 * seconds)),
        # issue 24's flatness (10% / saturated) from runs in the order 10%, sat, sat, 10%
        ("flatness", lambda: steady.flatness(STANDIN, standin_env, capacity(), 2 * seconds)),
        # issue 20: broker bytes per body byte (<= 1.5 for any body) and the chunk codec's CPU per message
        ("codec", lambda: chunk_codec.measure(chunk, 5 if args.quick else 20)),
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
    assert [name for name, _ in steps if name not in STEPS] == [], "STEPS lists every step"
    global STANDIN
    STANDIN = StandIn(latency_ms=15, logdir=Path(f"/tmp/bench-logs-{os.getpid()}"))
    res["standin"] = {"endpoint": STANDIN.endpoint, "latency_ms": 15}
    try:
        for name, step in steps:
            log(f"== {name}")
            started = time.monotonic()
            res[name] = step()
            log(f"   {json.dumps(res[name])[:300]} ({time.monotonic() - started:.0f}s)")
    finally:
        STANDIN.stop()
    if args.only or args.quick:  # a partial or smoke run: print its rows, keep the tracked files as they are
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
    parse(argv)  # --help and a misspelt step answer before any server starts
    # A SIGTERM (a CI timeout, kill) unwinds like Ctrl-C: the finally blocks stop the run's
    # pipeline, stand-in, embedded Postgres and Redis instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with embedded.for_run("bench-servers-"):
        context.DATABASE_URL = os.environ["ETL_TEST_DATABASE_URL"]
        context.BROKER_URL = os.environ["ETL_TEST_BROKER_URL"]
        return main(argv)


if __name__ == "__main__":
    sys.exit(run())
