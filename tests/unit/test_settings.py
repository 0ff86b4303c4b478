import base64
from pathlib import Path

import pytest

from etl import settings
from etl.crypto.sealing import new_key
from etl.errors import ConfigError
from etl.worker import runtime
from tests.conftest import MASKING_KEY


def test_defaults() -> None:
    s = settings.load({})
    assert s.sqs_queue_url == "http://localhost:4566/000000000000/login-queue"
    assert s.chunk_size == 1000 and s.fetch_interval == 5.0 and s.fetch_seconds == 20.0


def test_missing_masking_key_refuses_with_a_hint() -> None:
    with pytest.raises(ConfigError, match=r"ETL_MASKING_KEY is not set.*etl keygen"):
        runtime.build(settings.load({"ETL_PAYLOAD_KEY": new_key()}))


def test_missing_payload_key_refuses() -> None:
    with pytest.raises(ConfigError, match="ETL_PAYLOAD_KEY is not set"):
        runtime.build(settings.load({"ETL_MASKING_KEY": MASKING_KEY}))


def test_invalid_payload_key_refuses_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as err:
        runtime.build(settings.load({"ETL_MASKING_KEY": MASKING_KEY, "ETL_PAYLOAD_KEY": "secret-but-wrong"}))
    assert "secret-but-wrong" not in str(err.value)


def test_bad_number_is_named() -> None:
    with pytest.raises(ConfigError, match="ETL_CHUNK_SIZE"):
        settings.load({"ETL_CHUNK_SIZE": "lots"})


def test_chunk_max_bytes_is_checked_at_start_up() -> None:
    assert settings.load({}).chunk_max_bytes == 983_040
    assert settings.load({"ETL_CHUNK_MAX_BYTES": "1048576"}).chunk_max_bytes == 1_048_576
    for bad, said in (("64k", "not a whole number"), ("1000", "at least 65536"), (str(2**30), "at most")):
        with pytest.raises(ConfigError, match=f"ETL_CHUNK_MAX_BYTES.*{said}|{said}.*ETL_CHUNK_MAX_BYTES"):
            settings.load({"ETL_CHUNK_MAX_BYTES": bad})


def test_repr_hides_secrets() -> None:
    s = settings.load({"ETL_MASKING_KEY": MASKING_KEY, "DATABASE_URL": "postgresql://u:pw@h/db"})
    assert MASKING_KEY not in repr(s) and "pw" not in repr(s)


# --- the vault key pair, and one key per purpose ---

VAULT = base64.urlsafe_b64encode(bytes(range(32))).decode()
PUBLIC = base64.urlsafe_b64encode(bytes(range(32, 64))).decode()
PRIVATE = base64.urlsafe_b64encode(bytes(range(64, 96))).decode()


def test_vault_key_pair_from_the_environment() -> None:
    s = settings.load({"ETL_VAULT_PUBLIC_KEY": f" {PUBLIC}\n", "ETL_VAULT_PRIVATE_KEY": f"{PRIVATE}, {VAULT} ,"})
    assert s.vault_public_key == PUBLIC
    assert s.vault_private_key == f"{PRIVATE},{VAULT}" and s.vault_private_keys == (PRIVATE, VAULT)
    assert s.vault_key == "" and settings.load({}).vault_private_keys == ()


def test_vault_keys_from_mounted_files(tmp_path: Path) -> None:
    (tmp_path / "public").write_text(PUBLIC + "\n")
    (tmp_path / "private").write_text(f"{PRIVATE}\n{VAULT}\n")  # one key per line works too
    (tmp_path / "legacy").write_text(new_key())
    s = settings.load(
        {
            "ETL_VAULT_PUBLIC_KEY_FILE": str(tmp_path / "public"),
            "ETL_VAULT_PRIVATE_KEY_FILE": str(tmp_path / "private"),
            "ETL_VAULT_KEY_FILE": str(tmp_path / "legacy"),
        }
    )
    assert (s.vault_public_key, s.vault_private_keys) == (PUBLIC, (PRIVATE, VAULT))
    assert s.vault_key == (tmp_path / "legacy").read_text()
    # the variable itself wins over its file, as for ETL_VAULT_KEY
    assert settings.load({"ETL_VAULT_PUBLIC_KEY": VAULT, "ETL_VAULT_PUBLIC_KEY_FILE": "/nonexistent"}).vault_public_key


