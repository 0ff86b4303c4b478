"""The ``etl`` command: parses arguments, calls one service or store function, prints.

Subcommands: init, seed, stats, demo, health, rejected, report, reveal, audit, erase,
rotate-masking-key, rotate-vault-key, keygen (``etl --help`` lists them).
"""

import argparse
import sys
from pathlib import Path

from etl import aws, logs, settings, store
from etl.errors import EtlError, Forbidden
from etl.ops import doctor, keygen, officers, report, seeding, watching
from etl.progress import Bar
from etl.sources.kinesis import stream as kinesis
from etl.sources.sqs import queue as sqs
from etl.store import access


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
    """A workers' env file (``--env-file PATH``, a new file, or stdout); the private key goes to a
    file of its own. Nothing is written where either file exists already."""
    text, private = keygen.workers_env(args.private_key_file)
    if args.env_file:
        keygen.write_both(args.env_file, text, args.private_key_file, private)
        print(f"etl keygen: wrote the workers' keys to {args.env_file} (mode 0600)", file=sys.stderr)
    else:
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
        "First steps: `etl demo`; for your own services `etl keygen --env-file .env`, then `etl doctor` (README).",
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

    watching.add_stats(sub)

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

    watching.add_health(sub)

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
        "--env-file",
        help="write the workers' keys to this new file (mode 0600; never overwritten) instead of stdout",
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
