"""`etl doctor`: one line per check, ok or FAIL with the fix (the CLI only prints them).

Each check asks a service as this process is configured to (the same settings, clients and
timeouts a worker or a command uses), so a green line means the real thing answered.
"""

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from etl import settings as settings_module
from etl import store
from etl.crypto import sealing, vault
from etl.errors import ConfigError, EtlError
from etl.sources.kinesis import stream as kinesis
from etl.sources.sqs import queue as sqs
from etl.store import access
from etl.worker.coordination import Coordinator

# Which role each command's login needs (README "Roles"); "admin" is the tables' owner, the
# login that ran `etl init`. Commands absent here need no database role.
ROLE_OF_COMMAND = {
    "init": "admin",
    "stats": "admin",
    "rejected": "admin",
    "rotate-masking-key": "admin",
    "rotate-vault-key": "admin",
    "report": "analyst",
    "reveal": "pii_officer",
    "erase": "pii_officer",
    "audit": "pii_officer",
    "worker": "etl_writer",
}
# Redis must never evict the broker's keys: an evicted chunk is a lost chunk until SQS redelivers.
SAFE_EVICTION = ("noeviction",)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    says: str
    fix: str = ""
    warn: bool = False  # ok, yet something a user probably wants otherwise (shown with its fix)


def run(role: str, env_loader: Callable[[], settings_module.Settings] = settings_module.load) -> list[Check]:
    """Every check for a process that needs ``role`` (see access.NEEDS), in order."""
    try:
        s = env_loader()
    except ConfigError as exc:
        return [Check("settings", False, str(exc), "fix the setting named (docs/settings.md lists them all)")]
    return [Check("settings", True, "every ETL_ variable is known and valid"), *_checks(s, role)]


def _checks(s: settings_module.Settings, role: str) -> Iterator[Check]:
    yield _keys(s, role)
    yield from _postgres(s, role)
    yield from _redis(s)
    yield _source(s)
    yield _visibility(s)
    if role == "etl_writer":  # metrics are a worker's: an analyst's or officer's login serves none
        yield _metrics(s)


def _keys(s: settings_module.Settings, role: str) -> Check:
    if role == "etl_writer":
        try:
            s.require_keys()
        except ConfigError as exc:
            from etl.demo.demo import KEYS_FILE  # here: the demo's modules are no load for every `etl` command

            fix = "`etl keygen --env-file .env` where there is no .env yet, then load .env"
            if KEYS_FILE.exists():
                fix += (
                    f" (in the shell of `etl demo`'s export line this FAIL is expected: the demo's workers keep "
                    f"their keys in {KEYS_FILE}, and new keys would not match its tokens)"
                )
            return Check("keys", False, str(exc), fix)
        try:
            sealing.Sealer(list(s.payload_keys))  # each key decoded strictly, as a worker will
        except ConfigError as exc:
            return Check("keys", False, str(exc), "`etl keygen` prints a valid ETL_PAYLOAD_KEY")
        if s.vault_private_key:
            return Check(
                "keys", False, "ETL_VAULT_PRIVATE_KEY is set: a worker refuses to start with it", "unset it for workers"
            )
        if s.vault_public_key:
            try:
                vault.parse_public_key(s.vault_public_key)
            except ConfigError as exc:
                return Check("keys", False, str(exc), "`etl keygen`")
        vault_state = "vault on (public key)" if s.vault_public_key else "vault off (no ETL_VAULT_PUBLIC_KEY)"
        return Check("keys", True, f"masking and payload keys present and distinct; {vault_state}")
    if role == "pii_officer" and not s.vault_private_key:
        return Check(
            "keys", False, "no ETL_VAULT_PRIVATE_KEY: reveal and rotations need it", "ETL_VAULT_PRIVATE_KEY_FILE=<file>"
        )
    return Check("keys", True, "present keys are distinct")


