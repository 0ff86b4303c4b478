"""Insider attacks on the PII protections, each run as the role that would attack.

Login roles are created per test (cluster-wide, so dropped afterwards) and granted one of the
project's roles; every attack below once worked against this project and must now fail.
"""

import json
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from etl import store
from etl.sources.sqs import queue as sqs
from tests.integration.conftest import INSIDER_EVENTS
from tests.support import DATABASE_URL, ProcessGroup, drained, officer_env, wait_until

pytestmark = pytest.mark.integration

EVENTS = INSIDER_EVENTS  # what the `written` fixture (conftest) ingests
RAW = ["203.0.113.50", "ann-phone", "198.51.100.4", "bob-phone"]


def etl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etl.ops.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def run_as(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg2.connect(url) as c, c.cursor() as cur:
        cur.execute(sql, params or None)
        return cur.fetchall() if cur.description else []


def denied(url: str, sql: str) -> bool:
    try:
        run_as(url, sql)
    except psycopg2.errors.InsufficientPrivilege:
        return True
    return False


def test_every_security_definer_function_pins_its_search_path_and_owner(conn: store.Connection) -> None:
    rows = store.query(
        conn,
        "SELECT p.proname, p.proconfig, r.rolname, r.rolsuper, r.rolcanlogin FROM pg_proc p"
        " JOIN pg_roles r ON r.oid = p.proowner WHERE p.prosecdef AND p.pronamespace = 'public'::regnamespace",
    )
    assert {r[0] for r in rows} >= {"etl_audit", "etl_reveal_request", "etl_reveal_release", "etl_erase"}
    for name, config, owner, is_super, can_login in rows:
        assert "search_path=pg_catalog, pg_temp" in config, name
        assert set(config) - {"search_path=pg_catalog, pg_temp"} <= {"lock_timeout=5s"}, name  # migration 12
        assert owner == "etl_owner" and not is_super and not can_login, name


def test_a_temp_table_cannot_hijack_the_audit_function(written: ProcessGroup, logins: dict[str, str]) -> None:
    analyst = logins["analyst"]
    assert denied(analyst, "CREATE TEMP TABLE x (a int)")  # TEMP revoked from PUBLIC
    # a writer may create temp tables (its COPY staging table): try the hijack with one
    writer = logins["etl_writer"]
    me = writer.split("//")[1].split("@")[0]
    with psycopg2.connect(writer) as c, c.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE pii_audit (id bigserial, at timestamptz, actor text, action text, field text,"
            " token text, subject text, reason text, outcome text, prev_hash text, hash text, scheme smallint)"
        )
        cur.execute(
            "CREATE TEMP TABLE pii_reveal_requests (id bigserial, actor text, field text, tokens text[],"
            " reason text, at timestamptz)"
        )
        cur.execute(
            "CREATE FUNCTION pg_temp.grab() RETURNS trigger LANGUAGE plpgsql AS"
            f" $$ BEGIN EXECUTE 'GRANT pii_officer TO {me}'; RETURN NEW; END $$"
        )
        cur.execute("CREATE TRIGGER t BEFORE INSERT ON pg_temp.pii_audit FOR EACH ROW EXECUTE FUNCTION pg_temp.grab()")
        cur.execute("SELECT etl_reveal_request('ip', ARRAY['k1:x'], 'hijack')")
        assert cur.fetchone() == (None,)  # refused: not an officer
        cur.execute("SELECT count(*) FROM pg_temp.pii_audit")
        assert cur.fetchone() == (0,)  # the function never touched the temp table
    assert run_as(DATABASE_URL, "SELECT pg_has_role(%s, 'pii_officer', 'MEMBER')", (me,)) == [(False,)]
    assert run_as(DATABASE_URL, "SELECT actor, outcome FROM pii_audit ORDER BY id DESC LIMIT 1") == [
        (me, "refused: not a pii_officer")  # in the real log, without the caller's reason
    ]


def test_no_role_reads_vault_ciphertext_or_keys_directly(written: ProcessGroup, logins: dict[str, str]) -> None:
    for role in ("etl_writer", "analyst", "pii_officer"):
        url = logins[role]
        for sql in (
            "SELECT ciphertext FROM pii_vault",
            "SELECT * FROM vault_data_keys",
            "SELECT * FROM vault_keys",
            "DELETE FROM pii_vault",
            "DELETE FROM pii_audit",
            "TRUNCATE pii_audit",
        ):
            assert denied(url, sql), (role, sql)
    for role in ("etl_writer", "pii_officer"):
        assert denied(logins[role], "SELECT etl_audit('reveal', 'ip', 'k1:x', NULL, 'forged', 'revealed')"), role
    assert denied(logins["analyst"], "SELECT * FROM etl_reveal_release(1)")
    assert run_as(logins["etl_writer"], "SELECT * FROM etl_erase('ann', 'no')") == []  # refused, audited


def test_a_worker_login_reads_nothing_back(written: ProcessGroup, logins: dict[str, str]) -> None:
    """Workers hold the masking key: any token they could read would be a brute-force target."""
    writer = logins["etl_writer"]
    for sql in (
        "SELECT masked_ip FROM user_logins",
        "SELECT token FROM pii_vault",
        "SELECT sealed_body FROM rejected_messages",
        "SELECT user_id FROM rejected_messages",
        "SELECT token FROM pii_audit",
    ):
        assert denied(writer, sql), sql


def test_an_officer_cannot_forge_or_bend_the_audit(
    written: ProcessGroup, logins: dict[str, str], conn: store.Connection
) -> None:
    officer = logins["pii_officer"]
    token = str(store.query(conn, "SELECT masked_ip FROM user_logins WHERE user_id = 'ann'")[0][0])
    with pytest.raises(psycopg2.errors.InvalidParameterValue):  # raw values are not tokens
        run_as(officer, "SELECT etl_reveal_request('ip', ARRAY['203.0.113.50'], 'raw')")
    request = run_as(officer, "SELECT etl_reveal_request('ip', %s, 'case 9')", ([token],))[0][0]
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):  # an outcome not from the list
        run_as(officer, "SELECT etl_reveal_outcome(%s, %s, 'all good')", (request, token))
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):  # a token the request did not name
        run_as(officer, "SELECT etl_reveal_outcome(%s, %s, 'failed')", (request, "k1:" + "0" * 64))
    run_as(officer, "SELECT etl_reveal_outcome(%s, %s, 'failed')", (request, token))
    with pytest.raises(psycopg2.errors.UniqueViolation):  # once per token
        run_as(officer, "SELECT etl_reveal_outcome(%s, %s, 'revealed')", (request, token))
    analyst = logins["analyst"]  # a refusal keeps a count, never the values nor the reason sent
    run_as(analyst, "SELECT etl_reveal_request('ip', ARRAY['203.0.113.50', 'ann-phone'], 'fishing')")
    assert store.query(conn, "SELECT field, token, subject, reason FROM pii_audit ORDER BY id DESC LIMIT 1") == [
        (None, None, "2 tokens", "(not kept: refused caller)")
    ]


