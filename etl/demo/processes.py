"""Starting and stopping the pipeline's processes: the one place the demo, the tests, the
benchmark and the fault-injection runner share.

``COMMANDS`` is the one definition of how each process is started; docker-compose.yml and the
k8s manifests run the same argument lists (a unit test holds them equal). What differs between
places is only the environment.
"""

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMMANDS = {
    "worker": ["celery", "-A", "etl.worker", "worker", "--loglevel=INFO", "--concurrency=2"],
    "beat": ["celery", "-A", "etl.worker", "beat", "--loglevel=INFO"],
    # Flower only through etl's launcher: it refuses to start without FLOWER_BASIC_AUTH and puts
    # every page, /metrics and /healthcheck included, behind that login (etl/worker/flower.py).
    "flower": ["python", "-m", "etl.worker.flower", "--max_tasks=10000"],
}


# Credentials for local SQS servers (moto, LocalStack, the benchmark's stand-in): any value works.
LOCAL_AWS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1"}


def local_env(*, database_url: str, broker_url: str, queue_url: str, sqs_endpoint: str, **extra: str) -> dict[str, str]:
    """This process's environment pointed at local servers (plus ``extra``), for spawned processes."""
    return {
        **os.environ,
        **LOCAL_AWS,
        "AWS_ENDPOINT_URL_SQS": sqs_endpoint,
        "SQS_QUEUE_URL": queue_url,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        **extra,
    }


def celery_command(kind: str) -> list[str]:
    """COMMANDS[kind], run with this interpreter (so the .venv need not be on PATH)."""
    cmd = COMMANDS[kind]
    return [sys.executable, *cmd[1:]] if cmd[0] == "python" else [sys.executable, "-m", *cmd]


