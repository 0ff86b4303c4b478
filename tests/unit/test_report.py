"""`etl report`'s text: stored fields reach the terminal escaped, never as control codes."""

from etl.ops import report


def test_control_characters_and_bidi_overrides_come_out_escaped() -> None:
    hostile = "fr\x1b]0;owned\x07\x1b[2J\x9b31m\u202egnp.exe"
    shown = report.printable(hostile)
    assert not any(c in shown for c in ("\x1b", "\x07", "\x9b", "\u202e"))
    assert shown == "fr\\u001b]0;owned\\u0007\\u001b[2J\\u009b31m\\u202egnp.exe"
    assert report.printable("zh-Hant-TW é ß 日本") == "zh-Hant-TW é ß 日本"  # letters stay letters


def test_every_table_cell_is_printable() -> None:
    text = report.render({"locales": [("fr\x1b[2J", 3, 2)]})
    assert "\x1b" not in text and "fr\\u001b[2J" in text


def test_report_shows_tokens_whole_so_they_can_be_pasted_into_reveal() -> None:
    from etl.ops import report

    token = "k1:" + "ab" * 32
    assert token in report.table(["ip token", "users"], [(token, 2)])


def test_ids_that_only_look_alike_print_apart() -> None:
    """An officer erasing `alice` must see that `alice\\u200d` is another user (ingest accepts both)."""
    lookalikes = [
        "alice\u200d",
        "alice\u200b",
        "alice\ufeff",
        "ali\u00adce",
        "alice\u2028",
        "alice\U000e0041",
        "\u3164",
    ]
    shown = {report.printable(v) for v in lookalikes}
    assert len(shown) == len(lookalikes) and "alice" not in shown
    assert all(s.isascii() or s == report.printable(s) for s in shown)
