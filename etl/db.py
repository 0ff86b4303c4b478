"""The only module that talks to Postgres (psycopg2): schema, transactional writes, stats.

Driver errors leave this module as etl.errors kinds, with the SQLSTATE and class name only:
psycopg2's own messages can quote values, and values must never reach a log.
"""

import io
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2.extras import execute_values

from etl.errors import ConfigError, TerminalError, TransientError
from etl.records import ChunkResult, LoginRow

Connection = psycopg2.extensions.connection

# SQLSTATE classes and codes that heal by themselves: connection trouble (08), server shutting
# down or out of resources (57P, 53), serialization failures and deadlocks (40), lock and
# statement timeouts (55P03, 57014).
_TRANSIENT_PREFIXES = ("08", "53", "57P", "40")
_TRANSIENT_CODES = {"55P03", "57014", "58000", "58030"}
_UNDEFINED = {"42P01", "42703"}  # undefined table / column: the schema is missing or old

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


@dataclass(frozen=True)
class WriteResult:
    inserted: int  # new user_logins rows
    duplicates: int  # rows already written by an earlier delivery of the same message
    rejected: int  # new rejected_messages rows
    rejected_by_reason: dict[str, int] = field(default_factory=dict)  # the new ones, by reason


def _translate(exc: psycopg2.Error, operation: str) -> Exception:
    code = exc.pgcode or ""
    name = type(exc).__name__
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
            options=f"-c statement_timeout={statement_timeout_ms}",
        )
    except psycopg2.Error as exc:
        raise _translate(exc, "connect") from None


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
        raise _translate(exc, operation) from None


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


_COLUMNS = "message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date"
# Rows are COPYed into a per-session staging table, then moved in one INSERT ... SELECT: about
# twice as fast as a multi-row VALUES insert at 500 rows (bench/: write stage).
_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS etl_stage_logins
    (LIKE user_logins INCLUDING DEFAULTS) ON COMMIT DELETE ROWS
"""
_COPY_ROWS = f"COPY etl_stage_logins ({_COLUMNS}) FROM STDIN"
_MOVE_ROWS = f"""
INSERT INTO user_logins ({_COLUMNS}) SELECT {_COLUMNS} FROM etl_stage_logins ORDER BY message_id
ON CONFLICT (message_id) DO NOTHING
"""
_staged: "weakref.WeakSet[Connection]" = weakref.WeakSet()
_INSERT_REJECTED = """
INSERT INTO rejected_messages (message_id, reason, detail, sealed_body, body_chars, sent_at,
                               receive_count)
VALUES %s
ON CONFLICT (message_id) DO NOTHING
RETURNING reason
"""


def write_chunk(conn: Connection, chunk: ChunkResult) -> WriteResult:
    """Write a chunk's rows and rejections in ONE transaction, idempotently per message id.

    Rows are sorted by message id so two chunks sharing ids (a redelivery racing the original)
    take their index locks in the same order and cannot deadlock.
    """
    rows = sorted(chunk.rows, key=lambda r: r.message_id)
    rejected = sorted(chunk.rejected, key=lambda r: r.message_id)
    inserted = 0
    new_reasons: Counter[str] = Counter()
    with transaction(conn, "write chunk") as cur:
        if rows:
            if conn not in _staged:
                cur.execute(_STAGE)  # once per session (remembered only after the commit)
            cur.copy_expert(_COPY_ROWS, copy_text(rows))
            cur.execute(_MOVE_ROWS)
            inserted = cur.rowcount
        if rejected:
            values = [
                (r.message_id, r.reason, r.detail, r.sealed_body, r.body_chars, r.sent_at, r.receive_count)
                for r in rejected
            ]
            new_reasons = Counter(
                r[0] for r in execute_values(cur, _INSERT_REJECTED, values, page_size=len(values), fetch=True)
            )
        if chunk.vault:
            entries = [(v.field, v.token, v.ciphertext) for v in sorted(chunk.vault, key=lambda v: (v.field, v.token))]
            execute_values(cur, _INSERT_VAULT, entries, page_size=len(entries))
    if rows:
        _staged.add(conn)
    return WriteResult(
        inserted=inserted,
        duplicates=len(rows) - inserted,
        rejected=sum(new_reasons.values()),
        rejected_by_reason=dict(new_reasons),
    )


def _copy_field(value: object) -> str:
    if value is None:
        return "\\N"
    text = str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


def copy_text(rows: Sequence[LoginRow]) -> io.StringIO:
    """Rows in COPY's text format (validation already refused NUL and unpaired surrogates)."""
    buf = io.StringIO()
    buf.writelines(
        "\t".join(
            map(
                _copy_field,
                (
                    r.message_id,
                    r.user_id,
                    r.device_type,
                    r.masked_ip,
                    r.masked_device_id,
                    r.locale,
                    r.app_version,
                    r.create_date,
                ),
            )
        )
        + "\n"
        for r in rows
    )
    buf.seek(0)
    return buf


