"""What every benchmark step shares: the run's servers and keys, environments, processes."""

import os
import subprocess
import sys
from pathlib import Path

import redis

from etl import store

# The run's servers: yours when ETL_TEST_DATABASE_URL / ETL_TEST_BROKER_URL are set, else an
from etl.crypto import sealing, vault
from etl.demo import embedded, processes

# embedded pair of its own (etl.demo.embedded.for_run); set by bench.run.run().
DATABASE_URL = ""
BROKER_URL = ""
AWS_ENV = processes.LOCAL_AWS

MASKING_KEY = "bench-masking-key-0123456789abcdefghijkl"
PAYLOAD_KEY = sealing.new_key()
VAULT_PUBLIC_KEY = vault.new_keypair()[1]


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
