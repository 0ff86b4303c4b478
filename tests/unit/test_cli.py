"""Small truths of the `etl` command (issue 22, item 7): refusals of bad numbers, --help, progress."""

import pytest

from etl.ops import cli
from etl.progress import Bar


@pytest.mark.parametrize("args", [["seed", "--count", "-5"], ["seed", "--count", "0"], ["report", "--limit", "x"]])
def test_a_count_below_one_is_refused_with_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2 and "--" in capsys.readouterr().err


def test_help_speaks_of_both_sources_and_the_first_steps() -> None:
    text = cli.parser().format_help()
    assert "SQS or Kinesis" in text and "etl doctor" in text and "doctor" in text


def test_a_progress_bar_off_a_terminal_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with Bar("msg") as bar:
        bar.start(250, "seeding")
        for step in (100, 100, 50):
            bar.advance(step)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("seeding: 250/250 msg in ") and "100%" not in err


def test_health_that_cannot_check_still_answers_in_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    monkeypatch.setenv("ETL_MASKING_KEY", "x" * 32)
    assert cli.main(["health", "--json"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["healthy"] is False and verdict["reasons"][0].startswith("cannot check: Redis")
