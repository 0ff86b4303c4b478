"""The PII vault as its users meet it: sealed by workers, revealed (audited) by officers, erased."""

import json
import subprocess
import sys

import psycopg2
import pytest

from etl import store
from etl.sources.sqs import queue as sqs
from tests.support import DATABASE_URL, ProcessGroup, drained, officer_env, pg_dump, wait_until

pytestmark = pytest.mark.integration


def ev(user: str, ip: str, device: str) -> str:
    return json.dumps({"user_id": user, "device_type": "ios", "ip": ip, "device_id": device, "app_version": "1.0"})


def etl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etl.ops.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def reveal(env: dict[str, str], field: str, token: str, reason: str = "check") -> subprocess.CompletedProcess[str]:
    return etl(env, "reveal", "--field", field, "--token", token, "--reason", reason)


def values(out: subprocess.CompletedProcess[str]) -> list[str | None]:
    """The values of a reveal's JSON lines, in order."""
    return [json.loads(line)["value"] for line in out.stdout.splitlines()]


def token_of(conn: store.Connection, column: str, user: str) -> str:
    return str(store.query(conn, f"SELECT {column} FROM user_logins WHERE user_id = %s", (user,))[0][0])


def audit_rows(conn: store.Connection) -> list[tuple[str, str, str, str]]:
    return [tuple(r) for r in store.query(conn, "SELECT actor, action, reason, outcome FROM pii_audit ORDER BY id")]  # type: ignore[misc]


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


def test_vault_holds_one_sealed_entry_per_distinct_token(loaded: ProcessGroup, conn: store.Connection) -> None:
    counts = dict(store.query(conn, "SELECT field, count(*) FROM pii_vault GROUP BY field"))
    assert counts == {"ip": 2, "device_id": 3}
    # every entry is under a data key the worker sealed to the public key
    assert store.query(
        conn,
        "SELECT count(*) FROM pii_vault"
        " WHERE split_part(ciphertext, ':', 1) NOT IN (SELECT key_id FROM vault_data_keys)",
    ) == [(0,)]
    dump = pg_dump("--data-only")
    for raw in (b"203.0.113.50", b"ann-phone", b"2001:db8::1"):
        assert raw not in dump


def test_reveal_by_token_file_and_user_round_trips_and_audits_each_outcome(
    loaded: ProcessGroup, conn: store.Connection, tmp_path
) -> None:
    officer = officer_env(loaded.env)
    out = reveal(officer, "ip", token_of(conn, "masked_ip", "cy"), "case 42")
    assert out.returncode == 0, out.stderr
    assert values(out) == ["2001:db8::1"]  # canonical form
    tokens = tmp_path / "tokens"
    tokens.write_text(token_of(conn, "masked_device_id", "ann") + "\nk1:" + "0" * 64 + "\n")
    batch = etl(officer, "reveal", "--field", "device_id", "--tokens-file", str(tokens), "--reason", "audit")
    assert [json.loads(line)["outcome"] for line in batch.stdout.splitlines()] == ["revealed", "not found"]
    by_user = etl(officer, "reveal", "--field", "device_id", "--user-id", "bob", "--reason", "case 43")
    assert values(by_user) == ["bob-phone"]
    outcomes = [(r[2], r[3]) for r in audit_rows(conn)]
    assert outcomes == [  # the database decides released / not found when the request commits
        ("case 42", "released"),
        ("case 42", "revealed"),
        ("audit", "released"),
        ("audit", "not found"),
        ("audit", "revealed"),
        ("case 43", "released"),
        ("case 43", "revealed"),
    ]


def test_reveal_output_escapes_control_characters(
    pipeline: ProcessGroup, queue: sqs.Queue, conn: store.Connection
) -> None:
    spoof = "dev\r\x1b[2Kk1:fake\tREVEALED"
    queue.send([ev("eve", "192.0.2.7", spoof)])
    pipeline.start("worker", "beat")
    wait_until(drained(queue, conn, 1), 60, "the event")
    out = reveal(officer_env(pipeline.env), "device_id", token_of(conn, "masked_device_id", "eve"))
    assert "\r" not in out.stdout and "\x1b" not in out.stdout and "\t" not in out.stdout
    assert values(out) == [spoof]


