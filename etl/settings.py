"""Typed settings, read once from the environment (the only module that reads it).

Every setting has a documented default here and in docs/settings.md and .env.example.
Secrets have no default: a process that needs one refuses to start without it.
"""

import difflib
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from etl.crypto import keys
from etl.crypto.keys import KEYGEN_HINT
from etl.errors import ConfigError

__all__ = ["KEYGEN_HINT", "Settings", "load", "load_or_exit"]


@dataclass(frozen=True)
class Settings:
    sqs_queue_url: str = "http://localhost:4566/000000000000/login-queue"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    broker_url: str = "redis://127.0.0.1:6379/0"
    masking_key: str = ""
    masking_key_version: int = 1
    payload_keys: tuple[str, ...] = ()
    # Messages per chunk: fixed costs per chunk (the Celery hand-off, its events, the transaction)
    # are ~7 ms of CPU, so at saturation 1000 costs ~14% less CPU per message than 500 (make bench,
    # docs/performance.md); at low load the linger, not the size, decides when a chunk leaves.
    chunk_size: int = 1000
    # Broker bytes per chunk (an upper estimate, chunking.weight): under Redis's lowest
    # proto-max-bulk-len (1 MiB, the cap some managed services keep) with 64 KiB to spare for the
    # task's envelope. Sized so that a chunk of 1000 login events fits with SQS's own identifiers
    # (a ~380-character receipt handle and a 36-character id per message ride along): at half of
    # 1 MiB the bytes, not ETL_CHUNK_SIZE, cut chunks at ~550 messages.
    chunk_max_bytes: int = 983_040
    # Seconds a partial chunk waits for more messages before it is handed on (a fetch receiving
    # less than a chunk's worth): fewer, fuller chunks at low load, for up to this much latency.
    chunk_linger: float = 1.0
    fetch_interval: float = 5.0
    fetch_seconds: float = 20.0
    fetch_max_messages: int = 10_000
    visibility_timeout: int = 120
    beat_schedule_file: str = "celerybeat-schedule"
    max_queued_chunks: int = 20
    vault_key: str = ""  # legacy symmetric master key: only to migrate vaults made before the key pair
    vault_public_key: str = ""  # what workers hold: they can seal vault entries, never open them
    vault_private_key: str = ""  # officers' tooling only; comma-separated, the first is current
    log_format: str = "text"
    metrics_port: int = 9808
    metrics_address: str = "127.0.0.1"
    sqs_threads: int = 32
    sqs_client: str = "lean"  # ETL_SQS_CLIENT: lean (hot calls over keep-alive HTTP) or boto3 (all through botocore)
    health_max_idle: float = 300.0
    metrics_dir: str = ""  # PROMETHEUS_MULTIPROC_DIR; empty: the worker serves no metrics
    audit_anchor: str = ""  # ETL_AUDIT_ANCHOR: file:///dir or s3://bucket/prefix for audit chain heads
    source: str = "sqs"  # ETL_SOURCE: sqs or kinesis
    kinesis_stream_name: str = "login-stream"
    kinesis_start: str = "trim_horizon"  # where a shard never read before starts: trim_horizon or latest
    kinesis_shards_per_fetch: int = 4  # shards one fetch run leases at most (spreads shards over workers)
    kinesis_client: str = "lean"  # ETL_KINESIS_CLIENT: lean (GetRecords over keep-alive HTTP) or boto3
    flower_basic_auth: str = ""  # FLOWER_BASIC_AUTH, as Flower reads it: only `etl.worker.flower` checks it

    def __repr__(self) -> str:  # never print the keys
        return (
            f"Settings(sqs_queue_url={self.sqs_queue_url!r}, broker_url={redact(self.broker_url)!r}, "
            f"database_url={redact(self.database_url)!r}, chunk_size={self.chunk_size}, "
            f"vault={'on' if self.vault_public_key or self.vault_key else 'off'}, "
            f"vault_private_keys={len(self.vault_private_keys)})"
        )

    @property
    def vault_private_keys(self) -> tuple[str, ...]:
        """ETL_VAULT_PRIVATE_KEY split into its keys, the current one first (empty when unset)."""
        return tuple(k for k in self.vault_private_key.split(",") if k)

    def require_keys(self) -> None:
        """Raise ConfigError unless both secrets a worker needs are present."""
        if not self.masking_key:
            raise ConfigError(f"ETL_MASKING_KEY is not set: workers refuse to start without it; {KEYGEN_HINT}")
        if len(self.masking_key) < 32:
            raise ConfigError(f"ETL_MASKING_KEY is too short (at least 32 characters); {KEYGEN_HINT}")
        if not self.payload_keys:
            raise ConfigError(f"ETL_PAYLOAD_KEY is not set: workers refuse to start without it; {KEYGEN_HINT}")

    def require_flower_logins(self) -> tuple[str, ...]:
        """FLOWER_BASIC_AUTH's logins (``user:password`` each); ConfigError unless it is set and
        every login is well formed. Only Flower's launcher asks: a worker never needs it."""
        return flower_logins(self.flower_basic_auth)


