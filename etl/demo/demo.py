"""``etl demo``: the whole pipeline on this machine, from an empty queue to a summary.

Starts an embedded SQS server (moto), applies migrations, seeds events, runs a real Celery
worker, beat and Flower as separate processes until every seeded message is a row or a
rejection and the queue is empty, prints a summary and stops everything it started. With
ETL_SOURCE=kinesis the events go through a Kinesis stream on the same moto server instead.
"""

import json
import os
import secrets
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from etl import settings, store
from etl.crypto import sealing, vault
from etl.demo import embedded, processes
from etl.errors import ConfigError
from etl.ops import seeding
from etl.progress import Bar
from etl.sources.kinesis import stream as kinesis
from etl.sources.sqs import queue as sqs
from etl.store import streams

SHARED_SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "sample_logins.json.gz"
LOG_DIR = Path(".demo")


KEYS_FILE = LOG_DIR / "keys.json"


def demo_keys() -> dict[str, str]:
    """The demo's throwaway keys, made on the first run and kept (mode 0600) with its data in
    .demo/, so that a second run can still read what the first one wrote."""
    if KEYS_FILE.exists():
        return dict(json.loads(KEYS_FILE.read_text()))
    private, public = vault.new_keypair()
    kept = {
        "ETL_MASKING_KEY": secrets.token_urlsafe(48),
        "ETL_PAYLOAD_KEY": sealing.new_key(),
        "ETL_VAULT_PUBLIC_KEY": public,
        "ETL_VAULT_PRIVATE_KEY": private,
    }
    LOG_DIR.mkdir(exist_ok=True)
    KEYS_FILE.touch(mode=0o600)
    KEYS_FILE.write_text(json.dumps(kept, indent=2))
    return kept


def demo_env(flower: bool = True) -> tuple[dict[str, str], list[str]]:
    """The environment for the demo's processes, with throwaway keys where none are set."""
    env = dict(os.environ)
    notes = []
    kept = demo_keys()
    for name in ("ETL_MASKING_KEY", "ETL_PAYLOAD_KEY", "ETL_VAULT_PUBLIC_KEY"):
        if not env.get(name) and not env.get(f"{name}_FILE"):
            env[name] = kept[name]
            notes.append(f"{name} not set: using the demo's own key, kept with its data in {KEYS_FILE}")
    if "ETL_VAULT_PUBLIC_KEY" in env and env["ETL_VAULT_PUBLIC_KEY"] == kept["ETL_VAULT_PUBLIC_KEY"]:
        notes.append(f"to try `etl reveal`: ETL_VAULT_PRIVATE_KEY from {KEYS_FILE} (workers never get it)")
    if flower and not env.get("FLOWER_BASIC_AUTH"):
        env["FLOWER_BASIC_AUTH"] = f"demo:{secrets.token_urlsafe(12)}"
        user, _, password = env["FLOWER_BASIC_AUTH"].partition(":")
        notes.append(f"FLOWER_BASIC_AUTH not set: Flower asks for user {user!r}, throwaway password {password!r}")
    env.setdefault("AWS_ACCESS_KEY_ID", "demo")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env.setdefault("ETL_FETCH_INTERVAL", "2")
    env.setdefault("ETL_FETCH_SECONDS", "2")  # short fetch runs, so the demo stops quickly
    env.setdefault("FLOWER_ADDRESS", "127.0.0.1")
    return env, notes