def test_a_worker_host_decrypts_nothing(loaded: ProcessGroup, conn: store.Connection) -> None:
    """The worker's whole environment (public key, masking and payload keys, its DB login) opens no entry."""
    audited = audit_rows(conn)
    out = reveal(loaded.env, "ip", token_of(conn, "masked_ip", "cy"), "I am a worker")
    assert out.returncode == 2 and "2001:db8::1" not in out.stdout + out.stderr
    assert "ETL_VAULT_PRIVATE_KEY is not set" in out.stderr
    assert audit_rows(conn) == audited  # nothing to open with: nothing was asked of the database
    # nor can it start holding the private key
    wrong = subprocess.run(
        [
            sys.executable,
            "-c",
            "from etl import settings; from etl.worker import runtime; runtime.build(settings.load())",
        ],
        env=officer_env(loaded.env),
        capture_output=True,
        text=True,
    )
    assert wrong.returncode != 0 and "workers seal with ETL_VAULT_PUBLIC_KEY only" in wrong.stderr


def test_erasure_is_complete_atomic_and_harmless_to_repeat(
    loaded: ProcessGroup, queue: sqs.Queue, conn: store.Connection
) -> None:
    queue.send(['{"user_id": "ann", "ip": "203.0.113.50", "device_id": "ann-tablet"}'])  # rejected: fields missing
    wait_until(drained(queue, conn, 4), 60, "the rejected message")
    officer = officer_env(loaded.env)
    ann_device, shared_ip = token_of(conn, "masked_device_id", "ann"), token_of(conn, "masked_ip", "ann")
    out = etl(officer, "erase", "--user-id", "ann", "--reason", "GDPR art. 17 request 7")
    assert out.returncode == 0, out.stderr
    assert (
        "1 vault entries erased" in out.stdout and "1 kept" in out.stdout and "1 rejected bodies deleted" in out.stdout
    )
    assert store.query(conn, "SELECT count(*) FROM rejected_messages") == [(0,)]
    assert store.query(
        conn,
        "SELECT masked_ip LIKE 'erased:%', masked_device_id LIKE 'erased:%' FROM user_logins WHERE user_id = 'ann'",
    ) == [(True, True)]
    assert values(reveal(officer, "device_id", ann_device)) == [None]
    assert values(reveal(officer, "ip", shared_ip)) == ["203.0.113.50"]  # bob still owns it
    assert values(reveal(officer, "device_id", token_of(conn, "masked_device_id", "bob"))) == ["bob-phone"]
    again = etl(officer, "erase", "--user-id", "ann", "--reason", "repeat")
    assert again.returncode == 0 and "0 vault entries erased" in again.stdout
    erase_rows = [r for r in audit_rows(conn) if r[1] == "erase"]
    assert [r[3].split(",")[0] for r in erase_rows] == ["erased 1 vault entries", "erased 0 vault entries"]


def test_audit_chain_detects_an_edited_row(loaded: ProcessGroup, conn: store.Connection) -> None:
    officer = officer_env(loaded.env)
    for reason in ("one", "two", "three"):
        reveal(officer, "ip", token_of(conn, "masked_ip", "cy"), reason)
    assert etl(loaded.env, "audit", "verify").stdout.startswith("audit chain intact: 6 rows")
    with conn, conn.cursor() as cur, pytest.raises(psycopg2.errors.RaiseException):
        cur.execute("UPDATE pii_audit SET reason = 'nothing to see' WHERE reason = 'two'")
    with conn, conn.cursor() as cur:  # an owner can bypass the trigger, but not the chain
        cur.execute("ALTER TABLE pii_audit DISABLE TRIGGER pii_audit_append_only")
        cur.execute("UPDATE pii_audit SET reason = 'nothing to see' WHERE reason = 'two'")
        cur.execute("ALTER TABLE pii_audit ENABLE TRIGGER pii_audit_append_only")
    broken = etl(loaded.env, "audit", "verify")
    assert broken.returncode == 1 and "row 3 does not chain" in broken.stdout


def groups(conn: store.Connection, column: str) -> set[frozenset[str]]:
    """The partition of users that GROUP BY <column> produces."""
    rows = store.query(conn, f"SELECT array_agg(user_id ORDER BY user_id) FROM user_logins GROUP BY {column}")
    return {frozenset(r[0]) for r in rows}


@pytest.mark.long(22)
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

    officer = officer_env(pipeline.env)
    out = etl(officer, "rotate-masking-key", "--reason", "yearly")
    assert out.returncode == 0, out.stderr
    expected = {frozenset({"old-1", "new-1"}), frozenset({"old-2"}), frozenset({"new-2"})}
    assert groups(conn, "masked_device_id") == expected
    assert groups(conn, "masked_ip") == expected
    assert store.query(conn, "SELECT count(*) FROM user_logins WHERE masked_ip NOT LIKE 'k2:%'") == [(0,)]
    again = etl(officer, "rotate-masking-key")  # resumable / idempotent: nothing left to do
    assert "re-tokenized 0 tokens" in again.stdout
    assert values(reveal(officer, "device_id", token_of(conn, "masked_device_id", "old-1"), "after")) == ["dev-A"]


