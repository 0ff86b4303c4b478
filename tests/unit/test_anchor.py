"""etl.pii.anchor with file:// locations (a tmp directory) and the pure check()."""

import json
import stat
from pathlib import Path

import pytest

from etl.errors import ConfigError
from etl.pii import anchor
from etl.pii.anchor import Anchor

H1, H2, H3 = "a" * 64, "b" * 64, "c" * 64


def at(second: int) -> str:
    return f"2026-01-02T03:04:{second:02d}.000001+00:00"


def url(directory: Path) -> str:
    return directory.as_uri()


def test_write_then_read_all_round_trip(tmp_path: Path) -> None:
    where = tmp_path / "anchors" / "nested"  # created on first write
    written = [Anchor(12, H2, at(5)), Anchor(3, H1, at(9)), Anchor(12, H2, at(1))]
    locations = [anchor.write(url(where), a) for a in written]

    assert anchor.read_all(url(where)) == [written[1], written[2], written[0]]  # by id, then time
    for a, location in zip(written, locations, strict=True):
        path = Path(location.removeprefix("file://"))
        assert path.parent == where
        assert json.loads(path.read_bytes()) == {"id": a.id, "hash": a.hash, "at": a.at}  # nothing else
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert sorted(p.name for p in where.iterdir()) == [a.name for a in anchor.read_all(url(where))]
    assert not list(where.glob(".*")), "no temp file left behind"


def test_names_sort_by_id_then_time() -> None:
    names = [Anchor(i, H1, at(s)).name for i, s in [(9, 59), (10, 0), (10, 1), (123456789012, 0)]]
    assert names == sorted(names)
    assert names[0] == "00000000000000000009-20260102T030459000001Z.json"


def test_two_writes_never_overwrite(tmp_path: Path) -> None:
    first, later = Anchor(7, H1, at(1)), Anchor(7, H1, at(2))
    anchor.write(url(tmp_path), first)
    anchor.write(url(tmp_path), later)
    assert anchor.read_all(url(tmp_path)) == [first, later]

    clash = Anchor(7, H2, at(1))  # same row and time as `first`: same name
    with pytest.raises(ConfigError, match="exists already"):
        anchor.write(url(tmp_path), clash)
    assert anchor.read_all(url(tmp_path)) == [first, later]
    assert not list(tmp_path.glob(".*"))


def test_anchor_now_is_utc_and_named_after_it() -> None:
    a = Anchor.now(5, H1)
    assert a.at.endswith("+00:00")
    assert a.name.startswith("00000000000000000005-")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"[1, 2]",
        json.dumps({"id": 7, "hash": H1}).encode(),
        json.dumps({"id": 7, "hash": H1, "at": at(1), "user": "someone"}).encode(),  # nothing else, ever
        json.dumps({"id": "7", "hash": H1, "at": at(1)}).encode(),
        json.dumps({"id": 7, "hash": "not hex", "at": at(1)}).encode(),
        json.dumps({"id": 7, "hash": H1, "at": "2026-01-02T03:04:01.000001"}).encode(),  # no time zone
        json.dumps({"id": 8, "hash": H1, "at": at(1)}).encode(),  # another row than the name says
        b"\xff\xfe",
    ],
)
def test_malformed_anchor_is_an_error_naming_it(tmp_path: Path, body: bytes) -> None:
    anchor.write(url(tmp_path), Anchor(6, H1, at(1)))
    bad = tmp_path / Anchor(7, H1, at(1)).name
    bad.write_bytes(body)
    with pytest.raises(ConfigError, match=bad.name):
        anchor.read_all(url(tmp_path))


def test_stray_file_is_malformed_but_hidden_temp_files_and_subdirectories_are_not_anchors(tmp_path: Path) -> None:
    a = Anchor(1, H1, at(1))
    anchor.write(url(tmp_path), a)
    (tmp_path / ".anchor-crashed.tmp").write_text("{")  # a write that died before its link
    (tmp_path / "older").mkdir()
    assert anchor.read_all(url(tmp_path)) == [a]
    (tmp_path / "README").write_text("hello")
    with pytest.raises(ConfigError, match="README"):
        anchor.read_all(url(tmp_path))


def test_missing_or_empty_location_has_no_anchors(tmp_path: Path) -> None:
    assert anchor.read_all(url(tmp_path / "never-written")) == []
    assert anchor.read_all(url(tmp_path)) == []


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "/abs/path",
        "relative/dir",
        "file://relative/dir",
        "http://example.com/x",
        "gs://bucket/p",
        "s3://",
        "s3:///p",
    ],
)
def test_unknown_location_is_a_config_error_with_the_accepted_forms(bad: str) -> None:
    for call in (lambda: anchor.read_all(bad), lambda: anchor.write(bad, Anchor(1, H1, at(1)))):
        with pytest.raises(ConfigError, match=r"ETL_AUDIT_ANCHOR=file:///path or s3://bucket/prefix"):
            call()


def test_file_in_place_of_the_directory_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="refused"):
        anchor.write(url(tmp_path / "f"), Anchor(1, H1, at(1)))


@pytest.mark.parametrize(
    "args",
    [(-1, H1, at(1)), (True, H1, at(1)), (1, "", at(1)), (1, "ip=10.0.0.1", at(1)), (1, H1, "yesterday")],
)
def test_invalid_anchor_cannot_be_made(args: tuple[int, str, str]) -> None:
    with pytest.raises(ValueError):
        Anchor(*args)


def test_retention_below_one_day_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="retention"):
        anchor.write(url(tmp_path), Anchor(1, H1, at(1)), retention_days=0)


# check()

HEADS = {1: H1, 2: H2, 3: H3}
ANCHORS = [Anchor(1, H1, at(1)), Anchor(3, H3, at(3))]


def test_check_passes_a_consistent_chain() -> None:
    assert anchor.check(HEADS, 3, ANCHORS) == []
    assert anchor.check(HEADS, 5, ANCHORS) == []  # rows added since the last anchor
    assert anchor.check({}, None, []) == []
    assert anchor.check(HEADS, 3, []) == []


def test_check_catches_a_deleted_row() -> None:
    problems = anchor.check({3: H3}, 3, ANCHORS)
    assert len(problems) == 1
    assert "row 1" in problems[0] and "deleted" in problems[0]


def test_check_catches_a_rewritten_row() -> None:
    problems = anchor.check({1: H1, 2: H2, 3: "d" * 64}, 3, ANCHORS)
    assert len(problems) == 1
    assert "row 3" in problems[0] and "rewritten" in problems[0]


def test_check_catches_a_truncated_log() -> None:
    problems = anchor.check({}, None, ANCHORS)
    assert len(problems) == 1
    assert "2 anchor(s)" in problems[0] and "no rows" in problems[0] and "truncated" in problems[0]


def test_check_catches_deleted_newest_rows() -> None:
    problems = anchor.check({1: H1, 2: H2}, 2, ANCHORS)
    assert len(problems) == 1
    assert "row 3" in problems[0] and "newest audit row is 2" in problems[0] and "deleted" in problems[0]


def test_check_reports_every_problem() -> None:
    anchors = [Anchor(1, H1, at(1)), Anchor(2, H2, at(2)), Anchor(3, H3, at(3)), Anchor(9, H1, at(4))]
    problems = anchor.check({2: "e" * 64, 3: H3}, 5, anchors)
    assert len(problems) == 3
    assert "row 1" in problems[0] and "deleted" in problems[0]
    assert "row 2" in problems[1] and "rewritten" in problems[1]
    assert "row 9" in problems[2] and "newest rows were deleted" in problems[2]
