import gzip
import json
from pathlib import Path

from etl.model import events
from etl.ops import samples


def test_generator_is_deterministic_and_mixes_in_duplicates_and_malformed() -> None:
    bodies = samples.generate(500, seed=3)
    assert bodies == samples.generate(500, seed=3) and bodies != samples.generate(500, seed=4)
    parsed = [events.parse_event(b) for b in bodies]
    good = [p for p in parsed if isinstance(p, events.LoginEvent)]
    assert 0 < len(parsed) - len(good) < 50
    assert len({e.ip for e in good}) < len(good) and len({e.device_id for e in good}) < len(good)


def test_reads_array_jsonl_and_gz(tmp_path: Path) -> None:
    items = [{"a": 1}, {"b": 2}]
    (tmp_path / "a.json").write_text(json.dumps(items))
    (tmp_path / "b.jsonl").write_text('{"a": 1}\nnot json\n\n')
    (tmp_path / "c.json.gz").write_bytes(gzip.compress(json.dumps(items).encode()))
    assert samples.read_bodies(tmp_path / "a.json") == ['{"a": 1}', '{"b": 2}']
    assert samples.read_bodies(tmp_path / "b.jsonl") == ['{"a": 1}', "not json"]
    assert samples.read_bodies(tmp_path / "c.json.gz") == ['{"a": 1}', '{"b": 2}']


def test_the_demo_seeds_the_same_shared_samples_the_tests_read() -> None:
    """The demo looks for ../shared beside the checkout (it once looked inside it and never found
    the exercise's samples)."""
    from etl.demo import demo
    from tests.conftest import SHARED_SAMPLES

    assert demo.SHARED_SAMPLES == SHARED_SAMPLES
    assert demo.SHARED_SAMPLES.parent.parent.parent == Path(__file__).resolve().parents[3]
