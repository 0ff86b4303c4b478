"""``etl stats`` and ``etl health``: what the pipeline has done and whether it is making progress
(rows, rejections, latency, the queue's depth or each shard's checkpoint and lag). Parses nothing
but its own flags, prints, and exits 1 where a check fails.
"""

import argparse
import json
import time
from typing import Any

from etl import settings, store
from etl.errors import EtlError
from etl.model import latency, shards
from etl.ops import health, report
from etl.sources.kinesis.fetch import stream_key
from etl.sources.sqs import queue as sqs
from etl.store import streams
from etl.worker.coordination import Coordinator

# etl stats: end-to-end latency percentiles over this many minutes (the workers keep an hour).
LATENCY_MINUTES = 15


def add_stats(sub: Any) -> None:
    """Register ``stats`` on the ``etl`` parser's subparsers."""
    stats = sub.add_parser("stats", help="rows, rejections, and queue depth (or per-shard checkpoint and lag)")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)


def add_health(sub: Any) -> None:
    """Register ``health`` on the ``etl`` parser's subparsers."""
    check = sub.add_parser("health", help="exit 0 if the pipeline (or one worker) makes progress, else 1")
    check.add_argument("--node", help="judge one worker (its Celery hostname, e.g. celery@$HOSTNAME)")
    check.add_argument("--max-idle", type=float, help="seconds without progress that count as stuck (default 300)")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_health)


def cmd_stats(args: argparse.Namespace, s: settings.Settings) -> int:
    with store.connection(s.database_url) as conn:
        result = store.stats(conn)
    try:
        result["latency"] = latency.summary(Coordinator(s.broker_url).latencies(LATENCY_MINUTES), LATENCY_MINUTES)
    except EtlError as exc:
        result["latency"] = {"error": str(exc)}
    if s.source == "kinesis":
        return _print_stream_stats(s, result, args.json)
    try:
        result["queue"] = sqs.Queue(s.sqs_queue_url).depth()
    except EtlError as exc:
        result["queue"] = {"error": str(exc)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 1 if "error" in result["queue"] else 0
    _print_table_stats(result)
    queue = result["queue"]
    if "error" in queue:
        print(f"queue:     unavailable ({queue['error']})")
        return 1
    print(f"queue:     {queue['visible']} waiting, {queue['in_flight']} in flight, {queue['delayed']} delayed")
    return 0


def _print_table_stats(result: dict[str, Any]) -> None:
    print(f"rows:      {result['rows']}")
    print(
        f"rejected:  {result['rejected']}"
        + "".join(f"\n  {n:>6}  {report.printable(r)}" for r, n in result["rejected_by_reason"].items())
    )
    # tokens on more than one row, whoever's (`etl report` counts those shared by several users)
    print(
        f"ip tokens in several rows:     {result['shared_ip_tokens']} (covering {result['rows_with_shared_ip']} rows)"
    )
    print(
        f"device tokens in several rows: {result['shared_device_tokens']} "
        f"(covering {result['rows_with_shared_device']} rows)"
    )
    lat = result["latency"]
    if "error" in lat:
        print(f"latency:   unavailable ({lat['error']})")
    elif lat["messages"]:
        print(
            f"latency:   p50 {lat['p50_s']} s, p99 {lat['p99_s']} s from send to committed row"
            f" ({lat['messages']} messages in the last {lat['window_minutes']} min)"
        )
    else:
        print(f"latency:   no message committed in the last {lat['window_minutes']} min")


def _print_stream_stats(s: settings.Settings, result: dict[str, Any], as_json: bool) -> int:
    """Per shard: checkpoint, lag (MillisBehindLatest at the last read) and checkpoint age."""
    with store.connection(s.database_url) as conn:
        life = streams.current_incarnation(conn, s.kinesis_stream_name)
        key = life.key if life else s.kinesis_stream_name
        result["shards"] = streams.shard_report(conn, key)
    result["stream"] = {
        "name": s.kinesis_stream_name,
        "key": key,
        "incarnation": life.ordinal if life else None,
        "created_at": life.created_at if life else None,
        "previous_created_at": life.previous_created_at if life else None,
    }
    try:
        status = Coordinator(s.broker_url).entries(stream_key(key, "status"))
    except EtlError:
        status = {}
    now = time.time()
    for shard in result["shards"]:
        seen = status.get(shard["shard_id"], {})
        shard["behind_ms"] = seen.get("behind_ms")
        shard["lag_seen_s_ago"] = round(now - seen["at"], 1) if seen.get("at") else None
    if as_json:
        print(json.dumps(result, indent=2))
        return 0
    _print_table_stats(result)
    print(f"stream:    {s.kinesis_stream_name}")
    if life and (line := incarnation_line(life)):
        print(f"  {line}")
    for sh in result["shards"]:
        finished = sh["end"] is not None and shards.key(sh["checkpoint"]) >= shards.key(sh["end"])
        state = "finished" if finished else "open"
        lag = "?" if sh["behind_ms"] is None else f"{sh['behind_ms']} ms behind ({sh['lag_seen_s_ago']}s ago)"
        shard = report.printable(sh["shard_id"])  # from the database; the lag from Redis: both escaped
        print(
            f"  {shard}  checkpoint {sh['checkpoint']}  {state}  lag {report.printable(lag)}  "
            f"checkpoint moved {sh['checkpoint_age_s']}s ago  ranges waiting {sh['ranges_waiting']}"
        )
    return 0


def incarnation_line(life: shards.Incarnation) -> str | None:
    """One line for a stream deleted and re-created under its name (None for its first life)."""
    if life.previous_created_at is None:
        return None
    return (
        f"re-created: this stream was created {_when(life.created_at)}, the one read before it "
        f"{_when(life.previous_created_at)}; read from its start as {report.printable(life.key)} "
        f"(incarnation {life.ordinal})"
    )


def _when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(unix)) + " UTC"


