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
_UNDEFINED = {"42P01", "42703", "42883"}  # undefined table / column / function: schema missing or old


def translate(exc: psycopg2.Error, operation: str) -> Exception:
    """The etl error kind for a driver error (config, transient or terminal), without values."""
    code = exc.pgcode or ""
    name = type(exc).__name__
    if code == "42501":
        return Forbidden(f"Postgres {operation} refused: this login lacks the privilege (42501)")
    if code in _UNDEFINED:
        return ConfigError(f"Postgres {operation}: schema missing or outdated ({code} {name}); run `etl init`")
    if (
        isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))
        or code.startswith(_TRANSIENT_PREFIXES)
        or code in _TRANSIENT_CODES
    ):
        return TransientError(f"Postgres {operation} failed: {code or 'no SQLSTATE'} {name}")
    return TerminalError(f"Postgres {operation} refused: {code or 'no SQLSTATE'} {name}")


def connect(url: str, statement_timeout_ms: int = 60_000) -> Connection:
    """A new connection; a stuck statement is cancelled (and retried) after the timeout."""
    try:
        return psycopg2.connect(
            url,
            connect_timeout=5,
            application_name="etl",
            # READ COMMITTED whatever the login's default: the erasure lock and the audit chain
            # rely on each statement seeing what committed before it (a role's own setting loses
            # to these startup options)
            options=f"-c statement_timeout={statement_timeout_ms} -c default_transaction_isolation=read\\ committed",
        )
    except psycopg2.Error as exc:
        raise translate(exc, "connect") from None


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
