"""Per-process wiring: settings -> Masker, Sealer, SQS queue, Postgres connection, vault.

Built lazily in the process that uses them (after Celery's prefork), once per process, and
rebuilt only when a connection breaks.
"""

import os
from contextlib import suppress
from dataclasses import dataclass, field

from etl import settings, store
from etl.crypto import vault
from etl.crypto.masking import Masker
from etl.crypto.sealing import Sealer
from etl.crypto.vault import Vault
from etl.errors import ConfigError, Forbidden, TransientError
from etl.pii import service as pii
from etl.sources.kinesis import stream as kinesis
from etl.sources.sqs import queue as sqs
from etl.store import access
from etl.worker.coordination import Coordinator


@dataclass
class Runtime:
    settings: settings.Settings
    masker: Masker
    sealer: Sealer
    queue: sqs.Queue
    coordinator: Coordinator
    _conn: store.Connection | None = field(default=None, repr=False)
    _vault: Vault | None = field(default=None, repr=False)
    _stream: kinesis.Stream | None = field(default=None, repr=False)

    def stream(self) -> kinesis.Stream:
        """The Kinesis stream (ETL_SOURCE=kinesis), its client made on first use."""
        if self._stream is None:
            self._stream = kinesis.Stream(self.settings.kinesis_stream_name, reads=self.settings.kinesis_client)
        return self._stream

    def vault(self) -> Vault | None:
        """This process's vault data key, sealed to the public key (None when the vault is off)."""
        if self._vault is None:
            self._vault = pii.writer_vault(self.settings, self.conn())
        return self._vault

    def conn(self) -> store.Connection:
        """The process's Postgres connection, reconnecting if the last one broke."""
        if self._conn is None or self._conn.closed:
            self._conn = store.connect(self.settings.database_url)
        return self._conn

    def drop_conn(self) -> None:
        """Forget the connection after a failure; the next call reconnects."""
        if self._conn is not None:
            with suppress(Exception):  # already broken: nothing to save
                self._conn.close()
        self._conn = None


_config: settings.Settings | None = None
_current: tuple[int, Runtime] | None = None


def config() -> settings.Settings:
    """This worker's settings, read from the environment once (its pool processes inherit them)."""
    global _config
    if _config is None:
        _config = settings.load()
    return _config


def make_queue(config: settings.Settings) -> sqs.Queue:
    # A chunk's delete is a call per 10 messages, all at once on the lean client: keep that many
    # connections open, not only a receive round's (else each chunk opens and closes the rest).
    pool = max(config.sqs_threads, -(-config.chunk_size // sqs.MAX_BATCH)) + 2
    client = sqs.make_client(pool, config.sqs_client, threads=config.sqs_threads)
    return sqs.Queue(config.sqs_queue_url, client, config.sqs_threads)


def build(config: settings.Settings) -> Runtime:
    """Validate secrets and build the runtime; raises ConfigError with what to do."""
    config.require_keys()
    if config.vault_private_key:
        raise ConfigError(
            "ETL_VAULT_PRIVATE_KEY (or ETL_VAULT_PRIVATE_KEY_FILE) is set for a worker: workers seal with "
            "ETL_VAULT_PUBLIC_KEY only; remove the private key from the worker's environment (it belongs to "
            "the officers' tooling)"
        )
    if config.vault_public_key:
        vault.parse_public_key(config.vault_public_key)  # a malformed key stops the worker at start
    elif config.vault_key:
        raise ConfigError(
            "ETL_VAULT_KEY alone no longer turns the vault on: set ETL_VAULT_PUBLIC_KEY (etl keygen), "
            "then run `etl rotate-vault-key` once with ETL_VAULT_KEY and ETL_VAULT_PRIVATE_KEY to re-seal old entries"
        )
    return Runtime(
        settings=config,
        masker=Masker(config.masking_key, config.masking_key_version),
        sealer=Sealer(list(config.payload_keys)),
        queue=make_queue(config),
        coordinator=Coordinator(config.broker_url),
    )


def get() -> Runtime:
    """This process's runtime (built on first use, from ``config()``)."""
    global _current
    if _current is None or _current[0] != os.getpid():
        _current = (os.getpid(), build(config()))
    return _current[1]


def check_database(config: settings.Settings) -> str | None:
    """At a worker's start: can its login write what a worker writes?

    Raises ConfigError when the database answers and the login lacks a privilege (every chunk
    would fail): the line names the role to grant. Returns a warning (None when all is well) when
    Postgres cannot be reached or the schema is missing: the worker starts anyway, since chunks
    stay in SQS and are retried until the database is back (it may start after the workers)."""
    try:
        with store.connection(config.database_url) as conn:
            who = access.login(conn)
            missing = access.lacking(conn, "etl_writer")
    except (TransientError, Forbidden) as exc:
        return f"{exc}; chunks wait in SQS and are retried until it answers"
    except ConfigError as exc:  # the schema is missing: `etl init` has not run yet
        return str(exc)
    if missing:
        user = who["user"]
        raise ConfigError(
            f"the login {user} lacks {', '.join(missing)} at {store.connection_where(config.database_url)}: "
            f"a worker needs the etl_writer role; GRANT etl_writer TO {user} (`etl init --roles` creates the role)"
        )
    return None
