import pytest

from etl import runtime, settings
from etl.errors import ConfigError
from etl.sealing import new_key
from tests.conftest import MASKING_KEY


def test_defaults() -> None:
    s = settings.load({})
    assert s.sqs_queue_url == "http://localhost:4566/000000000000/login-queue"
    assert s.chunk_size == 500 and s.fetch_interval == 5.0 and s.fetch_seconds == 20.0


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


def test_repr_hides_secrets() -> None:
    s = settings.load({"ETL_MASKING_KEY": MASKING_KEY, "DATABASE_URL": "postgresql://u:pw@h/db"})
    assert MASKING_KEY not in repr(s) and "pw" not in repr(s)