def test_a_worker_host_with_its_login_recovers_no_value(written: ProcessGroup, logins: dict[str, str]) -> None:
    """Everything a worker host has: its environment (public, masking, payload keys) and its login."""
    env = written.env  # DATABASE_URL is the writer login
    out = etl(env, "reveal", "--field", "ip", "--user-id", "ann", "--reason", "I am a worker")
    assert out.returncode == 2 and "ETL_VAULT_PRIVATE_KEY is not set" in out.stderr
    assert not any(raw in out.stdout + out.stderr for raw in RAW)
    # even with an officer's private key, the writer login gets no ciphertext to open
    stolen = etl(officer_env(env), "reveal", "--field", "ip", "--user-id", "ann", "--reason", "stolen key")
    assert stolen.returncode == 1 and not any(raw in stolen.stdout for raw in RAW)


def test_junk_data_keys_from_a_writer_break_nothing(
    written: ProcessGroup, queue: sqs.Queue, conn: store.Connection, logins: dict[str, str]
) -> None:
    writer = logins["etl_writer"]
    for junk in ("('sjunk', 'junk', 'nobody')", "('v1', decode(repeat('00', 92), 'hex'), '0123456789abcdef')"):
        with pytest.raises(psycopg2.errors.CheckViolation):
            run_as(writer, f"INSERT INTO vault_data_keys VALUES {junk}")
    # well-formed but bogus: a key of zeros "sealed" to the real public key, and an entry using it
    recipient = str(store.query(conn, "SELECT recipient FROM vault_data_keys LIMIT 1")[0][0])
    token = "k1:" + "e" * 64
    run_as(
        writer,
        "INSERT INTO vault_data_keys VALUES ('s0000000000000000', decode(repeat('00', 92), 'hex'), %s)",
        (recipient,),
    )
    run_as(writer, "INSERT INTO pii_vault VALUES ('device_id', %s, 's0000000000000000:AAAA')", (token,))
    run_as(
        writer,
        "INSERT INTO user_logins (message_id, user_id, masked_ip, masked_device_id) VALUES ('w-1', 'zed', 'k1:x', %s)",
        (token,),
    )
    queue.send([json.dumps({**EVENTS[0], "user_id": "cy", "device_id": "cy-phone"})])
    wait_until(drained(queue, conn, 4), 60, "a chunk after the junk key")  # ann, bob, zed (by hand), cy
    officer = officer_env({**written.env, "DATABASE_URL": logins["pii_officer"]})
    out = etl(officer, "reveal", "--field", "device_id", "--user-id", "cy", "--reason", "after junk")
    assert [json.loads(line)["value"] for line in out.stdout.splitlines()] == ["cy-phone"]
    bogus = etl(officer, "reveal", "--field", "device_id", "--user-id", "zed", "--reason", "bogus")
    assert bogus.returncode == 1 and "Traceback" not in bogus.stderr
    assert [json.loads(line)["outcome"] for line in bogus.stdout.splitlines()] == ["failed"]


