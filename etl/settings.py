"""Typed settings, read once from the environment (the only module that reads it).

Every setting has a documented default here and in README "Settings" and .env.example.
Secrets have no default: a process that needs one refuses to start without it.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass

from etl.errors import ConfigError

KEYGEN_HINT = "run `etl keygen` to make fresh keys, and set them in the environment or .env"


@dataclass(frozen=True)
class Settings:
    sqs_queue_url: str = "http://localhost:4566/000000000000/login-queue"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    broker_url: str = "redis://127.0.0.1:6379/0"
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
    metrics_dir: str = ""  # PROMETHEUS_MULTIPROC_DIR; empty: the worker serves no metrics

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


# Every plain setting: (field, environment variable, minimum for numbers). The default is the
# field's default in Settings, written once.
_TEXT = (
    ("sqs_queue_url", "SQS_QUEUE_URL"),
    ("database_url", "DATABASE_URL"),
    ("broker_url", "CELERY_BROKER_URL"),
    ("masking_key", "ETL_MASKING_KEY"),
    ("beat_schedule_file", "ETL_BEAT_SCHEDULE_FILE"),
    ("log_format", "ETL_LOG_FORMAT"),
    ("metrics_address", "ETL_METRICS_ADDRESS"),
    ("metrics_dir", "PROMETHEUS_MULTIPROC_DIR"),
)
_NUMBERS = (
    ("masking_key_version", "ETL_MASKING_KEY_VERSION", 1),
    ("chunk_size", "ETL_CHUNK_SIZE", 1),
    ("fetch_interval", "ETL_FETCH_INTERVAL", 0.5),
    ("fetch_seconds", "ETL_FETCH_SECONDS", 0.5),
    ("fetch_max_messages", "ETL_FETCH_MAX_MESSAGES", 10),
    ("visibility_timeout", "SQS_VISIBILITY_TIMEOUT", 10),
    ("max_queued_chunks", "ETL_MAX_QUEUED_CHUNKS", 1),
    ("metrics_port", "ETL_METRICS_PORT", 0),
    ("sqs_threads", "ETL_SQS_THREADS", 1),
    ("health_max_idle", "ETL_HEALTH_MAX_IDLE", 10),
)
_DEFAULTS = Settings()


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    kind = type(default)
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
    values: dict[str, object] = {f: env.get(name) or getattr(_DEFAULTS, f) for f, name in _TEXT}
    values.update({f: _number(env, name, getattr(_DEFAULTS, f), low) for f, name, low in _NUMBERS})
    values["log_format"] = str(values["log_format"]).lower()
    values["payload_keys"] = tuple(k.strip() for k in env.get("ETL_PAYLOAD_KEY", "").split(",") if k.strip())
    values["vault_key"] = _vault_key(env)
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.log_format not in ("text", "json"):
        raise ConfigError(f"ETL_LOG_FORMAT must be text or json, got {settings.log_format!r}")
    if settings.chunk_size > 1000:
        raise ConfigError("ETL_CHUNK_SIZE must be at most 1000 (one Postgres transaction per chunk)")
    return settings
