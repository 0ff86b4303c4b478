"""Shared test setup: where the exercise's sample file lives (read, never copied).

The exercise's 100 sample events sit beside the project, in ``../shared/data`` (this machine and
its CI have it). A test that needs them fails, not skips, when the file is missing: a promised
check that quietly does not run is a failure. Where the file cannot exist (a clone on its own,
GitHub's runners), set ``ETL_TEST_WITHOUT_SHARED_SAMPLES=1``: those tests are then skipped, and
pytest's summary names each skip (``-ra``). The pipeline test then runs on 100 generated events.

The integration tests' servers are started by tests/support.py (see there).
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
