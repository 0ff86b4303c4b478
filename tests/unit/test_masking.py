import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etl.crypto.masking import Masker, canonical_ip
from etl.errors import ConfigError
from tests.conftest import MASKING_KEY


def test_token_format_and_determinism() -> None:
    masker = Masker(MASKING_KEY)
    token = masker.mask_ip("199.172.111.135")
    assert re.fullmatch(r"k1:[0-9a-f]{64}", token)
    assert Masker(MASKING_KEY).mask_ip("199.172.111.135") == token


def test_different_values_and_keys_give_different_tokens() -> None:
    masker = Masker(MASKING_KEY)
    assert masker.mask_ip("10.0.0.1") != masker.mask_ip("10.0.0.2")
    assert Masker(MASKING_KEY + "x").mask_ip("10.0.0.1") != masker.mask_ip("10.0.0.1")


def test_fields_are_separated() -> None:
    masker = Masker(MASKING_KEY)
    assert masker.mask_ip("abc") != masker.mask_device_id("abc")


def test_key_version_is_in_the_token() -> None:
    assert Masker(MASKING_KEY, version=7).mask_device_id("d").startswith("k7:")


def test_equivalent_ip_spellings_share_a_token() -> None:
    masker = Masker(MASKING_KEY)
    assert masker.mask_ip("2001:DB8::1") == masker.mask_ip("2001:db8:0:0::1")
    assert canonical_ip("not an ip") == "not an ip"


def test_token_is_not_a_plain_hash() -> None:
    import hashlib

    token = Masker(MASKING_KEY).mask_ip("1.2.3.4")
    assert hashlib.sha256(b"1.2.3.4").hexdigest() not in token


def test_short_key_refused() -> None:
    with pytest.raises(ConfigError, match="at least 32"):
        Masker("short")


def test_repr_hides_key() -> None:
    assert MASKING_KEY not in repr(Masker(MASKING_KEY))


@given(st.ip_addresses(v=4).map(str) | st.from_regex(r"\A[0-9]{1,4}(\.[0-9]{1,4}){3}\Z") | st.text(max_size=20))
def test_the_ipv4_fast_path_agrees_with_ipaddress(text: str) -> None:
    try:
        expected = str(ipaddress.ip_address(text))
    except ValueError:
        expected = text
    assert canonical_ip(text) == expected


@given(st.text(min_size=32, max_size=200), st.sampled_from(["ip", "device_id"]), st.text(max_size=300))
def test_tokens_are_hmac_sha256_of_field_and_value(key: str, field: str, value: str) -> None:
    """The hand-keyed HMAC gives hmac.new's MAC for every key length (shorter than, equal to and
    longer than SHA-256's 64-byte block, non-ASCII keys included)."""
    import hashlib
    import hmac

    try:
        message = field.encode() + b"\x1f" + value.encode("utf-8")
    except UnicodeEncodeError:
        return  # validation refuses unpaired surrogates before masking
    expected = "k1:" + hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()
    assert Masker(key).token(field, value) == expected
