"""`make bench` step `steady` (issue 24): CPU per message and end-to-end latency at the rates
production sees, at the default settings, each next to a bare stock-boto3 loop at the same rate.

For each load (10%, 50%, 90% of the capacity measured in the same run, and saturated) the
stand-in's queue fills at that rate (SentTimestamp = when the message is due). The pipeline is
the real worker (2 processes, lean client) + beat with the default fetch settings
(ETL_FETCH_INTERVAL, ETL_FETCH_SECONDS, ETL_CHUNK_LINGER ...); after a warm-up its CPU (worker
tree + beat) is counted over a window, per committed message, and latency p50/p99 is read as
operators read it (the workers' per-minute counts, as `etl stats` shows).

The bare loop is what a user would write for that rate: the fewest threads that keep up (one
per 250 msg/s; a second process over 2,000 msg/s), each ReceiveMessage(10, long poll) + DeleteMessageBatch on stock boto3, in a
process of its own, its CPU counted over the same length of window. Saturated, it is the burst
loop of the capacity step (2 processes x 8 threads, short polls, a full queue).
"""

import math
import os
import time
from collections.abc import Callable
from typing import Any

import redis

from bench import context, profile
from bench.context import Processes, fresh, rows
from bench.cpu import CpuMeter, StandIn, bare_loop
from etl import settings
from etl.model import latency
from etl.worker.coordination import LATENCY, Coordinator

FRACTIONS = (0.1, 0.5, 0.9)
PROCESSES = 2
WARM_UP = 10.0  # seconds after the first fetch before the window opens
PROCESS_RATE = 2000  # msg/s one bare stock-boto3 process keeps up with, with room to spare
THREAD_RATE = 250  # msg/s one bare long-polling thread keeps up with (a cycle of two 15 ms calls, ~75% full)


def defaults_env(env: Callable[..., dict[str, str]]) -> dict[str, str]:
    """The stand-in's environment with the fetch settings at their defaults (the bench's other
    steps run short fetches so that each run starts quickly)."""
    d = settings.load({})
    return env(ETL_FETCH_INTERVAL=str(d.fetch_interval), ETL_FETCH_SECONDS=str(d.fetch_seconds))


def bare_at(standin: StandIn, rate: float | None, seconds: float) -> dict[str, Any]:
    """The bare stock-boto3 loop draining a queue that fills at ``rate`` (None: a full queue)."""
    os.environ.update({**context.AWS_ENV, "AWS_ENDPOINT_URL_SQS": standin.endpoint})
    url = standin.queue_url("bare")
    if rate is None:
        standin.reset()
        return bare_loop(url, 2, 8, seconds, "boto3")
    procs = 1 if rate <= PROCESS_RATE else 2  # stock boto3 needs a core per ~2,500 msg/s
    threads = max(1, math.ceil(rate / THREAD_RATE / procs))
    standin.reset(rate=rate)
    return bare_loop(url, procs, threads, seconds, "boto3", wait_seconds=20)


