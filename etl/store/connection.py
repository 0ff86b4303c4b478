"""Connections, transactions and error translation: the store's only contact with psycopg2's errors.

Driver errors leave the store as etl.errors kinds, with the SQLSTATE and class name only:
psycopg2's own messages can quote values, and values must never reach a log.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions

from etl.errors import ConfigError, Forbidden, TerminalError, TransientError

Connection = psycopg2.extensions.connection

# SQLSTATE classes and codes that heal by themselves: connection trouble (08), server shutting
# down or out of resources (57P, 53), serialization failures and deadlocks (40), lock and
# statement timeouts (55P03, 57014).
_TRANSIENT_PREFIXES = ("08", "53", "57P", "40")
_TRANSIENT_CODES = {"55P03", "57014", "58000", "58030"}
# What to do when a lock wait timed out (an erasure behind a chunk write, or behind a session that
# opened a transaction and left it open): it usually passes; if not, the session holding it is named.
LOCK_HINT = (
    "another session holds a lock this needs (a chunk being written, an erasure or reveal in "
    "progress, or a transaction left open); try again, and if it persists find the holder with "
    "SELECT pid, usename, state, xact_start FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' "
    "OR wait_event_type = 'Lock' (a DBA can end it with pg_terminate_backend(pid))"
)
_UNDEFINED = {"42P01", "42703", "42883"}  # undefined table / column / function: schema missing or old
# SQLSTATE classes in words (PostgreSQL's appendix A), so a message says what kind of failure it is.
CLASSES = {
    "08": "connection exception",
    "0A": "feature not supported",
    "22": "data exception",
    "23": "integrity constraint violation",
    "25": "invalid transaction state",
    "28": "invalid authorization",
    "2B": "dependent objects still exist",
    "3D": "no such database",
    "3F": "no such schema",
    "40": "transaction rollback",
    "42": "syntax error or access rule violation",
    "53": "insufficient resources",
    "54": "program limit exceeded",
    "55": "object not in prerequisite state",
    "57": "operator intervention",
    "58": "system error",
    "P0": "raised by a function",
    "XX": "internal error",
}
# A connection that fails before a session exists has no SQLSTATE: libpq's text says why. Only
# our own words leave (the text can name hosts and users, never data): (libpq says, what, fix).
_CONNECT_FAILURES = (
    (
        "connection refused",
        "connection refused (nothing listens there)",
        "start PostgreSQL, or fix the host and port in DATABASE_URL",
    ),
    ("could not translate host name", "unknown host", "fix the host in DATABASE_URL"),
    ("name or service not known", "unknown host", "fix the host in DATABASE_URL"),
    ('database "', "no such database (3D000)", "create it (createdb) or fix the database in DATABASE_URL"),
    ('role "', "no such user (28000)", "create the login (CREATE ROLE ... LOGIN) or fix the user in DATABASE_URL"),
    ("password authentication failed", "authentication failed (28P01)", "fix the user or password in DATABASE_URL"),
    (
        "no password supplied",
        "authentication failed: a password is needed (28P01)",
        "add the password to DATABASE_URL (or ~/.pgpass)",
    ),
    (
        "no pg_hba.conf entry",
        "the server refuses this login from here (28000, pg_hba.conf)",
        "ask its admin to allow it, or connect from elsewhere",
    ),
    ("timeout expired", "no answer in time", "check that DATABASE_URL's host and port are PostgreSQL's and reachable"),
    ("too many clients", "too many connections (53300)", "retry later, or raise max_connections"),
    ("starting up", "the server is starting up (57P03)", "retry in a moment"),
    ("shutting down", "the server is shutting down (57P03)", "retry when it is back"),
    ("ssl", "TLS negotiation failed", "check sslmode and that DATABASE_URL's port is PostgreSQL's"),
)
CONNECT_TIMEOUT = 5  # seconds; libpq gives up on a host that does not answer


def sqlstate(code: str) -> str:
    """``code`` with its class in words ("42501 syntax error or access rule violation")."""
    if not code:
        return "no SQLSTATE"
    words = CLASSES.get(code[:2])
    return f"{code} {words}" if words else code


def translate(exc: psycopg2.Error, operation: str) -> Exception:
    """The etl error kind for a driver error (config, transient or terminal), without values."""
    code = exc.pgcode or ""
    name = type(exc).__name__
    if code == "42501":
        return Forbidden(f"Postgres {operation} refused: this login lacks the privilege (42501 insufficient privilege)")
    if code in _UNDEFINED:
        return ConfigError(f"Postgres {operation}: schema missing or outdated ({code} {name}); run `etl init`")
    if (
        isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))
        or code.startswith(_TRANSIENT_PREFIXES)
        or code in _TRANSIENT_CODES
    ):
        hint = f"; {LOCK_HINT}" if code == "55P03" else ""
        return TransientError(f"Postgres {operation} failed: {sqlstate(code)} ({name}){hint}")
    return TerminalError(f"Postgres {operation} refused: {sqlstate(code)} ({name})")


def where(url: str) -> str:
    """``host:port/database as user`` for a libpq URL or DSN, never its password."""
    try:
        dsn = psycopg2.extensions.parse_dsn(url)
    except psycopg2.Error:
        return "(an unreadable DATABASE_URL)"
    host = dsn.get("host") or "the local socket"
    user = dsn.get("user") or "your OS user"
    return f"{host}:{dsn.get('port') or 5432}/{dsn.get('dbname') or dsn.get('user') or '(your OS user)'} as {user}"


def check_url(url: str) -> None:
    """ConfigError unless ``url`` is a PostgreSQL URL (or a libpq key=value DSN)."""
    scheme, sep, _ = url.partition("://")
    if sep and scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigError(
            f"DATABASE_URL has the scheme {scheme}://: etl needs PostgreSQL; "
            "set DATABASE_URL=postgresql://user@host:5432/database"
        )


def connect_error(exc: psycopg2.Error, url: str) -> Exception:
    """A failed connect, saying what failed, where, and what to do (one line, no password)."""
    if exc.pgcode:  # a session existed: the SQLSTATE says it
        error = translate(exc, "connect")
        return type(error)(f"{error} at {where(url)}; check DATABASE_URL")
    text = str(exc).lower()
    what, fix = next(
        ((w, f) for said, w, f in _CONNECT_FAILURES if said in text),
        (f"no SQLSTATE ({type(exc).__name__})", "check DATABASE_URL and that PostgreSQL is up"),
    )
    return TransientError(f"Postgres connect to {where(url)} failed: {what}; {fix}")


def connect(url: str, statement_timeout_ms: int = 60_000) -> Connection:
    """A new connection; a stuck statement is cancelled (and retried) after the timeout."""
    check_url(url)
    try:
        return psycopg2.connect(
            url,
            connect_timeout=CONNECT_TIMEOUT,
            application_name="etl",
            # READ COMMITTED whatever the login's default: the erasure lock and the audit chain
            # rely on each statement seeing what committed before it (a role's own setting loses
            # to these startup options)
            options=f"-c statement_timeout={statement_timeout_ms} -c default_transaction_isolation=read\\ committed",
        )
    except psycopg2.Error as exc:
        raise connect_error(exc, url) from None


@contextmanager
def connection(url: str) -> Iterator[Connection]:
    """A connection for one command, closed afterwards."""
    conn = connect(url)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def transaction(conn: Connection, operation: str) -> Iterator[Any]:
    """A cursor inside one transaction: commit on success, roll back and translate on error."""
    try:
        with conn, conn.cursor() as cur:
            yield cur
    except psycopg2.Error as exc:
        raise translate(exc, operation) from None


def query(conn: Connection, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one read-only statement in its own transaction and return all rows."""
    with transaction(conn, "query") as cur:
        cur.execute(sql, params or None)  # no parameters: a literal % stays a %
        return list(cur.fetchall())
