"""The PII tables: vault entries, sealed data keys, reveal requests and the audit log.

Only etl.pii.service calls these. Officers reach ciphertext only through the auditing SECURITY DEFINER
functions of migration 8 (reveal request, release, outcome; erase), each pinned to
search_path = pg_catalog, pg_temp. The selections the rotations use read the tables directly
and so need the tables' owner (the admin login).
"""

from collections.abc import Sequence
from typing import Any

from psycopg2.extras import execute_values

from etl.crypto.auditchain import AuditRow
from etl.store.connection import Connection, query, transaction
from etl.store.ingest import INSERT_VAULT

_AUDIT = "SELECT etl_audit(%s, %s, %s, %s, %s, %s)"


def add_sealed_key(conn: Connection, key_id: str, sealed: bytes, recipient: str) -> None:
    """Record a worker process's data key, sealed to the vault's public key (INSERT only)."""
    with transaction(conn, "vault key") as cur:
        cur.execute(
            "INSERT INTO vault_data_keys (key_id, sealed_key, recipient) VALUES (%s, %s, %s)",
            (key_id, sealed, recipient),
        )


def data_keys(conn: Connection) -> tuple[dict[str, tuple[bytes, str]], dict[str, bytes]]:
    """Every data key (table owner only): sealed ones {key_id: (sealed, recipient)}, legacy {"v<n>": wrapped}."""
    sealed = {
        str(k): (bytes(s), str(r))
        for k, s, r in query(conn, "SELECT key_id, sealed_key, recipient FROM vault_data_keys")
    }
    legacy = {f"v{v}": bytes(w) for v, w in query(conn, "SELECT version, wrapped_key FROM vault_keys")}
    return sealed, legacy


def audit(
    conn: Connection, action: str, field: str | None, token: str | None, subject: str | None, reason: str, outcome: str
) -> None:
    """Append one audit row (hash-chained, in its own transaction)."""
    with transaction(conn, "audit") as cur:
        cur.execute(_AUDIT, (action, field, token, subject, reason, outcome))


def audit_rows(conn: Connection) -> list[AuditRow]:
    """Every audit row as stored, read with nothing but pg_catalog on the search path: the hashes
    are recomputed by the caller (etl.crypto.auditchain), never by a function the owner could replace."""
    with transaction(conn, "audit rows") as cur:
        cur.execute("SET LOCAL search_path = pg_catalog")
        cur.execute(
            "SELECT id, at, actor, action, field, token, subject, reason, outcome, prev_hash, hash, scheme"
            " FROM public.pii_audit ORDER BY id"
        )
        return [AuditRow(*row) for row in cur.fetchall()]


def user_tokens(conn: Connection, field: str, user_id: str) -> list[str]:
    """The distinct tokens of ``field`` in ``user_id``'s rows."""
    column = {"ip": "masked_ip", "device_id": "masked_device_id"}[field]
    rows = query(conn, f"SELECT DISTINCT {column} FROM user_logins WHERE user_id = %s ORDER BY 1", (user_id,))
    return [str(r[0]) for r in rows if r[0] and not str(r[0]).startswith("erased:")]


def reveal_request(conn: Connection, field: str, tokens: Sequence[str], reason: str) -> int | None:
    """Ask to reveal ``tokens``: the request and its audit rows are committed before anything leaves.

    None when the database refused (not a pii_officer): that refusal is committed in the audit too.
    """
    with transaction(conn, "reveal request") as cur:
        cur.execute("SELECT etl_reveal_request(%s, %s, %s)", (field, list(tokens), reason))
        request = cur.fetchone()[0]
    return None if request is None else int(request)


def reveal_release(conn: Connection, request: int) -> list[tuple[str, str, str, bytes, str | None]]:
    """(token, ciphertext, key id, sealed or wrapped data key, recipient) for a committed request."""
    with transaction(conn, "reveal release") as cur:
        cur.execute("SELECT * FROM etl_reveal_release(%s)", (request,))
        return [(str(t), str(c), str(k), bytes(m), None if r is None else str(r)) for t, c, k, m, r in cur.fetchall()]


def reveal_outcome(conn: Connection, request: int, token: str, outcome: str) -> None:
    """Audit what became of one token of the caller's own request (once per token)."""
    with transaction(conn, "reveal outcome") as cur:
        cur.execute("SELECT etl_reveal_outcome(%s, %s, %s)", (request, token, outcome))