class Source:
    """The demo's SQS queue, or its Kinesis stream with ETL_SOURCE=kinesis, on the moto server."""

    def __init__(self, queue: sqs.Queue | None, stream: kinesis.Stream | None) -> None:
        self.queue, self.stream = queue, stream

    @classmethod
    def start(cls, env: dict[str, str], config: settings.Settings) -> "Source":
        """Create the stream, or the queue (its URL goes into ``env`` for the demo's processes)."""
        if config.source == "kinesis":
            stream = kinesis.Stream(config.kinesis_stream_name)
            stream.create(2)
            print(
                f"kinesis: embedded moto server at {env['AWS_ENDPOINT_URL_KINESIS']}, stream {stream.name} (2 shards)"
            )
            return cls(None, stream)
        env["SQS_QUEUE_URL"] = sqs.create_queue("login-queue")
        print(f"sqs: embedded moto server at {env['AWS_ENDPOINT_URL_SQS']}, queue {env['SQS_QUEUE_URL']}")
        return cls(sqs.Queue(env["SQS_QUEUE_URL"]), None)

    def bind(self, conn: store.Connection) -> None:
        """A demo run again on the same database makes a new stream under the same name: its
        incarnation is recorded before seeding, so the ids sent are the ones its rows will have."""
        if self.stream is None:
            return
        life = streams.incarnation(conn, self.stream.name, *self.stream.incarnation())
        self.stream.key = life.key
        if life.previous_created_at is not None:
            print(f"kinesis: the stream is new under a name read before: read from its start as {life.key}")

    def send(self, bodies: list[str], bar: Bar) -> list[str]:
        if self.stream is not None:
            return seeding.put(self.stream, bodies, bar)
        assert self.queue is not None
        return seeding.send(self.queue, bodies, bar)

    def backlog(self, conn: store.Connection) -> tuple[str, str, bool]:
        """What is left at the source: its name, in words, and whether that is nothing."""
        if self.stream is not None:
            report = streams.shard_report(conn, self.stream.key)
            marks = ", ".join(f"{r['shard_id'][-3:]}@{r['checkpoint']}" for r in report)
            settled = bool(report) and not any(r["ranges_waiting"] for r in report)
            return "stream", f"checkpoints {marks or 'none yet'}", settled
        assert self.queue is not None
        depth = self.queue.depth()
        empty = depth["visible"] == depth["in_flight"] == 0
        return "queue", f"{depth['visible']} waiting, {depth['in_flight']} in flight", empty


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(
    file: Path | None = None, timeout: float = 180, flower_port: int = 5555, keep: bool = False, fresh: bool = False
) -> int:
    """The demo; ``keep``: leave its servers and processes up after the summary (until Ctrl-C),
    with what to type to look at them; ``fresh``: empty its own embedded database first."""
    # A closed terminal or a kill stops it as Ctrl-C does. Ctrl-C itself is handled here too: a
    # shell starts a background job (`etl demo --keep &`, a CI script's) with SIGINT ignored, and
    # Python then installs no handler of its own, so `kill -INT` stopped nothing.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupted)
    env, notes = demo_env(flower=bool(flower_port))
    env["FLOWER_PORT"] = str(flower_port)
    if not env.get("ETL_METRICS_PORT") and processes.port_in_use(9808):  # another demo, a worker
        env["ETL_METRICS_PORT"] = str(processes.free_port())
        notes.append(f"port 9808 is busy: the worker's metrics are on {env['ETL_METRICS_PORT']}")
    for note in notes:
        print(f"note: {note}")
    LOG_DIR.mkdir(exist_ok=True)

    with ExitStack() as stack:
        server = processes.MotoServer()
        stack.callback(server.stop)
        env["AWS_ENDPOINT_URL_SQS"] = env["AWS_ENDPOINT_URL_KINESIS"] = server.endpoint
        os.environ.update(
            {
                k: env[k]
                for k in (
                    "AWS_ENDPOINT_URL_SQS",
                    "AWS_ENDPOINT_URL_KINESIS",
                    "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY",
                    "AWS_DEFAULT_REGION",
                )
            }
        )
        mode = env.get("ETL_EMBEDDED", "auto").lower()
        if mode not in ("auto", "always", "never"):
            raise ConfigError(f"ETL_EMBEDDED must be auto, always or never, got {mode!r}")
        own = {
            name: mode == "always" or (mode == "auto" and not env.get(name))
            for name in ("DATABASE_URL", "CELERY_BROKER_URL")
        }
        env.update(
            stack.enter_context(embedded.running(LOG_DIR, postgres=own["DATABASE_URL"], redis=own["CELERY_BROKER_URL"]))
        )
        config = settings.load(env)  # once: the queue's URL, made below, goes to the processes via env
        source = Source.start(env, config)
        os.environ["CELERY_BROKER_URL"] = config.broker_url  # this process's own producer, if any
        for name, what, url in (
            ("DATABASE_URL", "Postgres", config.database_url),
            ("CELERY_BROKER_URL", "Redis", config.broker_url),
        ):
            where = url.split("@")[-1].split("//")[-1].split("/")[0]
            if own[name]:
                print(
                    f"{what.lower()}: embedded {what} on {where} (data in {LOG_DIR}/; ETL_EMBEDDED=never to use yours)"
                )
            else:
                print(f"{what.lower()}: your {what} at {settings.redact(url)}")
        if fresh:
            if not own["DATABASE_URL"]:
                raise ConfigError("--fresh empties the demo's own embedded database only; DATABASE_URL is yours")
            embedded.fresh_schema(config.database_url).close()
            print("postgres: emptied (--fresh): the demo's earlier rows are gone")
        conn = stack.enter_context(store.connection(config.database_url))
        applied = store.migrate(conn)
        print("postgres: schema " + ("migrated" if applied else "up to date"))
        source.bind(conn)

        if file is None and SHARED_SAMPLES.exists():
            file = SHARED_SAMPLES
        bodies = seeding.bodies(file, 100, seed=1)
        print(f"seeding {len(bodies)} events from {file or 'the generator (seed 1)'}")
        with Bar("msg") as bar:
            ids = source.send(bodies, bar)

        started = time.monotonic()
        group = processes.ProcessGroup(env, LOG_DIR)
        stack.callback(group.stop)
        for old in LOG_DIR.glob("*.log"):
            old.unlink()  # this run's logs only
        for kind in ("worker", "beat") + (("flower",) if flower_port else ()):
            if kind == "flower" and processes.port_in_use(flower_port):
                print(f"flower: port {flower_port} is busy, skipping Flower (use --flower-port)")
                continue
            group.start(kind)
        flower = f", flower at http://127.0.0.1:{flower_port}" if "flower" in group.procs else ""
        print(f"celery: worker, beat{flower}; logs in {LOG_DIR}/")

        done = 0
        tty, last = sys.stdout.isatty(), ""  # off a terminal (a log): a line when the count moves, no redraws
        while time.monotonic() - started < timeout:
            for kind, code in group.exited().items():
                if kind == "flower":  # e.g. a malformed FLOWER_BASIC_AUTH: said once, the pipeline goes on
                    group.procs.pop(kind)
                    print(f"\nflower exited with code {code} (the pipeline goes on); see {group.log_path(kind)}")
                    continue
                print(f"\n{kind} exited with code {code}; see {group.log_path(kind)}")
                return 1
            result = store.stats(conn, ids)
            done = result["rows"] + result["rejected"]
            where, backlog, empty = source.backlog(conn)
            line = f"processed {done}/{len(ids)}, {where}: {backlog}"
            if tty:
                print(f"\r{line}   ", end="", flush=True)
            elif line != last:
                print(line, flush=True)
            last = line
            if done == len(ids) and empty:
                break
            time.sleep(0.5)
        else:
            left = len(ids) - done
            print(f"\ntimed out after {timeout:.0f}s with {left} messages unprocessed; see {LOG_DIR}/worker.log")
            return 1
        elapsed = time.monotonic() - started
        if tty:
            print()  # end the redrawn line
        counts = scrape_metrics(int(env.get("ETL_METRICS_PORT") or 9808), result["rows"], config.source == "sqs")
        details = store.query(
            conn, "SELECT reason, detail FROM rejected_messages WHERE message_id = ANY(%s) ORDER BY reason", (ids,)
        )
        table_rows = int(store.stats(conn)["rows"])
        print_summary(result, details, len(ids), elapsed, source.backlog(conn)[:2], table_rows)
        if counts:
            port = int(env.get("ETL_METRICS_PORT") or 9808)
            print(f"metrics    http://127.0.0.1:{port}/metrics: " + ", ".join(f"{k} {v:g}" for k, v in counts.items()))
            if counts.get("duplicates_skipped"):
                print(
                    f"           {counts['duplicates_skipped']:g} delivered again by the queue and skipped as already "
                    "written (SQS delivers at least once; each message is stored once)"
                )
        if keep:
            print_kept(env, config, own["DATABASE_URL"])
            try:
                while not group.exited():
                    time.sleep(1)
            except KeyboardInterrupt:
                print("\nstopping the demo's servers and processes")
                return 0
            print(f"a process of the demo exited; see {LOG_DIR}/")
            return 1
    if not keep:
        etl = Path(sys.executable).parent / "etl"
        print(
            f"to look at a table it filled: `{etl if etl.exists() else 'etl'} demo --keep --fresh` runs it again "
            "on an emptied table, leaves everything up and prints a DATABASE_URL for psql"
        )
    return 0