@pytest.mark.long(23)
def test_new_key_pair_reseals_everything(loaded: ProcessGroup, conn: store.Connection) -> None:
    from etl.crypto import vault

    new_private, new_public = vault.new_keypair()
    old_private = officer_env(loaded.env)["ETL_VAULT_PRIVATE_KEY"]
    rotated = {
        **loaded.env,
        "ETL_VAULT_PUBLIC_KEY": new_public,
        "ETL_VAULT_PRIVATE_KEY": f"{new_private},{old_private}",
    }
    out = etl(rotated, "rotate-vault-key", "--reason", "yearly")
    assert out.returncode == 0, out.stderr
    assert "re-sealed 5 vault entries" in out.stdout
    assert "re-sealed 0 vault entries" in etl(rotated, "rotate-vault-key").stdout  # resumable
    only_new = {**rotated, "ETL_VAULT_PRIVATE_KEY": new_private}
    assert values(reveal(only_new, "ip", token_of(conn, "masked_ip", "cy"))) == ["2001:db8::1"]
    old_only = reveal(officer_env(loaded.env), "ip", token_of(conn, "masked_ip", "cy"))
    assert [json.loads(line)["outcome"] for line in old_only.stdout.splitlines()] == ["failed"]


def test_legacy_vault_entries_migrate_to_sealed_keys(conn: store.Connection) -> None:
    """A vault written before sealing (data key wrapped by ETL_VAULT_KEY) is re-sealed, audited."""
    from etl.crypto import vault
    from tests.support import VAULT_PRIVATE_KEY, VAULT_PUBLIC_KEY

    master = vault.new_master_key()
    token = "k1:" + "a" * 64
    data_key = vault.new_data_key()
    legacy = vault.Vault("v1", data_key)
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO vault_keys (version, wrapped_key) VALUES (1, %s)",
            (vault.wrap(vault.parse_master_key(master), data_key),),
        )
        cur.execute(
            "INSERT INTO pii_vault (field, token, ciphertext) VALUES ('ip', 'k1:' || repeat('a', 64), %s)",
            (legacy.encrypt("ip", token, "198.51.100.9"),),
        )
    env = {
        **__import__("os").environ,
        "DATABASE_URL": DATABASE_URL,
        "ETL_VAULT_KEY": master,
        "ETL_VAULT_PUBLIC_KEY": VAULT_PUBLIC_KEY,
        "ETL_VAULT_PRIVATE_KEY": VAULT_PRIVATE_KEY,
    }
    out = etl(env, "rotate-vault-key", "--reason", "migrate to sealed keys")
    assert out.returncode == 0, out.stderr
    assert "re-sealed 1 vault entries" in out.stdout
    assert store.query(conn, "SELECT ciphertext LIKE 's%' FROM pii_vault") == [(True,)]
    without_legacy = {k: v for k, v in env.items() if k != "ETL_VAULT_KEY"}
    assert values(reveal(without_legacy, "ip", token)) == ["198.51.100.9"]
    assert audit_rows(conn)[0][1] == "rotate-vault-key"


@pytest.mark.long(25)
def test_no_raw_value_anywhere_after_every_pii_command(loaded: ProcessGroup, conn: store.Connection) -> None:
    import redis as redis_lib

    from tests.integration.test_pipeline import assert_absent, dump_redis
    from tests.support import BROKER_URL

    officer = officer_env(loaded.env)
    for args in (
        ["reveal", "--field", "ip", "--user-id", "cy", "--reason", "sweep"],
        ["erase", "--user-id", "ann", "--reason", "request"],
        ["rotate-vault-key"],
        ["audit", "verify"],
        ["report"],
        ["stats"],
    ):
        assert etl(officer, *args).returncode == 0, args
    raw = ["203.0.113.50", "ann-phone", "bob-phone", "cy-phone", "2001:db8::1", "2001:DB8::1"]
    dump = pg_dump()
    assert_absent(raw, dump, "pg_dump after the PII commands")
    assert_absent(raw, dump_redis(redis_lib.Redis.from_url(BROKER_URL)), "Redis")
    for name in ("worker", "beat"):
        assert_absent(raw, loaded.log(name).encode(), f"the {name} log")
