"""`make chaos`: inject faults into a running pipeline and check nothing is lost or doubled.

Each scenario: a fresh queue and schema, a known set of messages, a real Celery worker and beat
(against real Postgres and Redis, and moto behind a proxy that can cut it off), a fault injected
mid-run, then a wait for the queue to drain and the checks:

    rows + rejected == sent,  no message both a row and a rejection,  nothing left visible or
    in flight,  and no message written twice ("reprocessed": a later delivery found it already
    written, per the workers' chunk lines) unless the fault itself can cause that (a lost ack or
    delete, a redelivery after the visibility timeout).

    python -m chaos                     # all scenarios, default size, on servers of its own
    python -m chaos --scenarios 1,3,7 --messages 120

Scenarios 2 and 3 restart the run's PostgreSQL and Redis: the embedded ones that `make chaos`
(chaos/__main__.py) and `make test` start for themselves, unless ETL_TEST_DATABASE_URL and
ETL_TEST_BROKER_URL point elsewhere (then scenario 3 restarts that redis-server on its port and
scenario 2 this machine's PostgreSQL cluster: only where they are yours to restart).
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATABASE_URL = os.environ.get("ETL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
BROKER_URL = os.environ.get("ETL_TEST_BROKER_URL", "redis://127.0.0.1:6379/15")
# Chunks this process parks on the broker (scenario 3) must reach the run's broker.
os.environ["CELERY_BROKER_URL"] = BROKER_URL

from chaos import hostile  # noqa: E402
from chaos.proxy import Proxy  # noqa: E402
from etl import store  # noqa: E402
from etl.crypto import sealing, vault  # noqa: E402
from etl.demo import embedded, processes  # noqa: E402
from etl.demo.processes import MotoServer, ProcessGroup  # noqa: E402
from etl.model import events  # noqa: E402
from etl.ops import samples  # noqa: E402
from etl.sources.sqs import queue as sqs  # noqa: E402

KEYS = {
    "ETL_MASKING_KEY": "chaos-masking-key-0123456789abcdefghijklmn",
    "ETL_PAYLOAD_KEY": sealing.new_key(),
    "ETL_VAULT_PUBLIC_KEY": vault.new_keypair()[1],
}


def reset_schema() -> store.Connection:
    """A connection to the run's database, emptied and migrated afresh."""
    return embedded.fresh_schema(DATABASE_URL)


# Small chunks and short fetches, so that a hundred messages make several chunks. --at-defaults
# leaves these unset instead: etl/settings.py's defaults (chunks of 500, 32 SQS threads, ...).
SMALL = {"ETL_FETCH_INTERVAL": "1", "ETL_FETCH_SECONDS": "2", "ETL_CHUNK_SIZE": "20"}
TUNING = ("ETL_CHUNK_SIZE", "ETL_SQS_THREADS", "ETL_FETCH_SECONDS", "ETL_FETCH_INTERVAL", "ETL_MAX_QUEUED_CHUNKS")


def pipeline_env(queue_url: str, endpoint: str, at_defaults: bool = False, **extra: str) -> dict[str, str]:
    env = processes.local_env(
        database_url=DATABASE_URL,
        broker_url=BROKER_URL,
        queue_url=queue_url,
        sqs_endpoint=endpoint,
        **KEYS,
        **({} if at_defaults else SMALL),
        **extra,
    )
    if at_defaults:
        env = {k: v for k, v in env.items() if k not in TUNING or k in extra}
    return env


VISIBILITY = 10  # seconds: short, so that faults make SQS redeliver within the run