def print_kept(env: dict[str, str], config: settings.Settings, embedded_postgres: bool) -> None:
    """What to type, in another shell, to look at what the demo wrote while it stays up."""
    names = ("DATABASE_URL", "CELERY_BROKER_URL", "SQS_QUEUE_URL", "AWS_ENDPOINT_URL_SQS", "AWS_ACCESS_KEY_ID")
    values = {
        **{n: env[n] for n in names if env.get(n)},
        "DATABASE_URL": config.database_url,
        "CELERY_BROKER_URL": config.broker_url,
        "AWS_SECRET_ACCESS_KEY": env.get("AWS_SECRET_ACCESS_KEY", ""),
    }
    if config.source == "kinesis":
        values["AWS_ENDPOINT_URL_KINESIS"] = env["AWS_ENDPOINT_URL_KINESIS"]
        values["ETL_SOURCE"] = "kinesis"
    psql = "psql"
    if embedded_postgres:
        bundled = embedded.Postgres(LOG_DIR / "postgres").bin / "psql"
        psql = str(bundled) if bundled.exists() else psql
    print("kept running (--keep); Ctrl-C here stops everything. In another shell:")
    print("  export " + " ".join(f"{k}={v}" for k, v in values.items() if v))
    print(f'  {psql} "$DATABASE_URL" -c "SELECT user_id, masked_ip, locale FROM user_logins LIMIT 5"')
    etl = Path(sys.executable).parent / "etl"
    etl_cmd = str(etl) if etl.exists() else "etl"
    print(f"  {etl_cmd} stats; {etl_cmd} report   (reveal needs ETL_VAULT_PRIVATE_KEY from {KEYS_FILE})")
    print(f"DATABASE_URL={config.database_url}")