def free_port() -> int:
    """A port that was free a moment ago: only a candidate.

    Another process (a second test run, any outgoing connection) may take it before the server
    it is meant for binds it. Whoever binds it must notice that and take another: servers in this
    process bind port 0 instead (MotoServer, the chaos proxy); child servers are checked to hold
    their own port and restarted on a new one if they do not (``ProcessGroup.start_listening``,
    ``etl.demo.embedded``).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself (or one of its children) listens on ``port``: not merely
    whether something does, which could be another run's server that took the port first."""
    import psutil  # a dev dependency: only tests, chaos and bench start processes this way

    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            for c in proc.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
                    return True
    except psutil.Error:
        return False
    return False


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def spawn(cmd: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a process with its output appended to ``log_path``, in its own process group."""
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes], grace: float = 15) -> None:
    """SIGTERM to the process (a warm shutdown for Celery: its pool finishes the tasks in hand),
    then SIGKILL to its whole group after ``grace`` seconds. Not SIGTERM to the group: pool
    processes killed under their tasks log WorkerLostError and have their chunks requeued."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):  # whatever of its group outlived it (or it, hung)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass
class ProcessGroup:
    """Celery processes started from COMMANDS with one environment; ``stop()`` ends them all.

    Each process logs to ``<workdir>/<name>.log`` (appended across restarts), keeps its beat
    schedule in the workdir, and each worker gets a metrics directory of its own.
    """

    env: dict[str, str]
    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    flower_port: int = 0

    def start(self, *names: str, **env: str) -> None:
        """Start processes by name: "worker", "beat", "flower", or e.g. "beat2" for a second beat.

        A Flower on a port this group chose is started with ``start_listening`` (it returns once
        Flower listens, on another port if the chosen one was taken meanwhile).
        """
        for name in names:
            kind = name.rstrip("0123456789")
            if kind == "flower" and not (self.flower_port or self.env.get("FLOWER_PORT") or env.get("FLOWER_PORT")):
                self.flower_port = self.start_listening(name, "FLOWER_PORT", env)
                continue
            if kind == "flower" and not self.flower_port:
                self.flower_port = int(env.get("FLOWER_PORT") or self.env["FLOWER_PORT"])
            metrics_dir = self.workdir / f"{name}-metrics"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
            own = {
                **({"FLOWER_PORT": str(self.flower_port)} if self.flower_port else {}),
                "FLOWER_ADDRESS": self.env.get("FLOWER_ADDRESS", "127.0.0.1"),
                "ETL_BEAT_SCHEDULE_FILE": str(self.workdir / f"{name}-schedule"),
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            }
            self.procs[name] = spawn(celery_command(kind), {**self.env, **own, **env}, self.log_path(name))

    def start_listening(
        self,
        name: str,
        port_variable: str,
        env: Mapping[str, str] | None = None,
        unavailable: str = "",
        timeout: float = 60,
    ) -> int:
        """Start ``name`` with a free port in ``port_variable``; return the port once the process
        itself listens on it. If it cannot bind (it exits, or its log shows ``unavailable``), it
        is stopped and started again on another port: a port picked by ``free_port`` can be taken
        by someone else before the process binds it.
        """
        for _ in range(5):
            port = free_port()
            log_start = self.log_path(name).stat().st_size if self.log_path(name).exists() else 0
            self.start(name, **{**(env or {}), port_variable: str(port)})
            if port_variable == "FLOWER_PORT":
                self.flower_port = port
            proc = self.procs[name]
            deadline = time.monotonic() + timeout
            while True:
                if listens(proc.pid, port):
                    return port
                new_log = self.log(name)[log_start:] if self.log_path(name).exists() else ""
                if proc.poll() is not None or (unavailable and unavailable in new_log):
                    break  # the port was taken before it could bind it: another one
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not listen on port {port} within {timeout}s")
                time.sleep(0.1)
            self.stop(name)
            self.flower_port = 0 if port_variable == "FLOWER_PORT" else self.flower_port
        raise RuntimeError(f"{name} could not bind a port in 5 tries; see {self.log_path(name)}")

    def stop(self, *names: str) -> None:
        for name in names or list(self.procs):
            stop(self.procs.pop(name))

    def exited(self) -> dict[str, int]:
        """Processes that have ended, with their exit codes."""
        return {name: code for name, proc in self.procs.items() if (code := proc.poll()) is not None}

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def log(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")


def _serialise_moto_deletes() -> None:
    """Make moto's SQS deletes atomic, as SQS's are.

    moto's ``Queue.delete_message`` rebuilds the queue's message list without a lock, while its
    server answers each request on a thread of its own: two DeleteMessageBatch calls at once (the
    pipeline sends up to ETL_SQS_THREADS) can each drop the other's deletion, and a message sent
    meanwhile can vanish. The deleted message comes back after its visibility timeout and is
    written twice (seen: 41 of 4,000 at the defaults on a loaded machine). The stand-in's bug is
    fixed here, under the lock moto itself takes to add a message; our code is not touched.
    """
    from moto.sqs import models

    delete = models.Queue.delete_message
    if getattr(delete, "etl_serialised", False):
        return

    def delete_message(self: Any, receipt_handle: str) -> None:
        with self._messages_lock:
            delete(self, receipt_handle)

    delete_message.etl_serialised = True  # type: ignore[attr-defined]
    models.Queue.delete_message = delete_message  # type: ignore[method-assign]


class MotoServer:
    """moto's SQS server (a dev dependency) in a thread of this process, on a loopback port of its own."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        _serialise_moto_deletes()

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
        # Port 0: the kernel picks a free port as the server binds it, so no other run can take
        # it in between (a port chosen first and bound later can be).
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop()


# where ../shared/sqs-servers.md and `make bench` install it (a machine-wide cache, like the docs say)
LOCALSTACK_VENV = Path("/tmp/localstack-venv")  # noqa: S108


class LocalStack:
    """LocalStack's SQS in host mode (see ../shared/sqs-servers.md), from its own Python 3.13 venv.

    ``LocalStack.python()`` is None where it is not installed; callers skip with a message.
    """

    def __init__(self, python: str, timeout: float = 90) -> None:
        import json
        import time
        import urllib.request

        port = 4566 if not port_in_use(4566) else free_port()
        env = {
            **os.environ,
            "GATEWAY_LISTEN": f"127.0.0.1:{port}",
            "GATEWAY_SERVER": "hypercorn",
            "DNS_ADDRESS": "0",
            "SERVICES": "sqs",
            "EAGER_SERVICE_LOADING": "1",
            "SQS_ENDPOINT_STRATEGY": "off",
            "LOCALSTACK_HOST": f"localhost:{port}",
            "DISABLE_EVENTS": "1",
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "FILESYSTEM_ROOT": f"/tmp/localstack-fs-{os.getpid()}-{port}",  # noqa: S108  (per run: pid and port)
        }
        self.log_path = Path(f"/tmp/localstack-{os.getpid()}-{port}.log")  # noqa: S108
        self.proc = spawn([python, "-m", "localstack.runtime.main"], env, self.log_path)
        self.endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/_localstack/health", timeout=2) as resp:  # noqa: S310
                    if json.loads(resp.read()).get("services", {}).get("sqs") in ("available", "running"):
                        time.sleep(1)
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"LocalStack did not start; see {self.log_path}")

    @staticmethod
    def python() -> str | None:
        python = LOCALSTACK_VENV / "bin" / "python"
        return str(python) if python.exists() else None

    def stop(self) -> None:
        stop(self.proc, grace=20)


# Where `make install` puts kinesis-mock (the npm package kinesis-local, locked with its integrity
# hash in tools/kinesis-mock/): inside the venv, so `make clean` removes it with everything else.
KINESIS_MOCK_VERSION = "0.6.2"
KINESIS_MOCK = Path(sys.prefix) / "kinesis-mock" / "node_modules" / "kinesis-local"


class KinesisMock:
    """kinesis-mock (the Kinesis server LocalStack itself runs), from its npm build on Node.js.

    A second Kinesis implementation beside moto's for the tests and ``make bench-kinesis``.
    ``KinesisMock.main()`` is None where it is not installed (no Node.js or npm); callers skip
    with a message, except CI, which installs it and checks it is there (.ci/run).
    """

    def __init__(self, workdir: Path, timeout: float = 30) -> None:
        main = self.main()
        if main is None:
            raise RuntimeError(f"kinesis-mock is not installed under {KINESIS_MOCK} (make install needs npm)")
        self.log_path = workdir / "kinesis-mock.log"
        for _ in range(5):  # a free port is only a candidate: another process may bind it first
            port, tls_port = free_port(), free_port()
            env = {
                **os.environ,
                "KINESIS_MOCK_PLAIN_PORT": str(port),
                "KINESIS_MOCK_TLS_PORT": str(tls_port),
                "KINESIS_MOCK_CERT_PATH": str(main.parent / "server.json"),
                "LOG_LEVEL": "WARN",
                "SHOULD_PERSIST_DATA": "false",
                # streams become ACTIVE (and are deleted) at once, as moto's do
                "CREATE_STREAM_DURATION": "0ms",
                "DELETE_STREAM_DURATION": "0ms",
            }
            self.proc = spawn(["node", str(main)], env, self.log_path)
            self.endpoint = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if port_in_use(port):
                    time.sleep(0.2)  # ours, unless it exits now, finding its ports taken
                    if self.proc.poll() is None:
                        return
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"kinesis-mock did not start; see {self.log_path}")

    @staticmethod
    def main() -> Path | None:
        main = KINESIS_MOCK / "main.js"
        return main if main.exists() and shutil.which("node") else None

    def stop(self) -> None:
        stop(self.proc, grace=5)
