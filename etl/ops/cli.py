"""The ``etl`` command: parses arguments, calls one service or store function, prints.

Subcommands: init, seed, stats, demo, health, rejected, report, reveal, audit, erase,
rotate-masking-key, rotate-vault-key, keygen (``etl --help`` lists them).
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from etl import aws, logs, settings, store
from etl.errors import EtlError, Forbidden
from etl.model import latency, shards
from etl.ops import doctor, health, keygen, officers, report, seeding
from etl.progress import Bar
from etl.sources.kinesis import stream as kinesis
from etl.sources.kinesis.fetch import stream_key
from etl.sources.sqs import queue as sqs
from etl.store import access, streams
from etl.worker.coordination import Coordinator

# etl stats: end-to-end latency percentiles over this many minutes (the workers keep an hour).
LATENCY_MINUTES = 15


def cmd_init(args: argparse.Namespace, s: settings.Settings) -> int:
    with store.connection(s.database_url) as conn:
        applied = store.migrate(conn)
    print("schema: " + ("applied " + "; ".join(applied) if applied else "up to date"))
    if args.roles:
        with store.connection(s.database_url) as conn:
            store.create_roles(conn)
        print("roles: etl_writer, analyst, pii_officer (grant them to login users)")
    if args.create_queue:
        url = sqs.create_queue(sqs.queue_name(s.sqs_queue_url))
        print(f"queue: {url} (dead-letter queue: {sqs.queue_name(url)}-dlq, after 5 receives)")
    if args.create_stream:
        print(f"stream: {s.kinesis_stream_name}: creating where absent, waiting until ACTIVE (up to 60 s)", flush=True)
        created = kinesis.Stream(s.kinesis_stream_name).create(args.shards)
        state = f"created with {args.shards} shards" if created else "already exists (shard count unchanged)"
        print(f"stream: {s.kinesis_stream_name} {state}")
    return 0


def cmd_seed(args: argparse.Namespace, s: settings.Settings) -> int:
    try:
        bodies = seeding.bodies(Path(args.file) if args.file else None, args.count, args.seed)
    except (OSError, ValueError) as exc:
        print(f"etl seed: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    if (args.target or s.source) == "kinesis":
        with Bar("rec") as bar:
            ids = seeding.put(kinesis.Stream(s.kinesis_stream_name), bodies, bar)
        print(f"put {len(ids)} records on stream {s.kinesis_stream_name}")
        return 0
    with Bar("msg") as bar:
        ids = seeding.send(sqs.Queue(s.sqs_queue_url), bodies, bar)
    print(f"sent {len(ids)} messages to {s.sqs_queue_url}")
    return 0


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
    print(f"shared ip tokens:     {result['shared_ip_tokens']} (covering {result['rows_with_shared_ip']} rows)")
    print(f"shared device tokens: {result['shared_device_tokens']} (covering {result['rows_with_shared_device']} rows)")
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


def cmd_rejected_list(args: argparse.Namespace, s: settings.Settings) -> int:
    with store.connection(s.database_url) as conn:
        summary = store.rejected_summary(conn)
    if not summary:
        print("no rejected messages")
        return 0
    print(f"{'reason':<18} {'count':>7} {'replayed':>9}  {'first':<19}  {'last':<19}")
    for reason, count, replayed, first, last, details in summary:
        reason = report.printable(reason)
        print(f"{reason:<18} {count:>7} {replayed:>9}  {first:%Y-%m-%d %H:%M:%S}  {last:%Y-%m-%d %H:%M:%S}")
        for detail in details or []:
            print(f"{'':<20}- {report.printable(detail)}")
    return 0


def cmd_rejected_replay(args: argparse.Namespace, s: settings.Settings) -> int:
    s.require_keys()
    with store.connection(s.database_url) as conn:
        if args.reason is not None:
            reasons = {str(r[0]): int(r[1]) for r in store.rejected_summary(conn)}
            if args.reason not in reasons:
                listed = ", ".join(f"{report.printable(r)} ({n})" for r, n in sorted(reasons.items())) or "none"
                print(
                    f"etl rejected replay: no rejected message has reason {report.printable(args.reason)!r}; "
                    f"the reasons are: {listed}",
                    file=sys.stderr,
                )
                return 2
        if args.dry_run:
            count = len(store.rejected_to_replay(conn, args.reason, args.limit or 10_000_000))
            print(f"would replay {count} rejected messages" + (f" with reason {args.reason}" if args.reason else ""))
            return 0
        replayed, target = seeding.replay_rejected(
            s, conn, args.reason, args.limit, lambda n: print(f"replayed {n} messages", file=sys.stderr)
        )
    print(f"replayed {replayed} rejected messages to {target}; each is recorded in rejected_replays")
    return 0


def cmd_report(args: argparse.Namespace, s: settings.Settings) -> int:
    with store.connection(s.database_url) as conn:
        data = store.report(conn, args.limit)
    print(report.render(data))
    if args.png:
        report.chart(data["per_day"], args.png)
        print(f"\nwrote {args.png}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    """Print a workers' env file (``etl keygen > .env``); the private key goes to a file of its own."""
    text, private = keygen.workers_env(args.private_key_file)
    keygen.write_private_key(args.private_key_file, private)
    sys.stdout.write(text)
    print(
        f"etl keygen: wrote the vault's private key to {args.private_key_file} (mode 0600): "
        "for the PII officers only, never for workers",
        file=sys.stderr,
    )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """One line per check, ok, warn or FAIL (the last two with the fix); exit 1 if anything failed."""
    checks = doctor.run(args.role)
    color = sys.stdout.isatty()
    for c in checks:
        word, paint = ("warn", "33") if c.ok and c.warn else ("ok  ", "32") if c.ok else ("FAIL", "31")
        mark = f"\033[{paint}m{word}\033[0m" if color else word
        fix = f" -> {c.fix}" if c.fix and (c.warn or not c.ok) else ""
        print(f"{mark} {c.name}: {report.printable(c.says)}{fix}")
    failed = sum(not c.ok for c in checks)
    print(f"{failed} of {len(checks)} checks failed" if failed else f"all {len(checks)} checks passed")
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from etl.demo import demo

    return demo.run(
        file=Path(args.file) if args.file else None,
        timeout=args.timeout,
        flower_port=args.flower_port,
        keep=args.keep,
        fresh=args.fresh,
    )