FLOWER_HINT = "set FLOWER_BASIC_AUTH=user:password (several logins: user:password,user2:password2)"


def flower_logins(raw: str) -> tuple[str, ...]:
    """``raw`` split as Flower splits FLOWER_BASIC_AUTH (on commas, nothing stripped), each login
    checked to be ``user:password``. Errors name the login by position, never its text."""
    if not raw:
        raise ConfigError(f"FLOWER_BASIC_AUTH is not set: Flower refuses to start without a login; {FLOWER_HINT}")
    logins = tuple(raw.split(","))
    for i, login in enumerate(logins, 1):
        user, colon, password = login.partition(":")
        checks = (
            (not colon, "has no ':' between user and password"),
            (not user, "has an empty user"),
            (not password, "has an empty password"),
            (login != login.strip() or any(c.isspace() for c in user), "has whitespace in its user or around it"),
            (not login.isprintable(), "has control characters"),
        )
        problem = next((text for failed, text in checks if failed), "")
        if problem:
            where = f"login {i} of {len(logins)}" if len(logins) > 1 else "the login"
            raise ConfigError(f"FLOWER_BASIC_AUTH is malformed ({where} {problem}); {FLOWER_HINT}")
    return logins


def redact(url: str) -> str:
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
    ("audit_anchor", "ETL_AUDIT_ANCHOR"),
    ("source", "ETL_SOURCE"),
    ("kinesis_stream_name", "KINESIS_STREAM_NAME"),
    ("kinesis_start", "ETL_KINESIS_START"),
    ("sqs_client", "ETL_SQS_CLIENT"),
    ("kinesis_client", "ETL_KINESIS_CLIENT"),
)
_NUMBERS = (
    ("masking_key_version", "ETL_MASKING_KEY_VERSION", 1),
    ("chunk_size", "ETL_CHUNK_SIZE", 1),
    ("chunk_max_bytes", "ETL_CHUNK_MAX_BYTES", 65_536),
    ("chunk_linger", "ETL_CHUNK_LINGER", 0),
    ("fetch_interval", "ETL_FETCH_INTERVAL", 0.5),
    ("fetch_seconds", "ETL_FETCH_SECONDS", 0.5),
    ("fetch_max_messages", "ETL_FETCH_MAX_MESSAGES", 10),
    ("visibility_timeout", "SQS_VISIBILITY_TIMEOUT", 10),
    ("max_queued_chunks", "ETL_MAX_QUEUED_CHUNKS", 1),
    ("metrics_port", "ETL_METRICS_PORT", 0),
    ("sqs_threads", "ETL_SQS_THREADS", 1),
    ("health_max_idle", "ETL_HEALTH_MAX_IDLE", 10),
    ("kinesis_shards_per_fetch", "ETL_KINESIS_SHARDS_PER_FETCH", 1),
)
# A chunk's Celery time limits (celeryconfig): soft, then hard. SQS_VISIBILITY_TIMEOUT must exceed the
# hard one, or a chunk still running sees its messages handed out again (`etl doctor` checks it).
CHUNK_SOFT_TIME_LIMIT = 60
CHUNK_TIME_LIMIT = 90
# A fetch run's budget: what the soft time limit leaves after its last chunks are handed on
MAX_FETCH_SECONDS = CHUNK_SOFT_TIME_LIMIT - 10
# message_id is "<stream>[~<incarnation>]/<shard id>/<sequence number>[/<sub-sequence number>]"
# in varchar(128): shard ids are 20 characters, sequence numbers at most 56 digits, sub-sequence
# numbers (a user record of an aggregated record) at most 6, a re-created stream's "~<n>" at most
# 4 (etl.store.streams.MAX_INCARNATIONS), which leaves 39 for the stream's name.
MAX_STREAM_NAME = 39
MAX_CHUNK_BYTES = 512 * 1024 * 1024  # Redis's own ceiling for one value (proto-max-bulk-len)
MAX_LINGER = 5.0  # ETL_CHUNK_LINGER's ceiling (seconds)
MAX_SQS_THREADS = 100  # calls at once per process; each is a socket, kept open while idle
MAX_VISIBILITY = 43_200  # SQS's own ceiling for a visibility timeout (12 hours)
# A token is k<version>:<64 hex>; the vault's token column is varchar(80)
MAX_MASKING_KEY_VERSION = 999_999
_DEFAULTS = Settings()


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    kind = type(default)
    fix = f"set a number of at least {minimum}, or unset it for the default {default}"
    try:
        value: float = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name}={raw!r} is not {what}: {fix}") from None
    if not math.isfinite(value):  # nan passes every comparison below; inf is no bound
        raise ConfigError(f"{name}={raw!r} is not a finite number: {fix}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}: {fix}")
    return value