def pipeline_at(
    standin: StandIn, env: dict[str, str], rate: float | None, seconds: float, profile_seconds: float = 0
) -> dict[str, Any]:
    """The pipeline's CPU per message, calls per message and latency at ``rate`` (None: saturated);
    with ``profile_seconds``, then where its CPU goes at that rate (py-spy, after the measured
    window, so the sampling costs nothing in it)."""
    conn = fresh()
    standin.reset(0)
    procs = Processes()
    try:
        # The queue starts filling before the worker starts (the stand-in cannot end a long poll
        # early when filling starts later, as SQS would); the warm-up covers start-up and its backlog.
        standin.reset(None, rate=rate)
        worker = procs.worker(env, PROCESSES)
        beat = procs.beat(env)
        coordinator = Coordinator(context.BROKER_URL)
        deadline = time.monotonic() + 120
        while not any(k.startswith("fetch:") for k in coordinator.heartbeats()):  # worker and beat up
            if time.monotonic() > deadline:
                raise RuntimeError(f"steady run: no fetch ran; see {procs.logdir}")
            time.sleep(0.2)
        time.sleep(WARM_UP)  # pool processes busy, connections open, the start-up backlog drained
        redis.Redis.from_url(context.BROKER_URL).delete(*_latency_keys())  # the warm-up does not count
        meter = CpuMeter(worker.pid, beat.pid)
        meter.start()
        calls0 = sum(standin.stats()["calls"].values())
        r0, t0 = rows(conn), time.monotonic()
        time.sleep(seconds)
        r1, t1 = rows(conn), time.monotonic()
        cpu = meter.seconds()
        calls = sum(standin.stats()["calls"].values()) - calls0
        lat = latency.summary(coordinator.latencies(5), 5)
        n = max(1, r1 - r0)
        stages = profile.record([worker.pid, beat.pid], profile_seconds, procs.logdir) if profile_seconds else None
        return {
            "profile": stages and {k: round(v, 3) for k, v in stages.items()},
            "msg_per_s": round((r1 - r0) / (t1 - t0)),
            "messages": r1 - r0,
            "cpu_us_per_message": round(cpu / n * 1e6, 1),
            "calls_per_message": round(calls / n, 3),
            "p50_s": lat["p50_s"],
            "p99_s": lat["p99_s"],
            "latency_messages": lat["messages"],
        }
    finally:
        procs.stop()
        conn.close()


def measure(
    standin: StandIn, env: Callable[..., dict[str, str]], capacity: float, seconds: float
) -> list[dict[str, Any]]:
    """One row per load: the pipeline next to the bare loop at the same rate, and their ratio."""
    out = []
    run_env = defaults_env(env)
    for fraction in (*FRACTIONS, None):
        rate = None if fraction is None else max(1.0, capacity * fraction)
        # where the CPU goes at the everyday load (issue 24 asks for it): profiled at 10%
        ours = pipeline_at(standin, run_env, rate, seconds, profile_seconds=seconds if fraction == FRACTIONS[0] else 0)
        context.log(f"   pipeline at {fraction or 'saturated'}: {ours}")
        bare = bare_at(standin, rate, seconds)
        out.append(
            {
                "load": "saturated" if fraction is None else f"{fraction:.0%}",
                "rate_msg_per_s": None if rate is None else round(rate),
                "pipeline": ours,
                "bare": bare,
                "ratio": round(ours["cpu_us_per_message"] / max(0.1, bare["cpu_us_per_message"]), 3),
            }
        )
        context.log(f"   steady {out[-1]['load']}: {out[-1]}")
    return out


def flatness(standin: StandIn, env: Callable[..., dict[str, str]], capacity: float, seconds: float) -> dict[str, Any]:
    """How flat the pipeline's CPU per message is across load: its cost at 10% of capacity over
    its cost saturated, from runs in the order 10%, saturated, saturated, 10% (the means of
    each). ``measure`` runs the two loads minutes apart, and this machine's speed drifts by up
    to a third within minutes: a drift between them moved that ratio by as much as the target's
    margin (1.59x and 2.07x for the same code). In this order a steady drift cancels out."""
    run_env = defaults_env(env)
    low_rate = max(1.0, capacity * FRACTIONS[0])
    runs = []
    for rate in (low_rate, None, None, low_rate):
        ours = pipeline_at(standin, run_env, rate, seconds)
        context.log(f"   flatness, {'saturated' if rate is None else '10%'}: {ours['cpu_us_per_message']} µs/msg")
        runs.append({"load": "saturated" if rate is None else "10%", "cpu_us_per_message": ours["cpu_us_per_message"]})
    low = [r["cpu_us_per_message"] for r in runs if r["load"] == "10%"]
    sat = [r["cpu_us_per_message"] for r in runs if r["load"] == "saturated"]
    return {
        "runs": runs,
        "low_us": round(sum(low) / len(low), 1),
        "saturated_us": round(sum(sat) / len(sat), 1),
        "ratio": round(sum(low) / max(0.1, sum(sat)), 3),
    }


def _latency_keys() -> list[str]:
    now = int(time.time() // 60)
    return [f"{LATENCY}{m}" for m in range(now - 60, now + 2)]
