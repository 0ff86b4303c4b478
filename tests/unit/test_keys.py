"""Strict key decoding and one-key-one-purpose (etl.crypto.keys), and the Sealer's use of them."""

import base64
import os

import pytest

from etl.crypto import keys
from etl.crypto.sealing import Sealer, new_key
from etl.errors import ConfigError

RAW = bytes(range(32))
GOOD = base64.urlsafe_b64encode(RAW).decode()  # "AAECAwQF...Hx8=" style, with one "=" of padding


def refused(text: str, **kw: int) -> str:
    """decode() raises ConfigError; its message, checked to name the setting and the fix, never the key."""
    with pytest.raises(ConfigError) as err:
        keys.decode(text, "ETL_TEST_KEY", **kw)
    message = str(err.value)
    assert "ETL_TEST_KEY" in message and "etl keygen" in message
    assert text.strip() not in message
    for part in (text[:8], text[-8:]):
        if len(part.strip()) >= 4:
            assert part.strip() not in message
    return message


def test_a_generated_key_decodes_in_either_alphabet_with_or_without_padding() -> None:
    key = os.urandom(32)
    url = base64.urlsafe_b64encode(key).decode()
    std = base64.b64encode(key).decode()
    for text in (url, std, url.rstrip("="), std.rstrip("="), f"  {url}\n"):
        assert keys.decode(text, "K", length=32) == key
    assert keys.decode(new_key(), "K", length=32)


@pytest.mark.parametrize(
    "junk",
    [
        GOOD[:10] + " " + GOOD[10:],  # embedded space
        GOOD[:10] + "\n" + GOOD[10:],  # embedded newline
        GOOD[:10] + "!" + GOOD[10:],  # punctuation
        GOOD[:10] + "." + GOOD[10:],
        '"' + GOOD + '"',  # pasted with quotes
        GOOD[:10] + "é" + GOOD[10:],  # non-ASCII
        GOOD[:20] + "=" + GOOD[20:],  # padding in the middle
        GOOD + "===",  # too much padding
        "=" + GOOD,  # leading padding
    ],
)
def test_junk_characters_are_refused(junk: str) -> None:
    refused(junk, length=32)


def test_junk_that_fernet_would_silently_skip_is_refused_by_the_sealer() -> None:
    """The old Sealer handed keys to Fernet, whose decoder drops non-alphabet characters."""
    key = new_key()
    junk = key[:10] + "!" + key[10:]  # Fernet(junk) works and is *key*: the typo goes unnoticed
    with pytest.raises(ConfigError, match=r"ETL_PAYLOAD_KEY .*etl keygen") as err:
        Sealer([junk])
    assert key not in str(err.value) and key[:10] not in str(err.value)
    with pytest.raises(ConfigError, match=r"ETL_PAYLOAD_KEY \(key 2 of 2\)"):
        Sealer([new_key(), junk])


@pytest.mark.parametrize(
    "text",
    [
        GOOD.rstrip("=")[:-2],  # two characters short: 4n+1 characters can never be base64
        GOOD.rstrip("=") + "==",  # padding present but the wrong amount
        "QR==",  # non-canonical: the unused low bits are not zero (decodes like "QQ==")
    ],
)
def test_wrong_padding_or_non_canonical_encoding_is_refused(text: str) -> None:
    assert "not valid base64" in refused(text)


@pytest.mark.parametrize("size", [16, 31, 33, 64])
def test_wrong_length_is_refused_with_the_lengths_only(size: int) -> None:
    text = base64.urlsafe_b64encode(os.urandom(size)).decode()
    message = refused(text, length=32)
    assert f"must decode to 32 bytes, got {size}" in message
    with pytest.raises(ConfigError, match=r"ETL_PAYLOAD_KEY must decode to 32 bytes"):
        Sealer([text])


def test_minimum_length() -> None:
    assert keys.decode(base64.urlsafe_b64encode(b"x" * 40).decode(), "K", minimum=32) == b"x" * 40
    assert "at least 32 bytes, got 16" in refused(base64.urlsafe_b64encode(b"y" * 16).decode(), minimum=32)


def test_empty_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="ETL_TEST_KEY is empty"):
        keys.decode("  ", "ETL_TEST_KEY")


def test_distinct_keys_pass_and_empty_ones_are_skipped() -> None:
    keys.require_distinct({"A": new_key(), "B": new_key(), "C": "", "D": "", "E": b""})


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (GOOD, GOOD),  # the same text
        (GOOD, f" {GOOD}\n"),  # the same text, trimmed
        (GOOD, base64.b64encode(RAW).decode().rstrip("=")),  # the same bytes, other alphabet and padding
        (GOOD, RAW),  # the same bytes, given decoded
        ("not base64 at all, but a long masking key!", "not base64 at all, but a long masking key!"),
    ],
)
def test_one_key_serving_two_purposes_is_refused_naming_both_settings(first: str, second: str | bytes) -> None:
    with pytest.raises(ConfigError) as err:
        keys.require_distinct({"ETL_ONE": first, "ETL_OTHER": new_key(), "ETL_TWO": second})
    message = str(err.value)
    assert "ETL_ONE and ETL_TWO" in message and "etl keygen" in message
    assert "ETL_OTHER" not in message
    assert GOOD not in message and GOOD[:8] not in message and "long masking key" not in message