@dataclass
class Ctx:
    pipeline: ProcessGroup
    queue: sqs.Queue
    proxy: Proxy
    ids: list[str]
    notes: list[str] = field(default_factory=list)
    fault_injected: bool = True

    def done(self) -> int:
        """Messages of this run that are rows or rejections (0 while Postgres is unreachable)."""
        try:
            conn = store.connect(DATABASE_URL)
        except Exception:
            return 0
        try:
            return sum(
                store.query(conn, f"SELECT count(*) FROM {table} WHERE message_id = ANY(%s)", (self.ids,))[0][0]
                for table in ("user_logins", "rejected_messages")
            )
        except Exception:
            return 0
        finally:
            conn.close()

    def wait_progress(self, fraction: float, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.done() < fraction * len(self.ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no progress to {fraction:.0%} within {timeout}s")
            time.sleep(0.05)


# ---- faults -----------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


class FaultNotInjected(RuntimeError):
    """The scenario's fault could not be injected: its run proves nothing, so it fails."""


def pool_processes(ctx: Ctx, timeout: float) -> list[int]:
    """The worker's pool processes, once it has forked them (it does as it starts); [] if none
    appeared within ``timeout`` seconds or the worker is gone."""
    deadline = time.monotonic() + timeout
    while True:
        worker = ctx.pipeline.procs["worker"]
        kids = children(worker.pid) if worker.poll() is None else []
        if kids or worker.poll() is not None or time.monotonic() > deadline:
            return kids
        time.sleep(0.1)


def busy_pool_process(exclude: list[int], timeout: float) -> tuple[int, str] | None:
    """(pid, task id) of a pool process running an etl.mask_and_write now, asked of the worker
    itself (Celery's ``inspect active``); None if none was seen within ``timeout`` seconds."""
    from etl.worker.celery import app
    from etl.worker.chunks import MASK_AND_WRITE

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:  # a connection of its own each time: one that died with a restarted Redis is not reused,
            # and the app's shared pool (which the tests' producers use) is left alone
            with app.connection_for_write() as connection:
                active = app.control.inspect(timeout=0.5, connection=connection).active() or {}
        except Exception:  # the broker is unreachable right now: ask again
            active = {}
        for tasks in active.values():
            for task in tasks:
                if task.get("name") == MASK_AND_WRITE and task.get("worker_pid") not in exclude:
                    return int(task["worker_pid"]), str(task["id"])
        time.sleep(0.05)
    return None


def kill_workers(ctx: Ctx) -> None:
    """SIGKILL two pool processes, each while it runs a chunk, then the whole worker once, and
    restart it. A pool process found running no chunk is killed anyway and the note says so; no
    pool process at all fails the scenario."""
    killed: list[int] = []
    for n in (1, 2):
        kids = pool_processes(ctx, timeout=60)
        if not kids:
            raise FaultNotInjected(f"no pool process to kill (exited: {ctx.pipeline.exited()})")
        busy = busy_pool_process(exclude=killed, timeout=60)
        if busy is None:
            pid, what = (children(ctx.pipeline.procs["worker"].pid) or kids)[0], "running no chunk"
        else:
            pid, what = busy[0], f"mid-chunk {busy[1][:8]}"
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        ctx.notes.append(f"killed pool process {n} {what} at {ctx.done() / len(ctx.ids):.0%}")
    ctx.wait_progress(0.55)
    if ctx.pipeline.procs["worker"].poll() is not None:
        raise FaultNotInjected("no worker left to kill at 55%")
    os.killpg(ctx.pipeline.procs["worker"].pid, signal.SIGKILL)
    ctx.pipeline.procs.pop("worker").wait()
    ctx.notes.append(f"killed the whole worker at {ctx.done() / len(ctx.ids):.0%}")
    time.sleep(1)
    ctx.pipeline.start("worker")


def _port(url: str) -> int:
    return int(url.split("@")[-1].split("//")[-1].split("/")[0].rsplit(":", 1)[1])


def _embedded(kind: str) -> Any:
    """The run's own embedded server (etl.demo.embedded.for_run: tests/support.py,
    chaos/__main__.py), or None for yours. A test worker given one Redis URL for several workers
    runs an embedded Redis of its own beside your PostgreSQL (ETL_TEST_EMBEDDED_REDIS_DIR)."""
    directory = os.environ.get("ETL_TEST_EMBEDDED_DIR")
    if kind == "redis" and os.environ.get("ETL_TEST_EMBEDDED_REDIS_DIR"):
        return embedded.Redis(Path(os.environ["ETL_TEST_EMBEDDED_REDIS_DIR"]), port=_port(BROKER_URL))
    if not directory:
        return None
    if kind == "postgres":
        return embedded.Postgres(Path(directory) / "postgres", port=_port(DATABASE_URL))
    return embedded.Redis(Path(directory) / "redis", port=_port(BROKER_URL))


def bounce_postgres(down: float) -> None:
    """Stop the run's own embedded PostgreSQL (or, only when you pointed the run at it, this
    machine's cluster) for ``down`` seconds, then start it again."""
    server = _embedded("postgres")
    if server is not None:
        server.stop()
        time.sleep(down)
        server.start()
    else:
        version = sorted(os.listdir("/etc/postgresql"))[0]
        pg = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
        subprocess.run([*pg, "stop", "-m", "fast"], check=True, capture_output=True)
        time.sleep(down)
        subprocess.run([*pg, "start"], check=True, capture_output=True)


def restart_postgres(ctx: Ctx) -> None:
    ctx.wait_progress(0.2)
    bounce_postgres(10)
    ctx.notes.append("postgres down for 10s")


def bounce_redis(down: float) -> None:
    """Stop the run's Redis without saving (everything in it is lost) for ``down`` seconds and
    start it again: the embedded one, or a redis-server the run was pointed at (CI starts one of
    its own), on the same port with the same options."""
    server = _embedded("redis")
    if server is not None:
        server.stop()
        time.sleep(down)
        server.start()
        return
    port = str(_port(BROKER_URL))
    cli = ["redis-cli", "-h", "127.0.0.1", "-p", port]
    conf = {}
    for key in ("dir", "logfile", "bind"):
        out = subprocess.run([*cli, "config", "get", key], capture_output=True, text=True, check=True)
        lines = out.stdout.split("\n")
        conf[key] = lines[1] if len(lines) > 1 else ""
    subprocess.run([*cli, "shutdown", "nosave"], capture_output=True)
    time.sleep(down)
    cmd = ["redis-server", "--daemonize", "yes", "--port", port, "--save", "", "--appendonly", "no"]
    cmd += ["--bind", *(conf["bind"].split() or ["127.0.0.1"])]
    if conf["dir"]:
        cmd += ["--dir", conf["dir"]]
    if conf["logfile"]:
        cmd += ["--logfile", conf["logfile"]]
    subprocess.run(cmd, check=True, capture_output=True)


def park_chunks(ctx: Ctx, count: int) -> int:
    """Receive up to ``count`` messages and queue them as chunks on the broker, as fetch does."""
    from etl.crypto.sealing import Sealer
    from etl.worker import tasks
    from etl.worker.coordination import Coordinator

    received: list[Any] = []
    for _ in range(count // 10):
        received += ctx.queue.receive(10, wait_seconds=1, visibility_timeout=VISIBILITY)
    sealer, coordinator = Sealer([ctx.pipeline.env["ETL_PAYLOAD_KEY"]]), Coordinator(BROKER_URL)
    for start in range(0, len(received), 20):
        tasks.send_chunk(received[start : start + 20], sealer, coordinator, VISIBILITY + 60)
    return len(received)


def restart_redis(ctx: Ctx) -> None:
    """Redis keeps nothing on disk here: every chunk waiting in the broker is lost.

    The worker is stopped first and chunks are parked on the broker, so the restart really
    destroys queued work; only SQS's redelivery can bring those messages back.
    """
    ctx.wait_progress(0.2)
    ctx.pipeline.stop("worker")
    parked = park_chunks(ctx, 60)
    import redis

    queued = redis.Redis.from_url(BROKER_URL).llen("etl")
    bounce_redis(5)
    lost = queued
    ctx.notes.append(f"redis down for 5s: {lost} queued tasks destroyed (chunks, fetch requests, {parked} parked msgs)")
    ctx.pipeline.start("worker")


def cut_sqs(ctx: Ctx) -> None:
    ctx.wait_progress(0.2)
    ctx.proxy.down()
    time.sleep(20)
    ctx.proxy.up()
    ctx.notes.append("sqs unreachable for 20s")


def stall_writes(ctx: Ctx) -> None:
    """Hold a lock on user_logins for longer than the visibility timeout."""
    ctx.wait_progress(0.2)
    conn = store.connect(DATABASE_URL)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("LOCK TABLE user_logins IN ACCESS EXCLUSIVE MODE")
            time.sleep(VISIBILITY + 15)
    finally:
        conn.close()
    ctx.notes.append(f"writes stalled {VISIBILITY + 15}s (visibility {VISIBILITY}s)")


def second_beat(ctx: Ctx) -> None:
    ctx.pipeline.start("beat2")
    ctx.notes.append("two beats for the whole run")


def nothing(ctx: Ctx) -> None:
    ctx.notes.append(f"{len(hostile.bodies())} distinct hostile bodies mixed in")


# ---- scenarios --------------------------------------------------------------------------------


def plain(n: int) -> list[str]:
    return samples.generate(n, seed=n, malformed_rate=0.02)


def storm(n: int) -> list[str]:
    bad = hostile.bodies()
    good = samples.generate(max(n - len(bad), len(bad)), seed=7, malformed_rate=0)
    mixed = []
    for i, body in enumerate(good):
        mixed.append(body)
        if i < len(bad):
            mixed.append(bad[i])
    return mixed


@dataclass(frozen=True)
class Scenario:
    number: int
    name: str
    fault: Callable[[Ctx], None]
    bodies: Callable[[int], list[str]] = plain
    # The fault can make SQS or the broker deliver committed work again (a chunk killed between
    # commit and delete or ack, a delete that failed, work that outlived its visibility): such a
    # message is written a second time and skipped as already written. Elsewhere that is a bug.
    redelivers: bool = False
    # The SQS visibility timeout of the run: short where the fault needs SQS to redeliver within
    # the run. The storm injects no fault: its 250 KB bodies on a loaded 2-core machine took 19 s
    # (CI), and chunks that outlive 10 s are redelivered by design, counted as reprocessed.
    visibility: int = VISIBILITY


SCENARIOS = [
    Scenario(1, "SIGKILL workers mid-chunk (x3)", kill_workers, redelivers=True),
    Scenario(2, "restart Postgres (10s down)", restart_postgres, redelivers=True),
    Scenario(3, "restart Redis (broker lost)", restart_redis, redelivers=True),
    Scenario(4, "SQS unreachable for 20s", cut_sqs, redelivers=True),
    Scenario(5, "writes stalled past visibility", stall_writes, redelivers=True),
    Scenario(6, "two beats at once", second_beat),
    Scenario(7, "hostile message storm", nothing, storm, visibility=60),
]


@dataclass
class Result:
    scenario: Scenario
    sent: int
    rows: int
    rejected: int
    duplicates: int  # messages that landed twice: a row and a rejection
    reprocessed: int  # messages written again by a later delivery (skipped as already written)
    dead_lettered: int
    left_in_queue: int
    seconds: float
    notes: list[str]
    expected_rows: int
    fault_injected: bool = True  # False: the run proves nothing about its fault, so it is not ok

    @property
    def lost(self) -> int:
        return self.sent - self.rows - self.rejected - self.dead_lettered

    @property
    def ok(self) -> bool:
        return (
            self.fault_injected
            and self.lost == 0
            and self.duplicates == 0
            # SQS delivers at least once: even without a fault a message is now and then delivered
            # twice (seen with moto). A broken delete or commit reprocesses most of a run instead.
            and (self.reprocessed <= max(1, self.sent // 50) or self.scenario.redelivers)
            and self.dead_lettered == 0
            and self.left_in_queue == 0
            and self.rows == self.expected_rows
        )


def run(
    scenario: Scenario, messages: int, moto: MotoServer, workdir: Path, timeout: float = 300, at_defaults: bool = False
) -> Result:
    """One scenario; ``at_defaults``: with settings.py's chunk size, SQS threads and fetch timing."""
    import redis

    redis.Redis.from_url(BROKER_URL).flushdb()
    reset_schema().close()
    for k, v in {**processes.LOCAL_AWS, "AWS_ENDPOINT_URL_SQS": moto.endpoint}.items():
        os.environ[k] = v
    queue = sqs.Queue(sqs.create_queue(f"chaos-{scenario.number}-{uuid.uuid4().hex[:6]}"))
    dlq = sqs.Queue(queue.url + "-dlq")
    proxy = Proxy(moto.port)
    proxy.up()
    bodies = scenario.bodies(messages)
    ids = queue.send(bodies)
    expected_rows = sum(isinstance(events.parse_event(b), events.LoginEvent) for b in bodies)

    # At the defaults the visibility timeout is the default too (120 s): with 10 s, chunks of
    # hundreds on a slow moto outlive their visibility while they wait, are received again and
    # again, and some messages reach the DLQ after their row was written (seen: 13 of 400).
    short = {} if at_defaults else {"SQS_VISIBILITY_TIMEOUT": str(scenario.visibility)}
    env = pipeline_env(queue.url, proxy.endpoint, at_defaults, **short)
    pipeline = ProcessGroup(env=env, workdir=workdir)
    ctx = Ctx(pipeline, queue, proxy, ids)
    started = time.monotonic()
    try:
        pipeline.start("worker", "beat")
        try:
            scenario.fault(ctx)
        except FaultNotInjected as exc:
            ctx.notes.append(f"FAULT NOT INJECTED: {exc}")
            ctx.fault_injected = False
        deadline = started + timeout
        while True:
            depth = queue.depth()
            if ctx.done() >= len(ids) and depth["visible"] == depth["in_flight"] == 0:
                break
            if time.monotonic() > deadline:
                ctx.notes.append(f"TIMED OUT after {timeout:.0f}s")
                break
            time.sleep(0.5)
        seconds = time.monotonic() - started
    finally:
        pipeline.stop()
        proxy.close()
    conn = store.connect(DATABASE_URL)
    try:
        # (a message_id cannot be a row twice: the unique index refuses it; what doubled work
        # does is counted below from the workers' own lines)
        ((rows,),) = store.query(conn, "SELECT count(*) FROM user_logins WHERE message_id = ANY(%s)", (ids,))
        ((rejected,),) = store.query(conn, "SELECT count(*) FROM rejected_messages WHERE message_id = ANY(%s)", (ids,))
        ((both,),) = store.query(
            conn,
            "SELECT count(*) FROM user_logins u JOIN rejected_messages r USING (message_id) WHERE message_id = ANY(%s)",
            (ids,),
        )
    finally:
        conn.close()
    depth, dlq_depth = queue.depth(), dlq.depth()
    return Result(
        scenario=scenario,
        sent=len(ids),
        rows=rows,
        rejected=rejected,
        duplicates=both,
        reprocessed=reprocessed(workdir),
        dead_lettered=dlq_depth["visible"] + dlq_depth["in_flight"],
        left_in_queue=depth["visible"] + depth["in_flight"],
        seconds=seconds,
        notes=ctx.notes,
        expected_rows=expected_rows,
        fault_injected=ctx.fault_injected,
    )


def chunk_sizes(log: str) -> list[int]:
    """The size of every chunk a worker's log reports."""
    return [int(n) for n in re.findall(r"\] chunk \S*: (\d+) messages -> ", log)]


_CHUNK_LINE = re.compile(r"\] chunk \S*: \d+ messages -> \d+ rows, (\d+) already written, ")


def reprocessed(workdir: Path) -> int:
    """Messages written again and skipped as already written, summed over every worker's log.

    The unique index keeps such a message to one row; this counts the double processing itself
    (every chunk logs its line after its SQS delete; a worker stopped warm has logged them all).
    """
    logs = [log.read_text(errors="replace") for log in sorted(workdir.glob("worker*.log"))]
    return sum(int(n) for text in logs for n in _CHUNK_LINE.findall(text))


def table(results: list[Result]) -> str:
    head = (
        f"{'#':>2}  {'scenario':<32} {'sent':>5} {'rows':>5} {'rejected':>8} "
        f"{'dup':>4} {'reproc':>6} {'lost':>5} {'dlq':>4} {'time':>7}  ok"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.scenario.number:>2}  {r.scenario.name:<32} {r.sent:>5} {r.rows:>5} {r.rejected:>8} "
            f"{r.duplicates:>4} {r.reprocessed:>6} {r.lost:>5} {r.dead_lettered:>4} {r.seconds:>6.1f}s  "
            f"{'yes' if r.ok else 'NO'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(str(s.number) for s in SCENARIOS))
    parser.add_argument("--messages", type=int, default=300, help="messages per scenario (moto slows past ~500)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--at-defaults",
        action="store_true",
        help="run with the default chunk size (500), SQS threads (32) and fetch timing instead of chunks of 20",
    )
    args = parser.parse_args(argv)
    wanted = {int(n) for n in args.scenarios.split(",")}
    moto = MotoServer()
    results = []
    try:
        for scenario in [s for s in SCENARIOS if s.number in wanted]:
            print(f"scenario {scenario.number}: {scenario.name} ...", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(prefix=f"chaos-{scenario.number}-") as tmp:
                result = run(scenario, args.messages, moto, Path(tmp), at_defaults=args.at_defaults)
                if not result.ok:
                    keep = Path(tempfile.mkdtemp(prefix=f"chaos-{scenario.number}-logs-"))
                    for log in Path(tmp).glob("*.log"):
                        log.rename(keep / log.name)
                    result.notes.append(f"logs kept in {keep}")
            results.append(result)
            print(f"  {'; '.join(result.notes)} ({result.seconds:.1f}s)", file=sys.stderr, flush=True)
    finally:
        moto.stop()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([_as_dict(r) for r in results], indent=2))
    return 0 if all(r.ok for r in results) else 1


def _as_dict(r: Result) -> dict[str, Any]:
    return {
        "scenario": r.scenario.number,
        "name": r.scenario.name,
        "sent": r.sent,
        "rows": r.rows,
        "expected_rows": r.expected_rows,
        "rejected": r.rejected,
        "duplicates": r.duplicates,
        "reprocessed": r.reprocessed,
        "reprocessing_expected": r.scenario.redelivers,
        "lost": r.lost,
        "dead_lettered": r.dead_lettered,
        "left_in_queue": r.left_in_queue,
        "seconds": round(r.seconds, 1),
        "notes": r.notes,
        "fault_injected": r.fault_injected,
        "ok": r.ok,
    }


if __name__ == "__main__":
    sys.exit(main())