def test_a_refused_or_empty_reveal_is_audited_and_free_sql_is_gone(
    written: ProcessGroup, logins: dict[str, str], conn: store.Connection
) -> None:
    officer = officer_env({**written.env, "DATABASE_URL": logins["pii_officer"]})
    free_sql = etl(officer, "reveal", "--field", "ip", "--query", "SELECT 1; DROP TABLE user_logins", "--reason", "x")
    assert free_sql.returncode == 2 and store.query(conn, "SELECT count(*) FROM user_logins") == [(2,)]
    empty = etl(officer, "reveal", "--field", "ip", "--user-id", "nobody", "--reason", "empty")
    assert empty.returncode == 1 and "check the id" in empty.stderr
    analyst = etl(
        {**officer, "DATABASE_URL": logins["analyst"]},
        "reveal",
        "--field",
        "ip",
        "--user-id",
        "ann",
        "--reason",
        "nosy",
    )
    assert analyst.returncode == 1
    outcomes = store.query(conn, "SELECT reason, outcome FROM pii_audit ORDER BY id")
    assert ("empty", "requested: no tokens selected") in outcomes
    assert ("(not kept: refused caller)", "refused: not a pii_officer") in outcomes
    assert not [r for r in outcomes if r[0] == "nosy"]


def test_a_moved_ciphertext_is_a_failed_reveal_and_audited(
    written: ProcessGroup, logins: dict[str, str], conn: store.Connection
) -> None:
    with conn, conn.cursor() as cur:  # the table owner swaps two entries' ciphertexts
        cur.execute(
            "UPDATE pii_vault v SET ciphertext = o.ciphertext FROM pii_vault o"
            " WHERE v.field = 'device_id' AND o.field = 'device_id' AND v.token <> o.token"
        )
    officer = officer_env({**written.env, "DATABASE_URL": logins["pii_officer"]})
    out = etl(officer, "reveal", "--field", "device_id", "--user-id", "ann", "--reason", "moved")
    assert out.returncode == 1
    assert [json.loads(line)["outcome"] for line in out.stdout.splitlines()] == ["failed"]
    assert store.query(conn, "SELECT outcome FROM pii_audit WHERE reason = 'moved' ORDER BY id") == [
        ("released",),
        ("failed",),
    ]


def test_the_owner_cannot_quietly_rewrite_an_anchored_chain(
    written: ProcessGroup, logins: dict[str, str], conn: store.Connection, tmp_path: Path
) -> None:
    officer = officer_env(
        {**written.env, "DATABASE_URL": logins["pii_officer"], "ETL_AUDIT_ANCHOR": f"file://{tmp_path}/anchors"}
    )
    for reason in ("one", "two", "three"):
        etl(officer, "reveal", "--field", "ip", "--user-id", "bob", "--reason", reason)
    anchored = etl(officer, "audit", "anchor")
    assert anchored.returncode == 0, anchored.stderr
    admin = {**officer, "DATABASE_URL": DATABASE_URL}
    assert etl(admin, "audit", "verify").returncode == 0

    with conn, conn.cursor() as cur:  # drop the newest rows without the triggers noticing
        cur.execute("SET session_replication_role = replica")
        cur.execute("DELETE FROM pii_audit WHERE id >= (SELECT max(id) - 1 FROM pii_audit)")
        cur.execute("SET session_replication_role = DEFAULT")
    deleted = etl(admin, "audit", "verify")
    assert deleted.returncode == 1 and "BROKEN" in deleted.stdout

    with conn, conn.cursor() as cur:  # rewrite an anchored row, and bend the hash function to match
        cur.execute("SELECT id, hash FROM pii_audit ORDER BY id LIMIT 1")
        first_id, first_hash = cur.fetchone()
        cur.execute("SET session_replication_role = replica")
        cur.execute("UPDATE pii_audit SET reason = 'nothing to see' WHERE id = %s", (first_id,))
        cur.execute("SET session_replication_role = DEFAULT")
        cur.execute(
            "CREATE OR REPLACE FUNCTION etl_audit_hash_v2(prev text, at timestamptz, actor text, action text,"
            " field text, token text, subject text, reason text, outcome text) RETURNS text LANGUAGE sql"
            f" AS $$ SELECT '{first_hash}'::text $$"
        )
    bent = etl(admin, "audit", "verify")
    assert bent.returncode == 1 and f"row {first_id} does not chain" in bent.stdout

    with conn, conn.cursor() as cur, pytest.raises(psycopg2.errors.RaiseException):
        cur.execute("TRUNCATE pii_audit")
    with conn, conn.cursor() as cur:
        cur.execute("SET session_replication_role = replica")
        cur.execute("TRUNCATE pii_audit")
        cur.execute("SET session_replication_role = DEFAULT")
    truncated = etl(admin, "audit", "verify")
    assert truncated.returncode == 1 and "BROKEN" in truncated.stdout


def test_audit_hashing_is_unambiguous(conn: store.Connection) -> None:
    def h(*fields: str | None) -> str:
        sql = "SELECT etl_audit_hash_v2('0', '2026-01-01', 'a', 'reveal', %s, %s, NULL, 'r', 'o')"
        return str(store.query(conn, sql, fields)[0][0])

    assert h("a|b", "c") != h("a", "b|c")
    assert h(None, "x") != h("", "x")
