"""Migrations 1-6: the exercise's table, idempotent writes, rejections, app versions, views."""

# The exercise's DDL, verbatim: work with a table created by it, or create it.
USER_LOGINS_DDL = """
CREATE TABLE IF NOT EXISTS user_logins(
    user_id varchar(128), device_type varchar(32), masked_ip varchar(256),
    masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date)
"""

# Append-only: a migration, once released, is never edited; add a new one instead.
CORE: list[tuple[int, str, str]] = [
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
]
