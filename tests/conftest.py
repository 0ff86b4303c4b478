"""Shared test setup: where the exercise's sample file lives (read, never copied).

The exercise's 100 sample events sit beside the project, in ``../shared/data`` (this machine and
its CI have it). A test that needs them fails, not skips, when the file is missing: a promised
check that quietly does not run is a failure. Where the file cannot exist (a clone on its own,
GitHub's runners), set ``ETL_TEST_WITHOUT_SHARED_SAMPLES=1``: those tests are then skipped, and
pytest's summary names each skip (``-ra``). The pipeline test then runs on 100 generated events.

The integration tests' servers are started by tests/support.py (see there).

``@pytest.mark.long(seconds)`` says about how long a test takes on the 2-core CI machine: under
pytest-xdist (``make test``) the longest start first, so no worker is left with a long test
while the others have finished (see pytest_collection_modifyitems). The heaviest pipeline runs
(the exactly-once run at the default settings: chunks of 500, 32 SQS threads; and the worker-kill
chaos scenario, small and at the defaults) share ``@pytest.mark.xdist_group("heavy")``: one
worker runs them one after the other, never two at once (all three at once slowed moto until it
handed messages out twice, and the exactly-once test counted 14 written a second time).
"""

import os
from pathlib import Path

import pytest

SHARED_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "sample_logins.json.gz"
WITHOUT_SHARED_SAMPLES = "ETL_TEST_WITHOUT_SHARED_SAMPLES"
MASKING_KEY = "unit-test-masking-key-0123456789abcdef"


def shared_samples_path() -> Path | None:
    """The exercise's sample file; None only where the run opted out of it; else the test fails."""
    if SHARED_SAMPLES.exists():
        return SHARED_SAMPLES
    if os.environ.get(WITHOUT_SHARED_SAMPLES) == "1":
        return None
    pytest.fail(
        f"the exercise's sample file is missing: {SHARED_SAMPLES} (the project's parent directory must hold"
        f" shared/); where it cannot exist, set {WITHOUT_SHARED_SAMPLES}=1 to skip the checks that need it",
        pytrace=False,
    )


@pytest.fixture
def shared_samples() -> Path:
    path = shared_samples_path()
    if path is None:
        pytest.skip(f"{WITHOUT_SHARED_SAMPLES}=1: the exercise's samples are not checked in this run")
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the tests marked long first, longest first, the rest in their order.

    ``make test`` runs ``--dist loadgroup``: the workers take tests (or a whole
    ``xdist_group``, which goes to one worker, the largest group first) in this order as they
    free up, so the long ones run at the same time on every worker from the start (the
    longest-first rule) and the short ones fill the gaps at the end. A single process keeps
    pytest's own order.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: -expected_seconds(item))  # stable: the rest keep their order


def expected_seconds(item: pytest.Item) -> float:
    """A test's ``long(seconds)`` mark (the closest one: a parameter's before its function's); 0 if none."""
    mark = item.get_closest_marker("long")
    return float(mark.args[0]) if mark else 0.0