def cmd_health(args: argparse.Namespace, s: settings.Settings) -> int:
    life = None
    try:
        beats = Coordinator(s.broker_url).heartbeats()
        if s.source == "kinesis":  # shards behind the tip, or with records read and not committed
            try:
                with store.connection(s.database_url) as conn:
                    life = streams.current_incarnation(conn, s.kinesis_stream_name)
            except EtlError:
                life = None  # the database's own health is not this check's to judge
            key = life.key if life else s.kinesis_stream_name
            status = Coordinator(s.broker_url).entries(stream_key(key, "status"))
            fresh = max(60.0, 3 * s.fetch_interval)
            recent = [x for x in status.values() if time.time() - float(x.get("at") or 0) < fresh]
            waiting = sum(1 for x in recent if (x.get("behind_ms") or 0) > 0 or x.get("uncommitted"))
            what = "shards behind or uncommitted"
        else:
            waiting, what = sqs.Queue(s.sqs_queue_url).depth()["visible"], "messages"
    except EtlError as exc:  # a verdict too (it cannot judge): the same shape as any other
        if args.json:
            print(json.dumps({"healthy": False, "reasons": [f"cannot check: {exc}"]}))
        else:
            print(f"unhealthy: cannot check: {report.printable(str(exc))}")
        return 1
    verdict = health.assess(
        waiting=waiting,
        heartbeats=beats,
        now=time.time(),
        max_idle=args.max_idle or s.health_max_idle,
        fetch_interval=s.fetch_interval,
        node=args.node,
        waiting_what=what,
    )
    line = incarnation_line(life) if life else None
    if args.json:
        extra = {"stream_incarnation": life.ordinal, "stream_note": line} if life else {}
        print(json.dumps({"healthy": verdict.healthy, "reasons": verdict.reasons, **verdict.facts, **extra}))
    else:
        print("healthy" if verdict.healthy else "unhealthy: " + report.printable("; ".join(verdict.reasons)))
        print("  " + report.printable(", ".join(f"{k}={v}" for k, v in verdict.facts.items())))
        if line:
            print(f"  stream {report.printable(s.kinesis_stream_name)} {line}")
    return 0 if verdict.healthy else 1