def scrape_metrics(port: int, rows: int, deletes: bool = True, timeout: float = 5) -> dict[str, float]:
    """The worker's main counters from its metrics endpoint (empty if it is not reachable);
    ``deletes``: with messages deleted (SQS: a stream deletes nothing)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    wanted = (
        "etl_rows_written_total",
        "etl_rejected_total",
        *(("etl_messages_deleted_total",) if deletes else ()),
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
    result: dict[str, Any],
    details: list[tuple[Any, ...]],
    sent: int,
    elapsed: float,
    backlog: tuple[str, str],
    table_rows: int = 0,
) -> None:
    """This run's messages: rows, rejections and the masked tokens they share (the duplicates an
    analyst can find); and the table's total where earlier runs left rows (sent again, the same
    events are new messages: each run adds its own rows)."""
    print("=" * 64)
    print(f"sent       {sent} messages")
    earlier = table_rows - int(result["rows"])
    more = f" (the table holds {table_rows}: {earlier} from earlier runs; --fresh empties it)" if earlier > 0 else ""
    print(f"rows       {result['rows']}{more}")
    print(f"rejected   {result['rejected']}")
    for reason, detail in details:
        print(f"             {reason}: {detail}")
    print(
        f"shared     {result['shared_ip_tokens']} ip tokens ({result['rows_with_shared_ip']} rows), "
        f"{result['shared_device_tokens']} device tokens ({result['rows_with_shared_device']} rows): "
        "the same ip or device in several of this run's rows"
    )
    print(f"{backlog[0]:<10} {backlog[1]}" + (" (empty)" if backlog[0] == "queue" else ""))
    print(f"throughput {sent / elapsed:.1f} messages/s ({elapsed:.1f}s from worker start, including start-up)")
    print("=" * 64)