def erase(conn: Connection, user_id: str, reason: str) -> dict[str, Any] | None:
    """Erase a user in one transaction with its audit row and tombstone (None: refused, and that
    refusal audited)."""
    with transaction(conn, "erase") as cur:
        cur.execute("SELECT * FROM etl_erase(%s, %s)", (user_id, reason))
        found = cur.fetchone()
    if found is None:
        return None
    *counts, before = found
    names = ("tokens", "kept_shared", "erased", "rejected", "rows")
    return {**dict(zip(names, (int(n) for n in counts), strict=True)), "erased_before": before}


# Entries still to move in a masking-key rotation: tokens made with an older key ("k<version>:...").
_OLD_TOKEN = "token NOT LIKE 'k' || %s || ':%%'"  # noqa: S105 - SQL, not a password


def count_old_tokens(conn: Connection, masking_key_version: int) -> int:
    return int(query(conn, f"SELECT count(*) FROM pii_vault WHERE {_OLD_TOKEN}", (str(masking_key_version),))[0][0])


def old_tokens(
    conn: Connection, masking_key_version: int, limit: int, after: tuple[str, str] = ("", "")
) -> list[tuple[str, str, str]]:
    """(field, token, ciphertext) of up to ``limit`` entries past ``after`` whose token predates the key."""
    return _entries(conn, _OLD_TOKEN, str(masking_key_version), limit, after)


# Entries whose data key is not sealed to the current public key (or is a legacy wrapped key).
_NOT_SEALED_TO = "split_part(ciphertext, ':', 1) NOT IN (SELECT key_id FROM vault_data_keys WHERE recipient = %s)"


def count_not_sealed_to(conn: Connection, recipient: str) -> int:
    return int(query(conn, f"SELECT count(*) FROM pii_vault WHERE {_NOT_SEALED_TO}", (recipient,))[0][0])


def not_sealed_to(
    conn: Connection, recipient: str, limit: int, after: tuple[str, str] = ("", "")
) -> list[tuple[str, str, str]]:
    """(field, token, ciphertext) of up to ``limit`` entries past ``after`` to re-seal to ``recipient``."""
    return _entries(conn, _NOT_SEALED_TO, recipient, limit, after)


def _entries(
    conn: Connection, condition: str, value: str, limit: int, after: tuple[str, str]
) -> list[tuple[str, str, str]]:
    """Keyset pages in (field, token) order: an entry left behind (it cannot be opened) is passed over."""
    rows = query(
        conn,
        f"SELECT field, token, ciphertext FROM pii_vault WHERE {condition} AND (field, token) > (%s, %s)"
        " ORDER BY field, token LIMIT %s",
        (value, *after, limit),
    )
    return [(str(f), str(t), str(c)) for f, t, c in rows]


def retokenize(conn: Connection, changes: Sequence[tuple[str, str, str, str]]) -> int:
    """Move rows from old to new tokens: (field, old token, new token, new ciphertext), one transaction.

    Erasures are held back first (as a chunk write does); then only the old entries still there
    move: an entry an erasure deleted since the batch was read never comes back under a new token.
    Each moved old entry goes, its new entry is written (or already exists, from events masked with
    the new key), and every row carrying the old token gets the new one. Returns rows updated.
    """
    updated = 0
    with transaction(conn, "re-tokenize") as cur:
        cur.execute("LOCK TABLE pii_erasures IN SHARE MODE")
        moved: list[tuple[str, str, str, str]] = []
        for field, column in (("ip", "masked_ip"), ("device_id", "masked_device_id")):
            olds = [old for f, old, _, _ in changes if f == field]
            if not olds:
                continue
            cur.execute("DELETE FROM pii_vault WHERE field = %s AND token = ANY(%s) RETURNING token", (field, olds))
            still = {str(t) for (t,) in cur.fetchall()}
            mine = [c for c in changes if c[0] == field and c[1] in still]
            moved += mine
            if mine:
                # execute_values runs one statement per page: count the returned rows of every
                # page (cur.rowcount would be the last page's only)
                updated += len(
                    execute_values(
                        cur,
                        f"UPDATE user_logins u SET {column} = m.new FROM (VALUES %s) AS m(old, new)"
                        f" WHERE u.{column} = m.old RETURNING 1",
                        [(old, new) for _, old, new, _ in mine],
                        fetch=True,
                    )
                )
        if moved:
            execute_values(cur, INSERT_VAULT, [(f, new, c) for f, _, new, c in moved])
    return updated


def reencrypt(conn: Connection, changes: Sequence[tuple[str, str, str]]) -> None:
    """Replace ciphertexts: (field, token, new ciphertext), one transaction."""
    with transaction(conn, "re-encrypt") as cur:
        execute_values(
            cur,
            "UPDATE pii_vault v SET ciphertext = m.c FROM (VALUES %s) AS m(f, t, c)"
            " WHERE v.field = m.f AND v.token = m.t",
            list(changes),
        )
