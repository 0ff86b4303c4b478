"""The embedded PostgreSQL and Redis a fresh machine gets: lifecycle, data kept, nothing left behind."""

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from etl import store
from etl.crypto.masking import Masker
from etl.crypto.sealing import Sealer, new_key
from etl.demo import embedded, processes
from etl.errors import ConfigError
from etl.model import records
from etl.model.records import Message
from tests.support import MASKING_KEY, ProcessGroup, run_demo

pytestmark = pytest.mark.integration

EVENT = {"user_id": "u-1", "device_type": "ios", "ip": "198.51.100.1", "device_id": "d-1", "app_version": "1.2"}


def test_start_migrate_write_stop_restart_on_the_same_data(tmp_path: Path) -> None:
    pg, rd = embedded.Postgres(tmp_path / "pg"), embedded.Redis(tmp_path / "redis")
    try:
        conn = store.connect(pg.start())
        store.migrate(conn)
        chunk = records.transform(
            [Message("m-1", "rh", json.dumps(EVENT), 1772409599999)], Masker(MASKING_KEY), Sealer([new_key()])
        )
        assert store.write_chunk(conn, chunk).inserted == 1
        conn.close()
        redis.Redis.from_url(rd.start()).set("k", "v")
        pg.stop()
        rd.stop()
        assert not pg.running() and not rd.running()

        conn = store.connect(pg.start())  # same data directory, same port
        assert store.query(conn, "SELECT user_id FROM user_logins") == [("u-1",)]
        assert store.migrate(conn) == []
        conn.close()
        rd.start()  # nothing kept on disk, as the pipeline assumes of its broker
        assert redis.Redis.from_url(rd.url).get("k") is None
    finally:
        pg.stop()
        rd.stop()
    assert not pg.running() and not rd.running()
    assert not (pg.data / "postmaster.pid").exists() and not rd.pidfile.exists()


def test_a_stale_pid_file_does_not_block_the_next_start(tmp_path: Path) -> None:
    rd = embedded.Redis(tmp_path)
    rd.pidfile.write_text("999999\n")
    try:
        rd.start()
        assert rd.running()
    finally:
        rd.stop()


@pytest.mark.long(30)
def test_the_demo_runs_twice_on_its_embedded_servers(tmp_path: Path) -> None:
    """`make demo` on a machine without Postgres or Redis settings, twice on the same .demo/."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env["ETL_EMBEDDED"] = "always"
    for run in (1, 2):
        out = run_demo(tmp_path, env)
        assert out.returncode == 0, f"run {run}: {out.stdout[-2000:]}"
        assert "embedded Postgres on 127.0.0.1:" in out.stdout and "embedded Redis on 127.0.0.1:" in out.stdout
        assert "\nrejected   " in out.stdout and "queue      0 waiting, 0 in flight" in out.stdout
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
    assert leftovers == "", "a server or process of the demo is still running"


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port someone else holds (as another run's server would, having taken it first)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield holder.getsockname()[1]


def test_a_server_whose_port_was_taken_starts_on_another(tmp_path: Path, taken_port: int) -> None:
    """free_port() only names a candidate: between choosing it and binding it another run can take
    it. Postgres and Redis then move to another port, and the server answering is our own."""
    pg, rd = embedded.Postgres(tmp_path / "pg"), embedded.Redis(tmp_path / "redis")
    pg.port = rd.port = taken_port  # as if taken just after they chose it
    try:
        conn = store.connect(pg.start())
        assert pg.port != taken_port and store.query(conn, "SELECT 1") == [(1,)]
        conn.close()
        client = redis.Redis.from_url(rd.start())
        assert rd.port != taken_port
        assert client.info("server")["process_id"] == int(rd.pidfile.read_text())
    finally:
        pg.stop()
        rd.stop()


def test_a_restart_keeps_its_port_and_says_it_is_taken(tmp_path: Path, taken_port: int) -> None:
    """A port the caller named (a restart whose URL the workers hold) is never silently changed."""
    rd = embedded.Redis(tmp_path, port=taken_port)
    with pytest.raises(ConfigError, match="is taken"):
        rd.start()


def test_flower_moves_to_another_port_when_its_port_was_taken(
    pipeline: ProcessGroup, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = processes.free_port
    offered = iter([taken_port])
    monkeypatch.setattr(processes, "free_port", lambda: next(offered, None) or real())
    pipeline.start("flower", FLOWER_BASIC_AUTH="ops:s3cret")
    assert pipeline.flower_port != taken_port
    assert processes.listens(pipeline.procs["flower"].pid, pipeline.flower_port)


def test_a_second_run_on_the_same_data_refuses_and_leaves_the_first_ones_server_up(tmp_path: Path) -> None:
    """Two `etl demo`s in one checkout: the second says the data is in use and, on its way out,
    stops nothing (it used to stop the first demo's PostgreSQL under it)."""
    first, second = embedded.Postgres(tmp_path / "pg"), embedded.Postgres(tmp_path / "pg")
    try:
        url = first.start()
        with pytest.raises(ConfigError, match=r"is in use by a running server \(pid \d+\).*another `etl demo`"):
            second.start()
        second.stop()
        assert first.running()
        store.connect(url).close()
    finally:
        first.stop()
    assert not first.running()
