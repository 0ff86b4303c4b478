"""The chaos scenarios CI runs on every change (small scale): worker kills, a Redis restart
(broker contents lost) and a hostile message storm. `make chaos` runs all seven, larger."""

from pathlib import Path

import pytest

from chaos import harness
from tests.support import MotoServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def moto() -> MotoServer:
    server = MotoServer()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.mark.parametrize("number", [1, 3, 7])
def test_nothing_lost_or_doubled(number: int, moto: MotoServer, tmp_path: Path) -> None:
    scenario = next(s for s in harness.SCENARIOS if s.number == number)
    result = harness.run(scenario, 100, moto, tmp_path, timeout=180)
    print(harness.table([result]))
    assert result.lost == 0 and result.duplicates == 0 and result.dead_lettered == 0, harness.table([result])
    assert result.left_in_queue == 0 and result.rows == result.expected_rows, harness.table([result])
    assert result.ok, harness.table([result])  # includes: no message processed twice where no fault redelivers