def _postgres(s: settings_module.Settings, role: str) -> Iterator[Check]:
    where = store.connection_where(s.database_url)
    try:
        with store.connection(s.database_url) as conn:
            who = access.login(conn)
            yield Check("postgres", True, f"{where} answers")
            try:
                missing = access.lacking(conn, role)
            except ConfigError as exc:
                yield Check("roles", False, str(exc), "run `etl init` as the database's owner")
                return
    except EtlError as exc:
        yield Check("postgres", False, str(exc))
        return
    held = ", ".join(["superuser"] if who["superuser"] else who["roles"]) or "no etl role"
    if missing:
        user = who["user"]
        grant = "use the login that ran `etl init`" if role == "admin" else f"GRANT {role} TO {user}"
        yield Check("roles", False, f"login {user} ({held}) lacks {', '.join(missing)}: needs {role}", grant)
    else:
        yield Check("roles", True, f"login {who['user']} ({held}) has what {role} needs")


def _redis(s: settings_module.Settings) -> Iterator[Check]:
    try:
        redis = Coordinator(s.broker_url)
        redis.ping()
        policy = redis.eviction_policy()
    except EtlError as exc:
        yield Check("redis", False, str(exc))
        return
    yield Check("redis", True, f"{redis.where} answers")
    if policy is None:
        yield Check(
            "redis eviction", True, "CONFIG GET refused (managed Redis?): make sure maxmemory-policy is noeviction"
        )
    elif policy in SAFE_EVICTION:
        yield Check("redis eviction", True, f"maxmemory-policy {policy}")
    else:
        yield Check(
            "redis eviction",
            False,
            f"maxmemory-policy {policy}: Redis may evict queued chunks under memory pressure",
            "CONFIG SET maxmemory-policy noeviction (and in redis.conf)",
        )


def _source(s: settings_module.Settings) -> Check:
    try:
        if s.source == "kinesis":
            status = kinesis.Stream(s.kinesis_stream_name).status()
            if status != "ACTIVE":
                return Check("kinesis", False, f"stream {s.kinesis_stream_name} is {status}", "wait until it is ACTIVE")
            return Check("kinesis", True, f"stream {s.kinesis_stream_name} is ACTIVE")
        attrs = sqs.Queue(s.sqs_queue_url, threads=1).attributes(["RedrivePolicy", "VisibilityTimeout"])
    except EtlError as exc:
        return Check(s.source, False, str(exc))
    if "RedrivePolicy" not in attrs:
        return Check(
            "sqs",
            False,
            f"{s.sqs_queue_url} has no dead-letter queue: a poison message would come back for ever",
            "`etl init --create-queue` on a new queue, or set a RedrivePolicy",
        )
    return Check("sqs", True, f"{s.sqs_queue_url} answers; dead-letter queue set")


def _visibility(s: settings_module.Settings) -> Check:
    found = settings_module.contradictions(s)
    if found:
        return Check("visibility", False, "; ".join(found))
    hard = settings_module.CHUNK_TIME_LIMIT
    return Check("visibility", True, f"SQS_VISIBILITY_TIMEOUT={s.visibility_timeout} s > hard time limit {hard} s")


def _metrics(s: settings_module.Settings) -> Check:
    directory = s.metrics_dir
    if not directory:
        return Check(
            "metrics",
            True,
            "PROMETHEUS_MULTIPROC_DIR unset: this worker will serve no metrics (dashboards and alerts see nothing)",
            "set PROMETHEUS_MULTIPROC_DIR to a directory of this worker's own (docs/operations.md)",
            warn=True,
        )
    existing = directory
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing.rstrip("/")) or "/"
    if os.path.exists(directory) and not os.path.isdir(directory):
        return Check(
            "metrics", False, f"{directory} is not a directory", "point PROMETHEUS_MULTIPROC_DIR at a directory"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        return Check("metrics", False, f"{directory} is not writable by this user", "make it writable, or pick another")
    return Check("metrics", True, f"{directory} writable")
