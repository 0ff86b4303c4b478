"""Applying the schema (etl.store.migrations) and the database roles with their grants."""

from etl.store.connection import Connection, transaction
from etl.store.migrations import MIGRATIONS, USER_LOGINS_DDL

__all__ = ["MIGRATIONS", "USER_LOGINS_DDL", "create_roles", "migrate"]

ROLES_SQL = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'etl_writer') THEN CREATE ROLE etl_writer NOLOGIN; END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'analyst') THEN CREATE ROLE analyst NOLOGIN; END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pii_officer') THEN CREATE ROLE pii_officer NOLOGIN; END IF;
END $$;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO etl_writer, analyst, pii_officer;
-- the workers: insert rows, rejections, vault entries and their own sealed data keys, and read
-- nothing back (their masking key would turn any token they could read into a brute-force target)
REVOKE SELECT ON user_logins, rejected_messages, pii_vault FROM etl_writer;
REVOKE ALL ON vault_keys FROM etl_writer;
GRANT INSERT ON user_logins, rejected_messages, pii_vault, vault_data_keys TO etl_writer;
GRANT SELECT (reason) ON rejected_messages TO etl_writer;  -- INSERT ... RETURNING reason
-- stream positions (no personal data): the fetch records shards, each chunk its range and checkpoint
GRANT SELECT, INSERT, UPDATE ON stream_checkpoints TO etl_writer;
GRANT SELECT, INSERT, DELETE ON stream_ranges TO etl_writer;
GRANT SELECT ON stream_checkpoints TO analyst, pii_officer;
GRANT SELECT, INSERT ON stream_incarnations TO etl_writer;
GRANT SELECT ON stream_incarnations TO analyst, pii_officer;
-- analysts: the rows (tokens only) and their views; no vault, no rejected bodies, no audit
GRANT SELECT ON user_logins, user_logins_readable, shared_device_tokens, shared_ip_tokens,
    logins_per_day, top_locales TO analyst;
-- PII officers: the rows and the audit log; the vault only through the auditing functions
GRANT SELECT ON user_logins, pii_audit TO pii_officer;
REVOKE ALL ON pii_vault, vault_keys, vault_data_keys FROM pii_officer;
REVOKE ALL ON FUNCTION etl_audit(text, text, text, text, text, text) FROM pii_officer;
GRANT EXECUTE ON FUNCTION etl_reveal_release(bigint), etl_reveal_outcome(bigint, text, text) TO pii_officer;
-- workers: the erased users among a chunk's (and a lock that keeps an erasure from racing the chunk)
GRANT EXECUTE ON FUNCTION etl_erasures_for(text[]) TO etl_writer;
-- anyone may ask to reveal or erase: the functions refuse non-officers and audit the attempt
GRANT EXECUTE ON FUNCTION etl_reveal_request(text, text[], text), etl_erase(text, text)
    TO etl_writer, analyst, pii_officer;
-- temporary objects only for the workers (their COPY staging tables); where this login owns the
-- database, PUBLIC loses TEMP (elsewhere the database owner should revoke it: see README)
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_database WHERE datname = current_database()
               AND (datdba = (SELECT oid FROM pg_roles WHERE rolname = current_user)
                    OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user))) THEN
        EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
        EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO etl_writer', current_database());
    END IF;
END $$;
"""


def create_roles(conn: Connection) -> None:
    """Create (idempotently) the etl_writer, analyst and pii_officer roles and their grants."""
    with transaction(conn, "create roles") as cur:
        cur.execute(ROLES_SQL)


def migrate(conn: Connection) -> list[str]:
    """Apply pending migrations (idempotent, safe to run from several processes at once)."""
    applied: list[str] = []
    with transaction(conn, "migrate") as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('etl.migrate'))")
        cur.execute(
            "CREATE TABLE IF NOT EXISTS etl_schema_migrations("
            " version integer PRIMARY KEY, description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur.execute("SELECT version FROM etl_schema_migrations")
        done = {row[0] for row in cur.fetchall()}
        for version, description, sql in MIGRATIONS:
            if version in done:
                continue
            cur.execute(sql)
            cur.execute(
                "INSERT INTO etl_schema_migrations (version, description) VALUES (%s, %s)",
                (version, description),
            )
            applied.append(f"{version}: {description}")
    return applied
