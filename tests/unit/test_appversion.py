import pytest
from hypothesis import given
from hypothesis import strategies as st

from etl.model import appversion


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("2.3.0", 2_003_000),
        ("3.7", 3_007_000),
        ("0.96", 96_000),
        ("10", 10_000_000),
        ("0.0.1", 1),
        ("2146.999.999", 2_146_999_999),
    ],
)
def test_known_codes(text: str, code: int) -> None:
    assert appversion.encode(text) == code


def test_the_classic_collision_does_not_happen() -> None:
    # replace('.', '') maps both of these to 230
    assert appversion.encode("2.3.0") != appversion.encode("23.0")
    assert appversion.encode("1.11") != appversion.encode("11.1")


def test_numeric_component_order() -> None:
    ordered = ["0.1", "0.9", "0.10", "1.0", "1.9", "1.10", "2.3.0", "2.3.1", "23.0"]
    codes = [appversion.encode(v) for v in ordered]
    assert codes == sorted(codes) and len(set(codes)) == len(codes)


def test_equal_versions_share_a_code_and_decode_canonically() -> None:
    assert appversion.encode("2") == appversion.encode("2.0") == appversion.encode("2.0.0") == appversion.encode("2.00")
    assert appversion.decode(appversion.encode("6.02")) == "6.2.0"


@pytest.mark.parametrize(
    "bad", ["", " 1.0", "1.0 ", "1..0", "1.2.3.4", "v1", "1.2-beta", "1.1000", "2147.0", "-1", "１.０"]
)
def test_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        appversion.encode(bad)


versions = st.tuples(st.integers(0, appversion.MAX_MAJOR), st.integers(0, 999), st.integers(0, 999))


@given(versions, versions)
def test_order_preserved_and_no_collisions(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    code_a, code_b = (appversion.encode(".".join(map(str, v))) for v in (a, b))
    assert (code_a < code_b) == (a < b)
    assert (code_a == code_b) == (a == b)


@given(versions)
def test_decode_round_trips(v: tuple[int, int, int]) -> None:
    text = ".".join(map(str, v))
    assert appversion.decode(appversion.encode(text)) == text
    assert appversion.encode(text) < 2**31  # fits Postgres integer