def _secret(env: Mapping[str, str], name: str) -> str:
    """``name``, or the contents of the file ``<name>_FILE`` names (a mounted secret); trimmed."""
    if env.get(name):
        return env[name].strip()
    path = env.get(f"{name}_FILE", "")
    if not path:
        return ""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError as exc:
        raise ConfigError(f"{name}_FILE cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}_FILE does not hold ASCII text; {KEYGEN_HINT}") from None


def _key_list(text: str) -> tuple[str, ...]:
    """Comma-separated keys (a file may also put one per line); blanks dropped."""
    return tuple(k for k in text.replace(",", " ").split() if k)


def _numbered(name: str, values: tuple[str, ...]) -> dict[str, str]:
    """``{name: value}`` for one key, ``{"name (key i of n)": value}`` for several."""
    if len(values) == 1:
        return {name: values[0]}
    return {f"{name} (key {i} of {len(values)})": v for i, v in enumerate(values, 1)}


def _require_distinct_keys(s: Settings) -> None:
    """One key never serves two purposes (nor twice in one rotation list)."""
    keys.require_distinct(
        {
            "ETL_MASKING_KEY": s.masking_key,
            **_numbered("ETL_PAYLOAD_KEY", s.payload_keys),
            "ETL_VAULT_KEY": s.vault_key,
            "ETL_VAULT_PUBLIC_KEY": s.vault_public_key,
            **_numbered("ETL_VAULT_PRIVATE_KEY", s.vault_private_keys),
        }
    )


# ETL_ variables read outside this table: the secrets (and their _FILE forms), the demo's choice of
# servers, and the tests' own (ETL_TEST_*, never a setting of a deployment).
_OTHER_NAMES = (
    "ETL_PAYLOAD_KEY",
    "ETL_VAULT_KEY",
    "ETL_VAULT_KEY_FILE",
    "ETL_VAULT_PUBLIC_KEY",
    "ETL_VAULT_PUBLIC_KEY_FILE",
    "ETL_VAULT_PRIVATE_KEY",
    "ETL_VAULT_PRIVATE_KEY_FILE",
    "ETL_EMBEDDED",
)


def known_names() -> set[str]:
    """Every ETL_ variable etl reads (ETL_TEST_* aside)."""
    return {name for _, name in _TEXT} | {name for _, name, _ in _NUMBERS} | set(_OTHER_NAMES)