@pytest.mark.parametrize("name", ["ETL_VAULT_KEY_FILE", "ETL_VAULT_PUBLIC_KEY_FILE", "ETL_VAULT_PRIVATE_KEY_FILE"])
def test_an_unreadable_key_file_is_named(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"{name} cannot be read"):
        settings.load({name: str(tmp_path / "missing")})


def test_repr_hides_the_vault_keys() -> None:
    s = settings.load({"ETL_VAULT_KEY": VAULT, "ETL_VAULT_PUBLIC_KEY": PUBLIC, "ETL_VAULT_PRIVATE_KEY": PRIVATE})
    text = repr(s)
    assert all(k not in text and k[:8] not in text for k in (VAULT, PUBLIC, PRIVATE))
    assert "vault=on" in text and "vault_private_keys=1" in text


PAYLOAD = new_key()
# Every setting that holds a key, with a distinct valid value; each pair is then made equal.
KEYS = {
    "ETL_MASKING_KEY": MASKING_KEY,
    "ETL_PAYLOAD_KEY": PAYLOAD,
    "ETL_VAULT_KEY": VAULT,
    "ETL_VAULT_PUBLIC_KEY": PUBLIC,
    "ETL_VAULT_PRIVATE_KEY": PRIVATE,
}
PAIRS = [(a, b) for i, a in enumerate(KEYS) for b in list(KEYS)[i + 1 :]]


def test_distinct_keys_load() -> None:
    s = settings.load(KEYS)
    assert (s.masking_key, s.payload_keys, s.vault_key) == (MASKING_KEY, (PAYLOAD,), VAULT)


@pytest.mark.parametrize(("first", "second"), PAIRS, ids=[f"{a}={b}" for a, b in PAIRS])
def test_one_key_in_two_settings_is_refused_naming_both(first: str, second: str) -> None:
    value = KEYS[first] if first != "ETL_MASKING_KEY" else KEYS[second]  # a masking key may be any text
    env = {**KEYS, first: value, second: value}
    with pytest.raises(ConfigError) as err:
        settings.load(env)
    message = str(err.value)
    assert first in message and second in message and "etl keygen" in message
    assert value not in message and value[:8] not in message


def test_the_same_key_in_two_encodings_is_still_one_key() -> None:
    """The private key pasted as the public one, re-encoded with the standard alphabet, unpadded."""
    other_spelling = base64.b64encode(base64.urlsafe_b64decode(PRIVATE)).decode().rstrip("=")
    with pytest.raises(ConfigError, match="ETL_VAULT_PUBLIC_KEY and ETL_VAULT_PRIVATE_KEY"):
        settings.load({**KEYS, "ETL_VAULT_PUBLIC_KEY": other_spelling})


def test_a_key_repeated_in_a_rotation_list_or_reused_from_one_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ETL_PAYLOAD_KEY \(key 1 of 2\) and ETL_PAYLOAD_KEY \(key 2 of 2\)"):
        settings.load({"ETL_PAYLOAD_KEY": f"{PAYLOAD},{PAYLOAD}"})
    old = new_key()
    with pytest.raises(ConfigError, match=r"ETL_PAYLOAD_KEY \(key 2 of 2\) and ETL_VAULT_PRIVATE_KEY \(key 2 of 2\)"):
        settings.load({"ETL_PAYLOAD_KEY": f"{PAYLOAD},{old}", "ETL_VAULT_PRIVATE_KEY": f"{PRIVATE},{old}"})


def test_the_kinesis_client_is_lean_by_default_and_boto3_on_request() -> None:
    base = {"ETL_MASKING_KEY": "x" * 32}
    assert settings.load(base).kinesis_client == "lean"
    assert settings.load({**base, "ETL_KINESIS_CLIENT": " BOTO3 "}).kinesis_client == "boto3"
    with pytest.raises(ConfigError, match="ETL_KINESIS_CLIENT must be lean or boto3"):
        settings.load({**base, "ETL_KINESIS_CLIENT": "fast"})


