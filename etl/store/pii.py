"""The PII tables: vault entries, the vault's wrapped data keys and the audit log.

Only etl.pii calls the functions here that read vault ciphertext or append audit rows; the
chunk write (etl.store.ingest) only ever inserts vault entries.
"""

from collections.abc import Callable, Sequence
from typing import Any

from psycopg2.extras import execute_values

from etl.store.connection import Connection, query, transaction
from etl.store.ingest import INSERT_VAULT

_AUDIT = "SELECT etl_audit(%s, %s, %s, %s, %s, %s)"


def data_keys(conn: Connection) -> dict[int, bytes]:
    """Every wrapped data key by version."""
    return {int(v): bytes(w) for v, w in query(conn, "SELECT version, wrapped_key FROM vault_keys")}


def active_data_key(conn: Connection, make_wrapped: Callable[[], bytes]) -> tuple[int, bytes]:
    """The active (version, wrapped key); the first caller creates version 1."""
    with transaction(conn, "vault key") as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('etl.vault_keys'))")
        cur.execute("SELECT version, wrapped_key FROM vault_keys WHERE active ORDER BY version DESC LIMIT 1")
        found = cur.fetchone()
        if found:
            return int(found[0]), bytes(found[1])
        wrapped = make_wrapped()
        cur.execute("INSERT INTO vault_keys (version, wrapped_key) VALUES (1, %s)", (wrapped,))
        return 1, wrapped


def add_data_key(conn: Connection, wrapped: bytes) -> int:
    """A new active data key version; older ones stay (for decryption) but inactive."""
    with transaction(conn, "vault key") as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('etl.vault_keys'))")
        cur.execute("SELECT coalesce(max(version), 0) + 1 FROM vault_keys")
        version = int(cur.fetchone()[0])
        cur.execute("UPDATE vault_keys SET active = false")
        cur.execute("INSERT INTO vault_keys (version, wrapped_key) VALUES (%s, %s)", (version, wrapped))
    return version


def audit(
    conn: Connection, action: str, field: str | None, token: str | None, subject: str | None, reason: str, outcome: str
) -> None:
    """Append one audit row (hash-chained, in its own transaction)."""
    with transaction(conn, "audit") as cur:
        cur.execute(_AUDIT, (action, field, token, subject, reason, outcome))


def is_member(conn: Connection, role: str) -> bool:
    """Whether the session's user exists in ``role`` (directly or through another role)."""
    return bool(
        query(
            conn,
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s) AND pg_has_role(current_user, %s, 'MEMBER')",
            (role, role),
        )[0][0]
    )


def audit_chain(conn: Connection) -> list[tuple[Any, ...]]:
    """(id, prev_hash, hash, recomputed hash, previous row's hash) for every audit row."""
    return query(
        conn,
        "SELECT id, prev_hash, hash,"
        " etl_audit_hash(prev_hash, at, actor, action, field, token, subject, reason, outcome),"
        " lag(hash) OVER (ORDER BY id) FROM pii_audit ORDER BY id",
    )


def erase_user(conn: Connection, user_id: str, reason: str) -> dict[str, int]:
    """Delete the vault entries of ``user_id``'s tokens that no other user shares, and audit it.

    The deletion and its audit row are one transaction: neither happens without the other.
    """
    with transaction(conn, "erase") as cur:
        cur.execute(
            """
            WITH mine AS (
                SELECT 'ip' AS field, masked_ip AS token FROM user_logins WHERE user_id = %(u)s
                UNION SELECT 'device_id', masked_device_id FROM user_logins WHERE user_id = %(u)s),
            shared AS (
                SELECT m.field, m.token FROM mine m JOIN user_logins l
                  ON (m.field = 'ip' AND l.masked_ip = m.token
                      OR m.field = 'device_id' AND l.masked_device_id = m.token)
                 AND l.user_id <> %(u)s),
            gone AS (
                DELETE FROM pii_vault v USING mine m
                WHERE v.field = m.field AND v.token = m.token
                  AND NOT EXISTS (SELECT 1 FROM shared s WHERE s.field = m.field AND s.token = m.token)
                RETURNING 1)
            SELECT (SELECT count(*) FROM mine), (SELECT count(DISTINCT (field, token)) FROM shared),
                   (SELECT count(*) FROM gone)
            """,
            {"u": user_id},
        )
        tokens, shared, erased = (int(n) for n in cur.fetchone())
        cur.execute(_AUDIT, ("erase", None, None, user_id, reason, f"erased {erased} vault entries"))
    return {"tokens": tokens, "kept_shared": shared, "erased": erased}


