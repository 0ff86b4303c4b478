"""Shared test setup: where the exercise's sample file lives (read, never copied).

The integration tests' servers are started by tests/support.py (see there).
"""

from pathlib import Path

import pytest

SHARED_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "sample_logins.json.gz"
MASKING_KEY = "unit-test-masking-key-0123456789abcdef"


@pytest.fixture
def shared_samples() -> Path:
    if not SHARED_SAMPLES.exists():
        pytest.skip(f"shared sample file not present at {SHARED_SAMPLES}")
    return SHARED_SAMPLES
