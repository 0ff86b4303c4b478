"""Shared test setup: servers of the run's own, and where the exercise's sample file lives.

Unless ETL_TEST_DATABASE_URL / ETL_TEST_BROKER_URL point at servers you started (CI does, see
.ci/run), every test run starts an embedded PostgreSQL and Redis of its own on free ports, uses
them, and stops them at the end: the machine's servers are never touched, and two runs at once
do not meet. The chaos scenarios restart those servers, never yours.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

SHARED_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "sample_logins.json.gz"
MASKING_KEY = "unit-test-masking-key-0123456789abcdef"
_own: list[object] = []


def pytest_configure(config: pytest.Config) -> None:
    """Start this run's servers before any test module (and so tests.support) is imported."""
    if os.environ.get("ETL_TEST_DATABASE_URL") and os.environ.get("ETL_TEST_BROKER_URL"):
        return
    if getattr(config.option, "collectonly", False) or not _wants_integration(config):
        return
    from etl import embedded

    directory = Path(tempfile.mkdtemp(prefix="etl-test-servers-"))
    pg, rd = embedded.Postgres(directory / "postgres"), embedded.Redis(directory / "redis")
    _own.extend([pg, rd, directory])
    os.environ["ETL_TEST_DATABASE_URL"] = pg.start()
    os.environ["ETL_TEST_BROKER_URL"] = rd.start().replace("/0", "/15")
    os.environ["ETL_TEST_EMBEDDED_DIR"] = str(directory)  # the chaos scenarios restart these
    print(f"test servers: embedded Postgres on port {pg.port}, Redis on port {rd.port} ({directory})")


def _wants_integration(config: pytest.Config) -> bool:
    args = [str(a) for a in config.args] or ["tests"]
    return any("unit" not in a for a in args)


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _own:
        return
    pg, rd, directory = _own
    for server in (rd, pg):
        server.stop()  # type: ignore[attr-defined]
    shutil.rmtree(str(directory), ignore_errors=True)


@pytest.fixture
def shared_samples() -> Path:
    if not SHARED_SAMPLES.exists():
        pytest.skip(f"shared sample file not present at {SHARED_SAMPLES}")
    return SHARED_SAMPLES
