"""The PII vault: recovery with audit, roles, erasure, and a tamper-evident audit log."""

import json
import subprocess
import sys

import psycopg2
import pytest

from etl import sqs, store
from tests.support import DATABASE_URL, ProcessGroup, drained, wait_until

pytestmark = pytest.mark.integration


def ev(user: str, ip: str, device: str) -> str:
    return json.dumps({"user_id": user, "device_type": "ios", "ip": ip, "device_id": device, "app_version": "1.0"})


def etl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etl.cli", *args], env=env, capture_output=True, text=True, timeout=60)


def reveal(env: dict[str, str], field: str, token: str, reason: str = "check") -> subprocess.CompletedProcess[str]:
    return etl(env, "reveal", "--field", field, "--token", token, "--reason", reason)


def token_of(conn: store.Connection, column: str, user: str) -> str:
    return str(store.query(conn, f"SELECT {column} FROM user_logins WHERE user_id = %s", (user,))[0][0])


@pytest.fixture
def loaded(pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection) -> ProcessGroup:
    queue.send(
        [
            ev("ann", "203.0.113.50", "ann-phone"),
            ev("bob", "203.0.113.50", "bob-phone"),
            ev("cy", "2001:DB8::1", "cy-phone"),
        ]
    )
    pipeline.start("worker", "beat")
    wait_until(drained(queue, conn, 3), 60, "the queue to drain")
    created = etl(pipeline.env, "init", "--roles")
    assert created.returncode == 0, created.stderr
    return pipeline


def test_vault_holds_one_encrypted_entry_per_distinct_token(loaded: ProcessGroup, conn: store.Connection) -> None:
    counts = dict(store.query(conn, "SELECT field, count(*) FROM pii_vault GROUP BY field"))
    assert counts == {"ip": 2, "device_id": 3}
    dump = subprocess.run(["pg_dump", "--data-only", DATABASE_URL], capture_output=True, check=True).stdout
    for raw in (b"203.0.113.50", b"ann-phone", b"2001:db8::1"):
        assert raw not in dump


def test_recovery_round_trips_exactly_and_is_audited(loaded: ProcessGroup, conn: store.Connection) -> None:
    out = reveal(loaded.env, "ip", token_of(conn, "masked_ip", "cy"), "case 42")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("\t2001:db8::1")  # canonical form
    batch = etl(
        loaded.env,
        "reveal",
        "--field",
        "device_id",
        "--query",
        "SELECT masked_device_id FROM user_logins",
        "--reason",
        "audit",
    )
    assert sorted(line.split("\t")[1] for line in batch.stdout.splitlines()) == ["ann-phone", "bob-phone", "cy-phone"]
    audit = store.query(conn, "SELECT actor, action, reason, outcome FROM pii_audit ORDER BY id")
    assert audit[0] == ("postgres", "reveal", "case 42", "revealed") and len(audit) == 4


def test_an_analyst_is_refused_the_vault_and_the_refusal_is_audited(
    loaded: ProcessGroup, conn: store.Connection
) -> None:
    with conn, conn.cursor() as cur:
        cur.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'test_analyst') THEN "
            "CREATE ROLE test_analyst LOGIN IN ROLE analyst; END IF; END $$"
        )
    analyst_url = DATABASE_URL.replace("postgres@", "test_analyst@")
    analyst = psycopg2.connect(analyst_url)
    try:
        with analyst.cursor() as cur:
            cur.execute("SELECT count(*) FROM user_logins")  # the rows: yes
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("SELECT * FROM pii_vault")  # the vault: no
    finally:
        analyst.close()
    refused = etl(
        {**loaded.env, "DATABASE_URL": analyst_url},
        "reveal",
        "--field",
        "ip",
        "--token",
        token_of(conn, "masked_ip", "ann"),
        "--reason",
        "curious",
    )
    assert refused.returncode == 1 and "203.0.113.50" not in refused.stdout + refused.stderr
    assert store.query(conn, "SELECT actor, outcome FROM pii_audit") == [
        ("test_analyst", "refused: the database user is not a pii_officer")
    ]


def test_erasure_shreds_only_what_no_one_else_shares(loaded: ProcessGroup, conn: store.Connection) -> None:
    out = etl(loaded.env, "erase", "--user-id", "ann", "--reason", "GDPR art. 17 request 7")
    assert out.returncode == 0, out.stderr
    assert "1 vault entries erased" in out.stdout and "1 kept" in out.stdout
    ann_device = reveal(loaded.env, "device_id", token_of(conn, "masked_device_id", "ann"), "check")
    assert "<not found" in ann_device.stdout
    shared_ip = reveal(loaded.env, "ip", token_of(conn, "masked_ip", "bob"), "check")
    assert shared_ip.stdout.strip().endswith("\t203.0.113.50")  # bob still owns it
    bob_device = reveal(loaded.env, "device_id", token_of(conn, "masked_device_id", "bob"), "check")
    assert bob_device.stdout.strip().endswith("\tbob-phone")