def query(conn: Connection, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run a read-only query and return all rows (used by stats and the demo summary)."""
    with transaction(conn, "query") as cur:
        cur.execute(sql, params or None)  # no parameters: a literal % stays a %
        return list(cur.fetchall())


def stats(conn: Connection, message_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Row and rejection counts, rejections by reason, and tokens shared by several rows.

    With ``message_ids``, only those messages count (the demo's own run).
    """
    where, params = ("WHERE message_id = ANY(%s)", (list(message_ids),)) if message_ids is not None else ("", ())
    rows = query(conn, f"SELECT count(*) FROM user_logins {where}", params)[0][0]
    by_reason = dict(
        query(
            conn, f"SELECT reason, count(*) FROM rejected_messages {where} GROUP BY reason ORDER BY 2 DESC, 1", params
        )
    )
    shared = {}
    for column in ("masked_ip", "masked_device_id"):
        shared[column] = query(
            conn,
            f"SELECT count(*), coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM user_logins {where} "
            f"GROUP BY {column} HAVING count(*) > 1) AS dup",
            params,
        )[0]
    return {
        "rows": rows,
        "rejected": sum(by_reason.values()),
        "rejected_by_reason": by_reason,
        "shared_ip_tokens": shared["masked_ip"][0],
        "rows_with_shared_ip": int(shared["masked_ip"][1]),
        "shared_device_tokens": shared["masked_device_id"][0],
        "rows_with_shared_device": int(shared["masked_device_id"][1]),
    }


def rejected_summary(conn: Connection) -> list[tuple[Any, ...]]:
    """Per reason: count, how many were replayed, first and last rejection, and the details."""
    return query(
        conn,
        """
        SELECT r.reason, count(*), count(DISTINCT p.message_id), min(r.rejected_at), max(r.rejected_at),
               (SELECT array_agg(d ORDER BY d) FROM (SELECT DISTINCT detail AS d FROM rejected_messages
                WHERE reason = r.reason LIMIT 5) AS details)
        FROM rejected_messages r LEFT JOIN rejected_replays p USING (message_id)
        GROUP BY r.reason ORDER BY count(*) DESC, r.reason
        """,
    )


def rejected_to_replay(conn: Connection, reason: str | None, limit: int) -> list[tuple[str, str]]:
    """(message_id, sealed_body) of rejections never replayed, oldest first."""
    rows = query(
        conn,
        """
        SELECT message_id, sealed_body FROM rejected_messages r
        WHERE (%s::text IS NULL OR reason = %s)
          AND NOT EXISTS (SELECT 1 FROM rejected_replays p WHERE p.message_id = r.message_id)
        ORDER BY rejected_at, message_id LIMIT %s
        """,
        (reason, reason, limit),
    )
    return [(str(m), str(b)) for m, b in rows]


def record_replays(conn: Connection, pairs: Sequence[tuple[str, str]]) -> None:
    """Record (original message_id, new SQS MessageId) for each replayed message."""
    with transaction(conn, "record replays") as cur:
        execute_values(cur, "INSERT INTO rejected_replays (message_id, new_message_id) VALUES %s", list(pairs))


def report(conn: Connection, limit: int) -> dict[str, list[tuple[Any, ...]]]:
    """What analysts come for, from the views of migration 6 (tokens, never raw values)."""
    return {
        "shared_devices": query(
            conn, "SELECT * FROM shared_device_tokens ORDER BY users DESC, logins DESC LIMIT %s", (limit,)
        ),
        "shared_ips": query(conn, "SELECT * FROM shared_ip_tokens ORDER BY users DESC, logins DESC LIMIT %s", (limit,)),
        "per_day": query(
            conn,
            "SELECT create_date, sum(logins)::bigint, sum(users)::bigint FROM logins_per_day "
            "GROUP BY create_date ORDER BY create_date DESC LIMIT %s",
            (limit,),
        ),
        "versions": query(
            conn,
            "SELECT app_version, sum(logins)::bigint FROM logins_per_day GROUP BY app_version, app_version_code "
            "ORDER BY app_version_code DESC LIMIT %s",
            (limit,),
        ),
        "locales": query(conn, "SELECT * FROM top_locales ORDER BY logins DESC, locale LIMIT %s", (limit,)),
    }


_INSERT_VAULT = "INSERT INTO pii_vault (field, token, ciphertext) VALUES %s ON CONFLICT (field, token) DO NOTHING"


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


def audit(
    conn: Connection, action: str, field: str | None, token: str | None, subject: str | None, reason: str, outcome: str
) -> None:
    """Append one audit row (hash-chained, in its own transaction)."""
    with transaction(conn, "audit") as cur:
        cur.execute("SELECT etl_audit(%s, %s, %s, %s, %s, %s)", (action, field, token, subject, reason, outcome))


def has_role(conn: Connection, role: str) -> bool:
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


def erase_user(conn: Connection, user_id: str) -> dict[str, int]:
    """Delete the vault entries of ``user_id``'s tokens that no other user shares."""
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
        tokens, shared, erased = cur.fetchone()
    return {"tokens": int(tokens), "kept_shared": int(shared), "erased": int(erased)}


def reveal_lookup(conn: Connection, field: str, tokens: Sequence[str], reason: str) -> dict[str, str]:
    """Ciphertexts of ``tokens``, with one audit row per token written in the same transaction."""
    with transaction(conn, "reveal") as cur:
        cur.execute(
            "SELECT token, ciphertext FROM pii_vault WHERE field = %s AND token = ANY(%s)", (field, list(tokens))
        )
        found = {str(t): str(c) for t, c in cur.fetchall()}
        for token in tokens:
            outcome = "revealed" if token in found else "not found (erased, or never stored)"
            cur.execute("SELECT etl_audit('reveal', %s, %s, NULL, %s, %s)", (field, token, reason, outcome))
    return found


def vault_entries(conn: Connection, where: str, params: Sequence[Any], limit: int) -> list[tuple[str, str, str]]:
    """(field, token, ciphertext) of vault entries matching ``where`` (a fixed SQL condition)."""
    rows = query(
        conn,
        f"SELECT field, token, ciphertext FROM pii_vault WHERE {where} ORDER BY field, token LIMIT %s",
        (*params, limit),
    )
    return [(str(f), str(t), str(c)) for f, t, c in rows]


def count_vault_entries(conn: Connection, where: str, params: Sequence[Any]) -> int:
    return int(query(conn, f"SELECT count(*) FROM pii_vault WHERE {where}", params)[0][0])


def retokenize(conn: Connection, changes: Sequence[tuple[str, str, str, str]]) -> int:
    """Move rows from old to new tokens: (field, old token, new token, new ciphertext), one transaction.

    The new vault entry is written (or already exists, from events masked with the new key),
    every row carrying the old token gets the new one, and the old entry goes. Returns rows updated.
    """
    updated = 0
    with transaction(conn, "re-tokenize") as cur:
        execute_values(cur, _INSERT_VAULT, [(f, new, c) for f, _, new, c in changes])
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


def add_data_key(conn: Connection, wrapped: bytes) -> int:
    """A new active data key version; older ones stay (for decryption) but inactive."""
    with transaction(conn, "vault key") as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('etl.vault_keys'))")
        cur.execute("SELECT coalesce(max(version), 0) + 1 FROM vault_keys")
        version = int(cur.fetchone()[0])
        cur.execute("UPDATE vault_keys SET active = false")
        cur.execute("INSERT INTO vault_keys (version, wrapped_key) VALUES (%s, %s)", (version, wrapped))
    return version


def reencrypt(conn: Connection, changes: Sequence[tuple[str, str, str]]) -> None:
    """Replace ciphertexts: (field, token, new ciphertext), one transaction."""
    with transaction(conn, "re-encrypt") as cur:
        execute_values(
            cur,
            "UPDATE pii_vault v SET ciphertext = m.c FROM (VALUES %s) AS m(f, t, c)"
            " WHERE v.field = m.f AND v.token = m.t",
            list(changes),
        )
