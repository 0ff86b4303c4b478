"""What the write path sends Postgres as text: COPY lines and the erasure query's users array."""

from datetime import date

from hypothesis import given
from hypothesis import strategies as st

from etl.model.records import LoginRow
from etl.store import ingest


@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=20),
            st.text(min_size=1, max_size=20),
            st.text(max_size=20),
            st.none() | st.text(max_size=8),
            st.integers(0, 2_146_999_999),
        ),
        max_size=20,
    )
)
def test_copy_lines_escape_exactly_what_copy_text_format_escapes(
    fields: list[tuple[str, str, str, str | None, int]],
) -> None:
    rows = [LoginRow(m, u, d, "k1:" + "a" * 64, "erased:x", loc, v, date(2026, 1, 2)) for m, u, d, loc, v in fields]

    def field(value: object) -> str:  # COPY's text format, spelled out
        if value is None:
            return "\\N"
        return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")

    expected = "".join("\t".join(field(getattr(r, c)) for c in ingest._COLUMNS.split(", ")) + "\n" for r in rows)
    assert ingest.copy_text(rows).getvalue() == expected


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=10), max_size=10))
def test_the_users_array_literal_quotes_every_user(users: list[str]) -> None:
    literal = ingest.users_array(users)
    # read back as Postgres reads a quoted array element: a backslash takes the next character as is
    elements, i = [], 1
    while i < len(literal) - 1:
        assert literal[i] == '"'
        i, value = i + 1, []
        while literal[i] != '"':
            if literal[i] == "\\":
                i += 1
            value.append(literal[i])
            i += 1
        elements.append("".join(value))
        i += 1
        if literal[i] == ",":
            i += 1
    assert elements == users