def _refuse_unknown(env: Mapping[str, str]) -> None:
    """A misspelt setting is refused, named with the nearest real one: never silently ignored."""
    known = known_names()
    for name in sorted(env):
        if name.startswith("ETL_") and not name.startswith("ETL_TEST_") and name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean {near[0]}?" if near else "docs/settings.md lists them"
            raise ConfigError(f"{name} is not a setting of etl: {hint} (unset it or fix its name)")


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default: the process environment). Raises ConfigError."""
    env = os.environ if env is None else env
    _refuse_unknown(env)
    values: dict[str, object] = {f: env.get(name) or getattr(_DEFAULTS, f) for f, name in _TEXT}
    values.update({f: _number(env, name, getattr(_DEFAULTS, f), low) for f, name, low in _NUMBERS})
    values["log_format"] = str(values["log_format"]).lower()
    values["source"] = str(values["source"]).lower()
    values["kinesis_start"] = str(values["kinesis_start"]).lower()
    values["sqs_client"] = str(values["sqs_client"]).strip().lower()
    values["kinesis_client"] = str(values["kinesis_client"]).strip().lower()
    values["payload_keys"] = tuple(k.strip() for k in env.get("ETL_PAYLOAD_KEY", "").split(",") if k.strip())
    values["vault_key"] = _secret(env, "ETL_VAULT_KEY")
    values["vault_public_key"] = _secret(env, "ETL_VAULT_PUBLIC_KEY")
    values["vault_private_key"] = ",".join(_key_list(_secret(env, "ETL_VAULT_PRIVATE_KEY")))
    values["flower_basic_auth"] = env.get("FLOWER_BASIC_AUTH", "")  # checked by Flower's launcher only
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.log_format not in ("text", "json"):
        raise ConfigError(f"ETL_LOG_FORMAT must be text or json, got {settings.log_format!r}")
    if settings.source not in ("sqs", "kinesis"):
        raise ConfigError(f"ETL_SOURCE must be sqs or kinesis, got {settings.source!r}")
    if settings.kinesis_start not in ("trim_horizon", "latest"):
        raise ConfigError(f"ETL_KINESIS_START must be trim_horizon or latest, got {settings.kinesis_start!r}")
    if len(settings.kinesis_stream_name) > MAX_STREAM_NAME or "/" in settings.kinesis_stream_name:
        raise ConfigError(
            f"KINESIS_STREAM_NAME must be at most {MAX_STREAM_NAME} characters without '/' "
            "(it is part of every row's message_id, varchar(128))"
        )
    if settings.sqs_client not in ("lean", "boto3"):
        raise ConfigError(f"ETL_SQS_CLIENT must be lean or boto3, got {settings.sqs_client!r}")
    if settings.kinesis_client not in ("lean", "boto3"):
        raise ConfigError(f"ETL_KINESIS_CLIENT must be lean or boto3, got {settings.kinesis_client!r}")
    if settings.sqs_threads > MAX_SQS_THREADS:
        raise ConfigError(
            f"ETL_SQS_THREADS must be at most {MAX_SQS_THREADS}: each concurrent SQS call holds a connection "
            "(a file descriptor) in every worker process; the default 32 already hides SQS's latency"
        )
    if settings.visibility_timeout > MAX_VISIBILITY:
        raise ConfigError(
            f"SQS_VISIBILITY_TIMEOUT must be at most {MAX_VISIBILITY} seconds (12 hours): SQS refuses every "
            "receive asking for more; the default is 120"
        )
    if settings.masking_key_version > MAX_MASKING_KEY_VERSION:
        raise ConfigError(
            f"ETL_MASKING_KEY_VERSION must be at most {MAX_MASKING_KEY_VERSION}: it is part of every token "
            "(k<version>:...), which must fit the tables' columns; versions count key rotations from 1"
        )
    if settings.chunk_size > 1000:
        raise ConfigError("ETL_CHUNK_SIZE must be at most 1000 (one Postgres transaction per chunk)")
    if settings.chunk_linger > MAX_LINGER:
        raise ConfigError(
            f"ETL_CHUNK_LINGER must be at most {MAX_LINGER:g} seconds (a lingering chunk's messages are "
            "already received and wait invisible): the default 1 s costs little latency"
        )
    if settings.fetch_seconds > MAX_FETCH_SECONDS:
        raise ConfigError(
            f"ETL_FETCH_SECONDS must be at most {MAX_FETCH_SECONDS} seconds: a fetch run is a task under the "
            f"{CHUNK_SOFT_TIME_LIMIT} s time limit, which would end every longer run (runs follow each other at "
            "once, so a longer one gains nothing; the default is 20)"
        )
    if settings.chunk_max_bytes > MAX_CHUNK_BYTES:
        raise ConfigError(f"ETL_CHUNK_MAX_BYTES must be at most {MAX_CHUNK_BYTES} (Redis's largest value, 512 MiB)")
    _require_distinct_keys(settings)
    return settings


def load_or_exit() -> Settings:
    """``load()``, or the CLI's one line (``etl worker: ...``) on stderr and exit 2: what Celery's
    processes (worker, beat, Flower) use, so a bad setting is one line, never a traceback."""
    try:
        return load()
    except ConfigError as exc:
        program = next((a for a in sys.argv[1:] if a in ("worker", "beat", "flower")), "celery")
        print(f"etl {program}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def contradictions(s: Settings) -> list[str]:
    """Settings that are each valid but contradict each other, as one line each with the fix.

    Reported, not refused: the fault-injection suite runs short visibilities on purpose (a chunk
    that outlives its messages' visibility is one of its scenarios). A worker prints them at start
    and ``etl doctor`` fails on them."""
    found = []
    if s.visibility_timeout <= CHUNK_TIME_LIMIT:
        found.append(
            f"SQS_VISIBILITY_TIMEOUT={s.visibility_timeout} does not exceed a chunk's hard time limit "
            f"({CHUNK_TIME_LIMIT} s): a chunk still running would see its messages handed out again; "
            f"set SQS_VISIBILITY_TIMEOUT={CHUNK_TIME_LIMIT + 30} or more (default 120)"
        )
    return found
