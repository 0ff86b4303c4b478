"""Typed settings, read once from the environment (the only module that reads it).

Every setting has a documented default here and in README "Settings" and .env.example.
Secrets have no default: a process that needs one refuses to start without it.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass

from etl.errors import ConfigError

DEFAULT_QUEUE_URL = "http://localhost:4566/000000000000/login-queue"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"

KEYGEN_HINT = "run `etl keygen` to make fresh keys, and set them in the environment or .env"


@dataclass(frozen=True)
class Settings:
    sqs_queue_url: str = DEFAULT_QUEUE_URL
    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str = DEFAULT_BROKER_URL
    masking_key: str = ""
    masking_key_version: int = 1
    payload_keys: tuple[str, ...] = ()
    chunk_size: int = 500
    fetch_interval: float = 5.0
    fetch_seconds: float = 20.0
    fetch_max_messages: int = 10_000
    visibility_timeout: int = 120
    beat_schedule_file: str = "celerybeat-schedule"
    max_queued_chunks: int = 20
    vault_key: str = ""
    log_format: str = "text"
    metrics_port: int = 9808
    metrics_address: str = "127.0.0.1"
    sqs_threads: int = 32
    health_max_idle: float = 300.0

    def __repr__(self) -> str:  # never print the keys
        return (
            f"Settings(sqs_queue_url={self.sqs_queue_url!r}, broker_url={_redact(self.broker_url)!r}, "
            f"database_url={_redact(self.database_url)!r}, chunk_size={self.chunk_size}, "
            f"vault={'on' if self.vault_key else 'off'})"
        )

    def require_keys(self) -> None:
        """Raise ConfigError unless both secrets a worker needs are present."""
        if not self.masking_key:
            raise ConfigError(f"ETL_MASKING_KEY is not set: workers refuse to start without it; {KEYGEN_HINT}")
        if len(self.masking_key) < 32:
            raise ConfigError(f"ETL_MASKING_KEY is too short (at least 32 characters); {KEYGEN_HINT}")
        if not self.payload_keys:
            raise ConfigError(f"ETL_PAYLOAD_KEY is not set: workers refuse to start without it; {KEYGEN_HINT}")


def _redact(url: str) -> str:
    """A URL with any password replaced, safe to log."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def _number(env: Mapping[str, str], name: str, default: float, kind: type, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value: float = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _vault_key(env: Mapping[str, str]) -> str:
    """ETL_VAULT_KEY, or the contents of the file ETL_VAULT_KEY_FILE names (a mounted secret)."""
    if env.get("ETL_VAULT_KEY"):
        return env["ETL_VAULT_KEY"].strip()
    path = env.get("ETL_VAULT_KEY_FILE", "")
    if not path:
        return ""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError as exc:
        raise ConfigError(f"ETL_VAULT_KEY_FILE cannot be read: {exc.strerror}") from None


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default: the process environment). Raises ConfigError."""
    env = os.environ if env is None else env
    fetch_interval = _number(env, "ETL_FETCH_INTERVAL", 5.0, float, 0.5)
    settings = Settings(
        sqs_queue_url=env.get("SQS_QUEUE_URL") or DEFAULT_QUEUE_URL,
        database_url=env.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
        broker_url=env.get("CELERY_BROKER_URL") or DEFAULT_BROKER_URL,
        masking_key=env.get("ETL_MASKING_KEY", ""),
        masking_key_version=int(_number(env, "ETL_MASKING_KEY_VERSION", 1, int, 1)),
        payload_keys=tuple(k.strip() for k in env.get("ETL_PAYLOAD_KEY", "").split(",") if k.strip()),
        chunk_size=int(_number(env, "ETL_CHUNK_SIZE", 500, int, 1)),
        fetch_interval=fetch_interval,
        fetch_seconds=_number(env, "ETL_FETCH_SECONDS", 20.0, float, 0.5),
        fetch_max_messages=int(_number(env, "ETL_FETCH_MAX_MESSAGES", 10_000, int, 10)),
        visibility_timeout=int(_number(env, "SQS_VISIBILITY_TIMEOUT", 120, int, 10)),
        beat_schedule_file=env.get("ETL_BEAT_SCHEDULE_FILE") or "celerybeat-schedule",
        max_queued_chunks=int(_number(env, "ETL_MAX_QUEUED_CHUNKS", 20, int, 1)),
        metrics_port=int(_number(env, "ETL_METRICS_PORT", 9808, int, 0)),
        log_format=(env.get("ETL_LOG_FORMAT") or "text").lower(),
        vault_key=_vault_key(env),
        metrics_address=env.get("ETL_METRICS_ADDRESS") or "127.0.0.1",
        sqs_threads=int(_number(env, "ETL_SQS_THREADS", 32, int, 1)),
        health_max_idle=_number(env, "ETL_HEALTH_MAX_IDLE", 300.0, float, 10),
    )
    if settings.log_format not in ("text", "json"):
        raise ConfigError(f"ETL_LOG_FORMAT must be text or json, got {settings.log_format!r}")
    if settings.chunk_size > 1000:
        raise ConfigError("ETL_CHUNK_SIZE must be at most 1000 (one Postgres transaction per chunk)")
    return settings