def test_audit_chain_detects_an_edited_row(loaded: ProcessGroup, conn: store.Connection) -> None:
    for reason in ("one", "two", "three"):
        reveal(loaded.env, "ip", token_of(conn, "masked_ip", "cy"), reason)
    assert etl(loaded.env, "audit", "verify").stdout.startswith("audit chain intact: 3 rows")
    with conn, conn.cursor() as cur, pytest.raises(psycopg2.errors.RaiseException):
        cur.execute("UPDATE pii_audit SET reason = 'nothing to see' WHERE reason = 'two'")
    with conn, conn.cursor() as cur:  # an owner can bypass the trigger, but not the chain
        cur.execute("ALTER TABLE pii_audit DISABLE TRIGGER pii_audit_append_only")
        cur.execute("UPDATE pii_audit SET reason = 'nothing to see' WHERE reason = 'two'")
        cur.execute("ALTER TABLE pii_audit ENABLE TRIGGER pii_audit_append_only")
    broken = etl(loaded.env, "audit", "verify")
    assert broken.returncode == 1 and "BROKEN at row 2" in broken.stdout


def groups(conn: store.Connection, column: str) -> set[frozenset[str]]:
    """The partition of users that GROUP BY <column> produces."""
    rows = store.query(conn, f"SELECT array_agg(user_id ORDER BY user_id) FROM user_logins GROUP BY {column}")
    return {frozenset(r[0]) for r in rows}


def test_masking_key_rotation_keeps_duplicates_findable(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection
) -> None:
    queue.send([ev("old-1", "198.51.100.1", "dev-A"), ev("old-2", "198.51.100.2", "dev-B")])
    pipeline.start("worker", "beat")
    wait_until(drained(queue, conn, 2), 60, "the first events")
    pipeline.stop()

    new_key = {"ETL_MASKING_KEY": "a-brand-new-masking-key-0123456789abcdef", "ETL_MASKING_KEY_VERSION": "2"}
    pipeline.env.update(new_key)
    queue.send([ev("new-1", "198.51.100.1", "dev-A"), ev("new-2", "198.51.100.3", "dev-C")])
    pipeline.start("worker", "beat")
    wait_until(drained(queue, conn, 4), 60, "the events after the key change")
    # before rotation the key boundary splits the same device into two groups
    assert frozenset({"old-1", "new-1"}) not in groups(conn, "masked_device_id")

    out = etl(pipeline.env, "rotate-masking-key", "--reason", "yearly")
    assert out.returncode == 0, out.stderr
    expected = {frozenset({"old-1", "new-1"}), frozenset({"old-2"}), frozenset({"new-2"})}
    assert groups(conn, "masked_device_id") == expected
    assert groups(conn, "masked_ip") == expected
    assert store.query(conn, "SELECT count(*) FROM user_logins WHERE masked_ip NOT LIKE 'k2:%'") == [(0,)]
    again = etl(pipeline.env, "rotate-masking-key")  # resumable / idempotent: nothing left to do
    assert "re-tokenized 0 tokens" in again.stdout
    revealed = reveal(pipeline.env, "device_id", token_of(conn, "masked_device_id", "old-1"), "after rotation")
    assert revealed.stdout.strip().endswith("\tdev-A")


def test_vault_key_rotation_reencrypts_everything(loaded: ProcessGroup, conn: store.Connection) -> None:
    out = etl(loaded.env, "rotate-vault-key", "--reason", "yearly")
    assert out.returncode == 0, out.stderr
    assert store.query(conn, "SELECT count(*) FROM pii_vault WHERE ciphertext NOT LIKE 'v2:%'") == [(0,)]
    assert store.query(conn, "SELECT version, active FROM vault_keys ORDER BY version") == [(1, False), (2, True)]
    revealed = reveal(loaded.env, "ip", token_of(conn, "masked_ip", "cy"), "check")
    assert revealed.stdout.strip().endswith("\t2001:db8::1")


def test_no_raw_value_anywhere_after_every_pii_command(loaded: ProcessGroup, conn: store.Connection) -> None:
    import redis as redis_lib

    from tests.integration.test_pipeline import assert_absent, dump_redis
    from tests.support import BROKER_URL

    env = loaded.env
    for args in (
        ["reveal", "--field", "ip", "--query", "SELECT masked_ip FROM user_logins", "--reason", "sweep"],
        ["erase", "--user-id", "ann", "--reason", "request"],
        ["rotate-vault-key"],
        ["audit", "verify"],
        ["report"],
        ["stats"],
    ):
        assert etl(env, *args).returncode == 0, args
    raw = ["203.0.113.50", "ann-phone", "bob-phone", "cy-phone", "2001:db8::1", "2001:DB8::1"]
    dump = subprocess.run(["pg_dump", DATABASE_URL], capture_output=True, check=True).stdout
    assert_absent(raw, dump, "pg_dump after the PII commands")
    assert_absent(raw, dump_redis(redis_lib.Redis.from_url(BROKER_URL)), "Redis")
    for name in ("worker", "beat"):
        assert_absent(raw, loaded.log(name).encode(), f"the {name} log")
