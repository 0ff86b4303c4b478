"""The Postgres write path against a real server: COPY escaping and idempotency."""

from datetime import date

import pytest

from etl import store
from etl.errors import TerminalError
from etl.model.records import ChunkResult, LoginRow

pytestmark = pytest.mark.integration

AWKWARD = ["tab\there", "new\nline", "back\\slash", "\\N", "cr\rlf", "quote'\"", "ünïcödé ✓", "\\.", ""]


def row(i: int, text: str) -> LoginRow:
    return LoginRow(f"m{i}", text, text[:32], "k1:ip", "k1:dev", text[:32] or None, 1_002_003, date(2026, 1, 2))


def test_copy_stores_awkward_text_verbatim(conn: store.Connection) -> None:
    rows = [row(i, t) for i, t in enumerate(AWKWARD)]
    assert store.write_chunk(conn, ChunkResult(rows, [])).inserted == len(rows)
    stored = store.query(conn, "SELECT message_id, user_id, device_type, locale FROM user_logins ORDER BY message_id")
    expected = sorted(rows, key=lambda r: r.message_id)
    assert stored == [(r.message_id, r.user_id, r.device_type, r.locale) for r in expected]


def test_rewriting_a_chunk_inserts_nothing_new(conn: store.Connection) -> None:
    rows = [row(i, f"u{i}") for i in range(5)]
    assert store.write_chunk(conn, ChunkResult(rows, [])).inserted == 5
    again = store.write_chunk(conn, ChunkResult([*rows, row(9, "new")], []))
    assert (again.inserted, again.duplicates) == (1, 5)
    assert store.query(conn, "SELECT count(*) FROM user_logins") == [(6,)]


def test_a_failed_first_write_does_not_break_the_next(conn: store.Connection) -> None:
    bad = LoginRow("x", "u", "d" * 40, "k1:ip", "k1:dev", None, 1, date(2026, 1, 1))  # too long for varchar(32)
    with pytest.raises(TerminalError, match="22001"):  # string too long: bad data, never retried
        store.write_chunk(conn, ChunkResult([bad], []))
    assert store.write_chunk(conn, ChunkResult([row(1, "ok")], [])).inserted == 1
