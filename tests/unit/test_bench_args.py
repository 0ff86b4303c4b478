"""`python -m bench.run`'s arguments are checked before any server starts (bench.run.parse)."""

import pytest

from bench import run


@pytest.mark.parametrize("only", ["", ",", " , ", "nope", "steady,nope", "STEADY"])
def test_an_only_that_names_no_real_step_is_refused(only: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside review: ``--only ''`` ran every step (and rewrote results.json), ``--only ,`` none."""
    with pytest.raises(SystemExit) as exited:
        run.parse(["--only", only])
    assert exited.value.code == 2
    assert "--only:" in capsys.readouterr().err


def test_real_steps_are_taken() -> None:
    assert run.parse(["--only", "capacity,steady,flatness"]).only == "capacity,steady,flatness"
    assert run.parse([]).only is None
