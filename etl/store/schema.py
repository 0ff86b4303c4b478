"""The schema: migrations (append-only) and the database roles with their grants."""

from etl.store.connection import Connection, transaction

# The exercise's DDL, verbatim: work with a table created by it, or create it.
USER_LOGINS_DDL = """
CREATE TABLE IF NOT EXISTS user_logins(
    user_id varchar(128), device_type varchar(32), masked_ip varchar(256),
    masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date)
"""

# Append-only: a migration, once released, is never edited; add a new one instead.
MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "user_logins table (exercise DDL)", USER_LOGINS_DDL),
    (
        2,
        "user_logins.message_id, unique: makes every write idempotent on the SQS MessageId",
        """
        ALTER TABLE user_logins ADD COLUMN IF NOT EXISTS message_id varchar(128);
        CREATE UNIQUE INDEX IF NOT EXISTS user_logins_message_id_key ON user_logins (message_id);
        COMMENT ON COLUMN user_logins.masked_ip IS
            'k<key version>:<hex HMAC-SHA256 of the canonical IP>; equal tokens = same IP';
        COMMENT ON COLUMN user_logins.masked_device_id IS
            'k<key version>:<hex HMAC-SHA256 of device_id>; equal tokens = same device';
        COMMENT ON COLUMN user_logins.app_version IS
            'major*1000000 + minor*1000 + patch; etl_app_version_text(app_version) gives the text';
        COMMENT ON COLUMN user_logins.create_date IS 'UTC day the event was sent to SQS';
        COMMENT ON COLUMN user_logins.message_id IS 'SQS MessageId; unique';
        """,
    ),
    (
        3,
        "rejected_messages: every refused message, with its reason and sealed body",
        """
        CREATE TABLE IF NOT EXISTS rejected_messages(
            message_id varchar(128) PRIMARY KEY,
            reason varchar(64) NOT NULL,
            detail text NOT NULL,
            sealed_body text NOT NULL,
            body_chars integer NOT NULL,
            sent_at timestamptz,
            receive_count integer,
            rejected_at timestamptz NOT NULL DEFAULT now());
        CREATE INDEX IF NOT EXISTS rejected_messages_reason_idx ON rejected_messages (reason);
        COMMENT ON COLUMN rejected_messages.sealed_body IS
            'original body, Fernet-encrypted with ETL_PAYLOAD_KEY (it may hold raw PII)';
        """,
    ),
    (
        4,
        "app_version SQL functions and the analysts' view",
        """
        CREATE OR REPLACE FUNCTION etl_app_version_text(code integer) RETURNS text
            LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
            SELECT (code / 1000000) || '.' || (code / 1000 % 1000) || '.' || (code % 1000) $$;
        CREATE OR REPLACE FUNCTION etl_app_version_code(version text) RETURNS integer
            LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
            SELECT CASE WHEN major <= 2146 AND minor <= 999 AND patch <= 999
                        THEN major * 1000000 + minor * 1000 + patch END
            FROM (SELECT split_part(version, '.', 1)::integer AS major,
                         coalesce(nullif(split_part(version, '.', 2), '')::integer, 0) AS minor,
                         coalesce(nullif(split_part(version, '.', 3), '')::integer, 0) AS patch
                  WHERE version ~ '^[0-9]{1,4}(\\.[0-9]{1,4}){0,2}$') AS parts $$;
        CREATE OR REPLACE VIEW user_logins_readable AS
            SELECT user_id, device_type, masked_ip, masked_device_id, locale, app_version,
                   etl_app_version_text(app_version) AS app_version_text, create_date, message_id
            FROM user_logins;
        """,
    ),
    (
        5,
        "rejected_replays: every re-queue of a rejected message (etl rejected replay)",
        """
        CREATE TABLE IF NOT EXISTS rejected_replays(
            id bigserial PRIMARY KEY,
            message_id varchar(128) NOT NULL REFERENCES rejected_messages (message_id),
            new_message_id varchar(128) NOT NULL,
            replayed_at timestamptz NOT NULL DEFAULT now(),
            replayed_by text NOT NULL DEFAULT current_user);
        CREATE INDEX IF NOT EXISTS rejected_replays_message_id_idx ON rejected_replays (message_id);
        """,
    ),
    (
        6,
        "analysts' views: shared tokens, logins per day and version, top locales",
        """
        CREATE OR REPLACE VIEW shared_device_tokens AS
            SELECT masked_device_id, count(DISTINCT user_id) AS users, count(*) AS logins,
                   min(create_date) AS first_seen, max(create_date) AS last_seen
            FROM user_logins GROUP BY masked_device_id HAVING count(DISTINCT user_id) > 1;
        CREATE OR REPLACE VIEW shared_ip_tokens AS
            SELECT masked_ip, count(DISTINCT user_id) AS users, count(*) AS logins,
                   min(create_date) AS first_seen, max(create_date) AS last_seen
            FROM user_logins GROUP BY masked_ip HAVING count(DISTINCT user_id) > 1;
        CREATE OR REPLACE VIEW logins_per_day AS
            SELECT create_date, etl_app_version_text(app_version) AS app_version, app_version AS app_version_code,
                   count(*) AS logins, count(DISTINCT user_id) AS users
            FROM user_logins GROUP BY create_date, app_version;
        CREATE OR REPLACE VIEW top_locales AS
            SELECT coalesce(locale, '(none)') AS locale, count(*) AS logins, count(DISTINCT user_id) AS users
            FROM user_logins GROUP BY 1;
        """,
    ),
    (
        7,
        "PII vault (encrypted originals), wrapped data keys, append-only hash-chained audit log",
        """
        CREATE TABLE IF NOT EXISTS vault_keys(
            version integer PRIMARY KEY,
            wrapped_key bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            active boolean NOT NULL DEFAULT true);
        CREATE TABLE IF NOT EXISTS pii_vault(
            field varchar(16) NOT NULL,
            token varchar(80) NOT NULL,
            ciphertext text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (field, token));
        COMMENT ON TABLE pii_vault IS
            'original ip/device_id per token, AES-GCM under a data key wrapped by ETL_VAULT_KEY';
        CREATE TABLE IF NOT EXISTS pii_audit(
            id bigserial PRIMARY KEY,
            at timestamptz NOT NULL,
            actor text NOT NULL,
            action text NOT NULL,
            field text,
            token text,
            subject text,
            reason text NOT NULL,
            outcome text NOT NULL,
            prev_hash text NOT NULL,
            hash text NOT NULL);
        CREATE OR REPLACE FUNCTION etl_audit_hash(prev text, at timestamptz, actor text, action text,
                field text, token text, subject text, reason text, outcome text) RETURNS text
            LANGUAGE sql IMMUTABLE AS $$
            SELECT encode(sha256(convert_to(concat_ws('|', prev,
                to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), actor, action,
                coalesce(field, ''), coalesce(token, ''), coalesce(subject, ''), reason, outcome),
                'UTF8')), 'hex') $$;
        CREATE OR REPLACE FUNCTION etl_audit(p_action text, p_field text, p_token text,
                p_subject text, p_reason text, p_outcome text) RETURNS bigint
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
            DECLARE prev text; ts timestamptz := date_trunc('microseconds', clock_timestamp());
                    new_id bigint;
            BEGIN
                PERFORM pg_advisory_xact_lock(hashtext('etl.audit'));
                SELECT hash INTO prev FROM pii_audit ORDER BY id DESC LIMIT 1;
                prev := coalesce(prev, repeat('0', 64));
                INSERT INTO pii_audit (at, actor, action, field, token, subject, reason, outcome, prev_hash, hash)
                VALUES (ts, session_user, p_action, p_field, p_token, p_subject, p_reason, p_outcome, prev,
                        etl_audit_hash(prev, ts, session_user, p_action, p_field, p_token, p_subject,
                                       p_reason, p_outcome))
                RETURNING id INTO new_id;
                RETURN new_id;
            END $$;
        CREATE OR REPLACE FUNCTION etl_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'pii_audit is append-only'; END $$;
        DROP TRIGGER IF EXISTS pii_audit_append_only ON pii_audit;
        CREATE TRIGGER pii_audit_append_only BEFORE UPDATE OR DELETE ON pii_audit
            FOR EACH ROW EXECUTE FUNCTION etl_audit_append_only();
        REVOKE ALL ON pii_audit, pii_vault, vault_keys FROM PUBLIC;
        """,
    ),
]

ROLES_SQL = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'etl_writer') THEN CREATE ROLE etl_writer NOLOGIN; END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'analyst') THEN CREATE ROLE analyst NOLOGIN; END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pii_officer') THEN CREATE ROLE pii_officer NOLOGIN; END IF;
END $$;
GRANT USAGE ON SCHEMA public TO etl_writer, analyst, pii_officer;
-- the workers: write rows, rejections and vault entries; read the wrapped data keys
GRANT SELECT, INSERT ON user_logins, rejected_messages, pii_vault TO etl_writer;
GRANT SELECT, INSERT ON vault_keys TO etl_writer;
-- analysts: the rows (tokens only) and their views; no vault, no rejected bodies, no audit
GRANT SELECT ON user_logins, user_logins_readable, shared_device_tokens, shared_ip_tokens,
    logins_per_day, top_locales TO analyst;
-- PII officers: may read the vault (they also need the master key to decrypt) and the audit log
GRANT SELECT ON user_logins, pii_vault, vault_keys, pii_audit TO pii_officer;
GRANT DELETE ON pii_vault TO pii_officer;
REVOKE ALL ON FUNCTION etl_audit(text, text, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION etl_audit(text, text, text, text, text, text) TO etl_writer, analyst, pii_officer;
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