def reveal_lookup(conn: Connection, field: str, tokens: Sequence[str], reason: str) -> dict[str, str]:
    """Ciphertexts of ``tokens``, with one audit row per token written in the same transaction."""
    with transaction(conn, "reveal") as cur:
        cur.execute(
            "SELECT token, ciphertext FROM pii_vault WHERE field = %s AND token = ANY(%s)", (field, list(tokens))
        )
        found = {str(t): str(c) for t, c in cur.fetchall()}
        for token in tokens:
            outcome = "revealed" if token in found else "not found (erased, or never stored)"
            cur.execute(_AUDIT, ("reveal", field, token, None, reason, outcome))
    return found


# Entries still to move in a rotation: tokens made with an older masking key ("k<version>:..."),
# ciphertexts sealed with an older data key ("v<version>:...").
_OLD_TOKEN = "token NOT LIKE 'k' || %s || ':%%'"  # noqa: S105 - SQL, not a password
_OLD_CIPHERTEXT = "ciphertext NOT LIKE 'v' || %s || ':%%'"


def count_old_tokens(conn: Connection, masking_key_version: int) -> int:
    return int(query(conn, f"SELECT count(*) FROM pii_vault WHERE {_OLD_TOKEN}", (str(masking_key_version),))[0][0])


def old_tokens(conn: Connection, masking_key_version: int, limit: int) -> list[tuple[str, str, str]]:
    """(field, token, ciphertext) of up to ``limit`` entries whose token predates the masking key."""
    return _entries(conn, _OLD_TOKEN, str(masking_key_version), limit)


def count_old_ciphertexts(conn: Connection, data_key_version: int) -> int:
    return int(query(conn, f"SELECT count(*) FROM pii_vault WHERE {_OLD_CIPHERTEXT}", (str(data_key_version),))[0][0])


def old_ciphertexts(conn: Connection, data_key_version: int, limit: int) -> list[tuple[str, str, str]]:
    """(field, token, ciphertext) of up to ``limit`` entries sealed with an older data key."""
    return _entries(conn, _OLD_CIPHERTEXT, str(data_key_version), limit)


def _entries(conn: Connection, condition: str, version: str, limit: int) -> list[tuple[str, str, str]]:
    rows = query(
        conn,
        f"SELECT field, token, ciphertext FROM pii_vault WHERE {condition} ORDER BY field, token LIMIT %s",
        (version, limit),
    )
    return [(str(f), str(t), str(c)) for f, t, c in rows]


def retokenize(conn: Connection, changes: Sequence[tuple[str, str, str, str]]) -> int:
    """Move rows from old to new tokens: (field, old token, new token, new ciphertext), one transaction.

    The new vault entry is written (or already exists, from events masked with the new key),
    every row carrying the old token gets the new one, and the old entry goes. Returns rows updated.
    """
    updated = 0
    with transaction(conn, "re-tokenize") as cur:
        execute_values(cur, INSERT_VAULT, [(f, new, c) for f, _, new, c in changes])
        for field, column in (("ip", "masked_ip"), ("device_id", "masked_device_id")):
            pairs = [(old, new) for f, old, new, _ in changes if f == field]
            if pairs:
                execute_values(
                    cur,
                    f"UPDATE user_logins u SET {column} = m.new FROM (VALUES %s) AS m(old, new)"
                    f" WHERE u.{column} = m.old",
                    pairs,
                )
                updated += cur.rowcount
            olds = [old for f, old, _, _ in changes if f == field]
            if olds:
                cur.execute("DELETE FROM pii_vault WHERE field = %s AND token = ANY(%s)", (field, olds))
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