def _positive(text: str) -> int:
    """argparse type: a whole number of at least 1 (argparse says so and exits 2 otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="etl",
        description="Login events from SQS or Kinesis (ETL_SOURCE) -> masked rows in Postgres, on Celery. "
        "First steps: `etl demo`; for your own services `(umask 077; etl keygen > .env)`, then `etl doctor` (README).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="apply database migrations (idempotent)")
    init.add_argument("--create-queue", action="store_true", help="also create the SQS queue and its dead-letter queue")
    init.add_argument("--roles", action="store_true", help="also create the etl_writer, analyst and pii_officer roles")
    init.add_argument("--create-stream", action="store_true", help="also create the Kinesis stream where absent")
    init.add_argument(
        "--shards", type=_positive, default=2, help="shards of a stream --create-stream makes (default 2)"
    )
    init.set_defaults(func=cmd_init)

    seed = sub.add_parser("seed", help="send login events to the queue (or put them on the stream)")
    seed.add_argument("--file", help="JSON array, JSON-lines, or .gz of either")
    seed.add_argument("--count", type=_positive, default=100, help="generated events when no --file (default 100)")
    seed.add_argument("--seed", type=int, default=0, help="generator seed (default 0): same seed, same events")
    seed.add_argument("--target", choices=["sqs", "kinesis"], help="where to put them (default: ETL_SOURCE)")
    seed.set_defaults(func=cmd_seed)

    stats = sub.add_parser("stats", help="rows, rejections, and queue depth (or per-shard checkpoint and lag)")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)

    demo = sub.add_parser(
        "demo", help="run the whole pipeline locally on an embedded SQS server (ETL_SOURCE=kinesis: a stream)"
    )
    demo.add_argument("--file", help="events to seed (default: the shared samples if present, else generated)")
    demo.add_argument("--timeout", type=float, default=180, help="seconds to wait for the queue to drain")
    demo.add_argument("--flower-port", type=int, default=5555, help="0 to skip Flower")
    demo.add_argument(
        "--keep", action="store_true", help="leave the servers up after the summary and print a DATABASE_URL for psql"
    )
    demo.add_argument("--fresh", action="store_true", help="empty the demo's embedded database first")
    demo.set_defaults(func=cmd_demo)

    check = sub.add_parser("health", help="exit 0 if the pipeline (or one worker) makes progress, else 1")
    check.add_argument("--node", help="judge one worker (its Celery hostname, e.g. celery@$HOSTNAME)")
    check.add_argument("--max-idle", type=float, help="seconds without progress that count as stuck (default 300)")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_health)

    rejected = sub.add_parser("rejected", help="inspect and replay rejected messages")
    rsub = rejected.add_subparsers(dest="action", required=True)
    rlist = rsub.add_parser("list", help="counts per reason (no message content)")
    rlist.set_defaults(func=cmd_rejected_list)
    replay = rsub.add_parser("replay", help="send rejected messages back to the queue, recording each replay")
    replay.add_argument("--reason", help="only this reason")
    replay.add_argument("--limit", type=_positive, help="at most this many")
    replay.add_argument("--dry-run", action="store_true", help="only say how many would be replayed")
    replay.set_defaults(func=cmd_rejected_replay)

    rep = sub.add_parser("report", help="analysts' tables: shared tokens, logins per day and version, locales")
    rep.add_argument("--limit", type=_positive, default=10, help="rows per table (default 10)")
    rep.add_argument("--png", help="also write a bar chart of logins per day to this PNG file")
    rep.set_defaults(func=cmd_report)

    officers.add_commands(sub)  # reveal, audit, erase, rotate-masking-key, rotate-vault-key

    doc = sub.add_parser(
        "doctor", help="check services, the login's roles, keys, queue or stream, Redis, metrics: one line each"
    )
    doc.add_argument(
        "--for",
        dest="role",
        choices=sorted(access.NEEDS),
        default="etl_writer",
        help="the role whose needs the login is checked against (default etl_writer: a worker)",
    )
    doc.set_defaults(func=cmd_doctor)

    keys = sub.add_parser(
        "keygen",
        help="print a workers' .env (ETL_MASKING_KEY, ETL_PAYLOAD_KEY, ETL_VAULT_PUBLIC_KEY); "
        "the vault's private key goes to a file (mode 0600)",
    )
    keys.add_argument(
        "--private-key-file",
        default=keygen.DEFAULT_PRIVATE_KEY_FILE,
        help=f"where the officers' private key goes (default {keygen.DEFAULT_PRIVATE_KEY_FILE}; never overwritten)",
    )
    keys.set_defaults(func=cmd_keygen)
    return p


# keygen makes the keys settings need, the demo makes its processes' environment itself.
WITHOUT_SETTINGS = (cmd_keygen, cmd_demo, cmd_doctor)  # doctor reports a bad setting itself


def _needs(command: str) -> str:
    """What a refused command's login lacks, in roles (README "Roles")."""
    role = doctor.ROLE_OF_COMMAND.get(command)
    if role is None:
        return ""
    who = "the tables' owner (the login that ran `etl init`)" if role == "admin" else f"the {role} role"
    return f"; `etl {command}` needs {who} (`etl doctor --for {role}` checks a login)"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.quiet_drivers()  # botocore at DEBUG would print raw SQS bodies
    aws.for_commands()  # no command sits silent for minutes on an endpoint that does not answer
    try:
        if args.func in WITHOUT_SETTINGS:
            return int(args.func(args))
        return int(args.func(args, settings.load()))  # the command's settings, read once
    except EtlError as exc:
        print(f"etl {args.command}: {exc}{_needs(args.command) if isinstance(exc, Forbidden) else ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