def test_the_sqs_client_is_lean_by_default_and_boto3_on_request() -> None:
    base = {"ETL_MASKING_KEY": "m" * 32}
    assert settings.load(base).sqs_client == "lean"
    assert settings.load({**base, "ETL_SQS_CLIENT": " BOTO3 "}).sqs_client == "boto3"
    with pytest.raises(ConfigError, match="ETL_SQS_CLIENT must be lean or boto3"):
        settings.load({**base, "ETL_SQS_CLIENT": "fast"})


def test_a_misspelt_setting_is_named_with_the_nearest_real_one() -> None:
    with pytest.raises(ConfigError, match=r"ETL_CHUNKSIZE is not a setting of etl: did you mean ETL_CHUNK_SIZE\?"):
        settings.load({"ETL_CHUNKSIZE": "10"})
    with pytest.raises(ConfigError, match=r"ETL_NOTHING_LIKE_IT is not a setting of etl: docs/settings.md lists them"):
        settings.load({"ETL_NOTHING_LIKE_IT": "1"})
    settings.load({"ETL_TEST_DATABASE_URL": "x", "ETL_EMBEDDED": "never", "OTHER": "x"})  # tests' own, others'


def test_a_bad_number_says_what_to_set() -> None:
    with pytest.raises(ConfigError, match=r"ETL_SQS_THREADS='abc' is not a whole number: set a number of at least 1"):
        settings.load({"ETL_SQS_THREADS": "abc"})


def test_a_visibility_within_the_chunk_time_limit_is_a_contradiction() -> None:
    (line,) = settings.contradictions(settings.load({"SQS_VISIBILITY_TIMEOUT": "60"}))
    assert "SQS_VISIBILITY_TIMEOUT=60 does not exceed a chunk's hard time limit (90 s)" in line
    assert settings.contradictions(settings.load({})) == []


def test_a_fetch_budget_the_task_time_limit_would_cut_is_refused() -> None:
    base = {"ETL_MASKING_KEY": "x" * 32}
    assert settings.load({**base, "ETL_FETCH_SECONDS": "50"}).fetch_seconds == 50
    with pytest.raises(ConfigError, match="ETL_FETCH_SECONDS must be at most 50 seconds"):
        settings.load({**base, "ETL_FETCH_SECONDS": "75"})


def test_more_sqs_threads_than_a_process_can_hold_connections_for_are_refused() -> None:
    assert settings.load({"ETL_SQS_THREADS": "100"}).sqs_threads == 100
    with pytest.raises(ConfigError, match="ETL_SQS_THREADS must be at most 100"):
        settings.load({"ETL_SQS_THREADS": "5000"})


@pytest.mark.parametrize(
    ("name", "bad", "said"),
    [
        ("SQS_VISIBILITY_TIMEOUT", "43201", "at most 43200 seconds"),
        ("ETL_MASKING_KEY_VERSION", "1000000000000000", "at most 999999"),
    ],
)
def test_values_the_pipeline_could_never_use_are_refused_at_start_up(name: str, bad: str, said: str) -> None:
    """SQS refuses a visibility over 12 hours on every receive, and a key version of 15 digits makes
    tokens longer than their column (every message rejected): both refused before anything runs."""
    with pytest.raises(ConfigError, match=f"{name} must be {said}"):
        settings.load({name: bad})
    assert (
        settings.load({"SQS_VISIBILITY_TIMEOUT": "43200", "ETL_MASKING_KEY_VERSION": "999999"}).visibility_timeout
        == 43_200
    )


@pytest.mark.parametrize("name", ["ETL_CHUNK_LINGER", "ETL_FETCH_SECONDS", "ETL_FETCH_INTERVAL"])
@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf", "infinity"])
def test_a_number_that_is_not_finite_is_refused(name: str, bad: str) -> None:
    """An outside review: nan passed every bound (each comparison with it is false), so a nan
    linger never handed on a partial chunk and a nan fetch budget failed every fetch run."""
    with pytest.raises(ConfigError, match=f"{name}='{bad}' is not a finite number"):
        settings.load({name: bad})
