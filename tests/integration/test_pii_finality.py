"""PII promises, round two, each attacked as the role that would try it: no ciphertext leaves
without a committed audit row, the audit cannot be made to say less, erasure stays erased
whatever arrives later, refusals keep no caller text, and no command prints raw terminal codes.
"""

import contextlib
import json
import time
import uuid
from unittest import mock

import psycopg2
import pytest
from cryptography.fernet import Fernet

from etl import store
from etl.crypto import vault
from etl.crypto.sealing import Sealer
from etl.model import records
from etl.model.records import Message
from etl.sources.sqs import queue as sqs
from tests.integration.conftest import INSIDER_EVENTS
from tests.integration.test_insiders import RAW, etl, run_as
from tests.support import DATABASE_URL, PAYLOAD_KEY, ProcessGroup, officer_env, send_chunk, stash, wait_until

pytestmark = pytest.mark.integration


def ann_token(conn: store.Connection, column: str = "masked_ip") -> str:
    return str(store.query(conn, f"SELECT {column} FROM user_logins WHERE user_id = 'ann'")[0][0])


def counts(conn: store.Connection) -> tuple[int, int]:
    """(audit rows, reveal requests), as the table owner sees them."""
    return (
        int(store.query(conn, "SELECT count(*) FROM pii_audit")[0][0]),
        int(store.query(conn, "SELECT count(*) FROM pii_reveal_requests")[0][0]),
    )


def test_nothing_is_released_inside_the_transaction_that_asked(
    written: ProcessGroup, logins: dict[str, str], conn: store.Connection
) -> None:
    officer, token = logins["pii_officer"], ann_token(conn)
    before = counts(conn)
    with psycopg2.connect(officer) as c, c.cursor() as cur:
        for trick in ("plain", "savepoint"):
            if trick == "savepoint":
                cur.execute("SAVEPOINT s")
            cur.execute("SELECT etl_reveal_request('ip', %s, 'same transaction')", ([token],))
            request = cur.fetchone()[0]
            if trick == "savepoint":
                cur.execute("RELEASE SAVEPOINT s")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("SELECT * FROM etl_reveal_release(%s)", (request,))
            c.rollback()
        # a second session, racing the first before it commits, sees no request to release
        cur.execute("SELECT etl_reveal_request('ip', %s, 'racing')", ([token],))
        request = cur.fetchone()[0]
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            run_as(officer, "SELECT * FROM etl_reveal_release(%s)", (request,))
        c.rollback()
    assert counts(conn) == before  # rolled back: no request, and nothing released either
    committed = run_as(officer, "SELECT etl_reveal_request('ip', %s, 'case 1')", ([token],))[0][0]
    assert [r[0] for r in run_as(officer, "SELECT * FROM etl_reveal_release(%s)", (committed,))] == [token]


def test_the_database_decides_what_was_released_and_the_officer_cannot_unsay_it(
    written: ProcessGroup, logins: dict[str, str], conn: store.Connection
) -> None:
    officer, token, missing = logins["pii_officer"], ann_token(conn), "k1:" + "0" * 64
    request = run_as(officer, "SELECT etl_reveal_request('ip', %s, 'case 2')", ([token, missing],))[0][0]
    assert store.query(conn, "SELECT token, outcome FROM pii_audit WHERE reason = 'case 2' ORDER BY id") == [
        (token, "released"),
        (missing, "not found"),
    ]
    assert [r[0] for r in run_as(officer, "SELECT * FROM etl_reveal_release(%s)", (request,))] == [token]
    for lie in ("not found", "refused: no private key"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            run_as(officer, "SELECT etl_reveal_outcome(%s, %s, %s)", (request, token, lie))
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):  # the database said not found: final
        run_as(officer, "SELECT etl_reveal_outcome(%s, %s, 'failed')", (request, missing))
    run_as(officer, "SELECT etl_reveal_outcome(%s, %s, 'failed')", (request, token))
    outcomes = [r[0] for r in store.query(conn, "SELECT outcome FROM pii_audit WHERE token = %s", (token,))]
    assert outcomes == ["released", "failed"]  # 'failed' adds to 'released', never replaces it


def test_refusals_keep_no_caller_text_and_reasons_are_bounded(
    written: ProcessGroup, logins: dict[str, str], conn: store.Connection
) -> None:
    fishing = "203.0.113.50 ann-phone " * 2000  # ~50 KB holding raw values
    for role in ("analyst", "etl_writer"):
        run_as(logins[role], "SELECT etl_reveal_request('ip', ARRAY['203.0.113.50'], %s)", (fishing,))
    refused = store.query(conn, "SELECT field, token, subject, reason, outcome FROM pii_audit ORDER BY id")
    assert refused[-2:] == [(None, None, "1 tokens", "(not kept: refused caller)", "refused: not a pii_officer")] * 2
    dump = json.dumps(store.query(conn, "SELECT * FROM pii_audit"), default=str)
    assert not [raw for raw in RAW if raw in dump]
    officer = logins["pii_officer"]
    for reason in ("x" * 201, "two\nlines", "\x1b[2J", " ", "case \u202eexe.txt", "a\u200bb", "a\u2028b"):
        with pytest.raises(psycopg2.errors.InvalidParameterValue):
            run_as(officer, "SELECT etl_reveal_request('ip', %s, %s)", ([ann_token(conn)], reason))
        with pytest.raises(psycopg2.errors.InvalidParameterValue):
            run_as(officer, "SELECT * FROM etl_erase('ann', %s)", (reason,))


def test_a_raw_value_typed_as_a_token_never_reaches_the_database(
    written: ProcessGroup, logins: dict[str, str], conn: store.Connection
) -> None:
    officer = officer_env({**written.env, "DATABASE_URL": logins["pii_officer"]})
    before = counts(conn)
    out = etl(officer, "reveal", "--field", "ip", "--token", "203.0.113.50", "--reason", "typo")
    assert out.returncode == 2 and "1 of 1 tokens are not tokens" in out.stderr and "nothing was sent" in out.stderr
    assert "203.0.113.50" not in out.stderr + out.stdout
    long = etl(officer, "reveal", "--field", "ip", "--token", ann_token(conn), "--reason", "r" * 201)
    assert long.returncode == 2 and "at most 200 characters" in long.stderr
    assert counts(conn) == before  # neither was sent: no statement, no audit row
    # without the private key nothing is asked either: there would be nothing to open
    keyless = etl(written.env, "reveal", "--field", "ip", "--token", ann_token(conn), "--reason", "worker")
    assert keyless.returncode == 2 and "ETL_VAULT_PRIVATE_KEY is not set" in keyless.stderr
    assert counts(conn) == before


def message(message_id: str, body: dict[str, str] | str, sent: float) -> Message:
    text = body if isinstance(body, str) else json.dumps(body)
    return Message(message_id, f"rh-{message_id}", text, int(sent * 1000))


def chunk_written(conn: store.Connection, marker: str) -> bool:
    return bool(store.query(conn, "SELECT 1 FROM user_logins WHERE message_id = %s", (marker,)))


def send(messages: list[Message]) -> None:
    send_chunk(messages)


def test_an_erasure_stays_erased_whatever_is_delivered_later(
    written: ProcessGroup, logins: dict[str, str], conn: store.Connection
) -> None:
    officer = officer_env({**written.env, "DATABASE_URL": logins["pii_officer"]})
    hour_ago = time.time() - 3600
    dee = {"user_id": "dee", "device_type": "ios", "ip": "192.0.2.99", "device_id": "dee-phone", "app_version": "1.0"}
    zed = {**dee, "user_id": "zed", "ip": "192.0.2.100", "device_id": "zed-phone"}  # shares nothing with dee
    early = [
        message("dee-1", dee, hour_ago),
        message("dee-2", '{"user_id": "dee", "ip": "192.0.2.99"}', hour_ago),  # rejected, body kept sealed
        message("mark-1", zed, hour_ago),
    ]
    send(early)
    wait_until(lambda: chunk_written(conn, "mark-1"), 60, "the first chunk")
    dee_tokens = store.query(conn, "SELECT masked_ip, masked_device_id FROM user_logins WHERE user_id = 'dee'")[0]
    erased = etl(officer, "erase", "--user-id", "dee", "--reason", "GDPR request 11")
    assert erased.returncode == 0 and "1 rejected bodies deleted" in erased.stdout, erased.stderr

    # SQS redelivers the same messages, and one of dee's that was still in flight arrives
    send([*early[:2], message("dee-3", dee, hour_ago), message("mark-2", zed, hour_ago)])
    wait_until(lambda: chunk_written(conn, "mark-2"), 60, "the redelivered chunk")
    vault_tokens = {t for (t,) in store.query(conn, "SELECT token FROM pii_vault")}
    assert not vault_tokens & set(dee_tokens), "an erased vault entry came back"
    assert store.query(conn, "SELECT count(*) FROM rejected_messages WHERE user_id = 'dee'") == [(0,)]
    assert store.query(
        conn, "SELECT count(*) FROM user_logins WHERE user_id = 'dee' AND masked_ip NOT LIKE 'erased:%'"
    ) == [(0,)]

    # a chunk captured from Redis, replayed after its visibility timeout: dropped unopened
    payload = json.dumps([vars_of(m) for m in (message("dee-4", dee, hour_ago), message("mark-3", zed, hour_ago))])
    old = Fernet(PAYLOAD_KEY.encode()).encrypt_at_time(payload.encode(), int(time.time()) - 3600).decode()
    sealer = Sealer([PAYLOAD_KEY])
    assert records.unpack_chunk(old, sealer)  # a valid capture, only old
    from etl.worker.celery import app

    app.send_task("etl.mask_and_write", args=[old], argsrepr="<sealed chunk>", kwargsrepr="{}")
    wait_until(lambda: "dropped, sealed" in written.log("worker"), 60, "the worker to drop the old chunk")
    # the same as today's publishers seal and keep it (bytes under a key of its own), stored again
    # under a new key by someone who can write to Redis
    with mock.patch("time.time", return_value=time.time() - 3600):
        old_bytes = records.pack_chunk([message("dee-6", dee, hour_ago), message("mark-4", zed, hour_ago)], sealer)
    app.send_task("etl.mask_and_write", args=[stash(old_bytes)], argsrepr="<sealed chunk>", kwargsrepr="{}")
    wait_until(lambda: written.log("worker").count("dropped, sealed") >= 2, 60, "the worker to drop the old bytes")
    assert not any(chunk_written(conn, m) for m in ("mark-3", "dee-4", "mark-4", "dee-6"))

    # dee logs in again after the erasure: new data, stored; a second erasure takes it
    send([message("dee-5", dee, time.time() + 1)])
    wait_until(lambda: chunk_written(conn, "dee-5"), 60, "dee's new login")
    assert store.query(conn, "SELECT masked_ip LIKE 'k%' FROM user_logins WHERE message_id = 'dee-5'") == [(True,)]
    again = etl(officer, "erase", "--user-id", "dee", "--reason", "GDPR request 12")
    assert again.returncode == 0 and "(erased before on" in again.stdout and "2 vault entries erased" in again.stdout


def vars_of(m: Message) -> dict[str, object]:
    return {f: getattr(m, f) for f in ("message_id", "receipt_handle", "body", "sent_timestamp_ms")}


def test_a_mistyped_user_id_is_said_and_still_audited(
    written: ProcessGroup, logins: dict[str, str], conn: store.Connection
) -> None:
    officer = officer_env({**written.env, "DATABASE_URL": logins["pii_officer"]})
    erase = etl(officer, "erase", "--user-id", "no-such-user", "--reason", "ticket 5")
    assert erase.returncode == 1 and "check the id" in erase.stderr
    reveal = etl(officer, "reveal", "--field", "ip", "--user-id", "nobody", "--reason", "ticket 6")
    assert reveal.returncode == 1 and "check the id" in reveal.stderr
    audited = store.query(conn, "SELECT action, subject, reason FROM pii_audit ORDER BY id")
    assert ("erase", "no-such-user", "ticket 5") in audited
    assert [r for r in audited if r[2] == "ticket 6"]


def test_rotating_to_a_public_key_no_private_key_opens_is_refused_before_anything_changes(
    written: ProcessGroup, conn: store.Connection
) -> None:
    stranger_public = vault.new_keypair()[1]
    env = {**officer_env(written.env), "DATABASE_URL": DATABASE_URL, "ETL_VAULT_PUBLIC_KEY": stranger_public}
    before = store.query(conn, "SELECT field, token, ciphertext FROM pii_vault ORDER BY 1, 2")
    keys = store.query(conn, "SELECT count(*) FROM vault_data_keys")
    for command in ("rotate-vault-key", "rotate-masking-key"):
        out = etl(env, command, "--reason", "new key pair")
        assert out.returncode == 2 and "belongs to none of the keys in ETL_VAULT_PRIVATE_KEY" in out.stderr, command
        unaudited = etl(
            {**env, "ETL_VAULT_PUBLIC_KEY": written.env["ETL_VAULT_PUBLIC_KEY"]}, command, "--reason", "\x1b]0;x"
        )
        assert unaudited.returncode == 2 and "a reason is at most 200 characters" in unaudited.stderr, command
    assert store.query(conn, "SELECT field, token, ciphertext FROM pii_vault ORDER BY 1, 2") == before
    assert store.query(conn, "SELECT count(*) FROM vault_data_keys") == keys


def test_stored_fields_reach_a_terminal_escaped(written: ProcessGroup, conn: store.Connection) -> None:
    hostile = "fr\x1b]0;owned\x07\x1b[2J\u202e"
    body = {"user_id": "eve", "device_type": "ios", "ip": "192.0.2.1", "device_id": "eve-1", "app_version": "1.0"}
    send([message(f"eve-{uuid.uuid4().hex[:6]}", {**body, "locale": hostile}, time.time())])
    wait_until(lambda: store.query(conn, "SELECT 1 FROM user_logins WHERE user_id = 'eve'"), 60, "eve's row")
    out = etl({**written.env, "DATABASE_URL": DATABASE_URL}, "report")
    assert out.returncode == 0, out.stderr
    assert not any(c in out.stdout for c in ("\x1b", "\x07", "\u202e"))
    assert "fr\\u001b]0;owned\\u0007" in out.stdout


def test_the_audit_chain_never_forks_and_no_login_can_hold_it(
    written: ProcessGroup, logins: dict[str, str], conn: store.Connection
) -> None:
    analyst, officer = logins["analyst"], officer_env({**written.env, "DATABASE_URL": logins["pii_officer"]})
    probe = "SELECT etl_reveal_request('ip', ARRAY['k1:' || repeat('0', 64)], 'x')"
    with psycopg2.connect(analyst) as a, a.cursor() as stale:
        stale.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        stale.execute("SELECT 1")  # the snapshot is taken here
        run_as(analyst, probe)  # another session appends and commits
        with pytest.raises(psycopg2.errors.SerializationFailure):  # an error, never a forked chain
            stale.execute(probe)
        a.rollback()
        # the lock that once serialized appends was an advisory lock any login could take
        stale.execute("SELECT pg_advisory_lock(hashtext('etl.audit'))")
        erased = etl(officer, "erase", "--user-id", "bob", "--reason", "ticket 8")
        assert erased.returncode == 0, erased.stderr
    assert etl({**written.env, "DATABASE_URL": DATABASE_URL}, "audit", "verify").stdout.startswith("audit chain intact")


def test_a_login_holding_the_audit_head_delays_an_erasure_seconds_not_minutes(
    written: ProcessGroup, logins: dict[str, str], conn: store.Connection
) -> None:
    """An analyst's refused etl_erase, left in an open transaction, keeps the audit head locked:
    the officer's erasure gives up in seconds (lock_timeout on the functions), saying so, instead
    of waiting a minute while every chunk write queues behind it; once the lock goes, it works."""
    officer = officer_env({**written.env, "DATABASE_URL": logins["pii_officer"]})
    with psycopg2.connect(logins["analyst"]) as a, a.cursor() as held:
        with contextlib.suppress(psycopg2.Error):
            held.execute("SELECT * FROM etl_erase('nobody', 'x')")  # refused, audited: the head row stays locked
        started = time.monotonic()
        blocked = etl(officer, "erase", "--user-id", "bob", "--reason", "ticket 10")
        took = time.monotonic() - started
        a.rollback()
    assert blocked.returncode != 0 and "55P03" in blocked.stderr, blocked.stderr
    assert took < 30, took
    erased = etl(officer, "erase", "--user-id", "bob", "--reason", "ticket 10")
    assert erased.returncode == 0, erased.stderr


def test_erasures_and_chunk_writes_run_in_read_committed_whatever_the_login_says(
    written: ProcessGroup, logins: dict[str, str], conn: store.Connection
) -> None:
    name = logins["pii_officer"].split("//")[1].split("@")[0]
    with conn, conn.cursor() as cur:
        cur.execute(f"ALTER ROLE {name} SET default_transaction_isolation = 'repeatable read'")
    with (  # by hand: refused
        psycopg2.connect(logins["pii_officer"]) as c,
        c.cursor() as cur,
        pytest.raises(psycopg2.errors.InvalidTransactionState),
    ):
        cur.execute("SELECT * FROM etl_erase('ann', 'ticket 9')")
    officer = officer_env({**written.env, "DATABASE_URL": logins["pii_officer"]})
    out = etl(officer, "erase", "--user-id", "ann", "--reason", "ticket 9")  # the tool: READ COMMITTED
    assert out.returncode == 0, out.stderr
    with psycopg2.connect(logins["etl_writer"]) as c, c.cursor() as cur:
        cur.execute("SET default_transaction_isolation = 'serializable'")
        c.commit()
        with pytest.raises(psycopg2.errors.InvalidTransactionState):
            cur.execute("SELECT * FROM etl_erasures_for(ARRAY['ann'])")


def test_a_non_officer_erase_is_refused_and_audited(
    written: ProcessGroup, logins: dict[str, str], conn: store.Connection
) -> None:
    for role in ("analyst", "etl_writer"):
        out = etl(
            {**officer_env(written.env), "DATABASE_URL": logins[role]}, "erase", "--user-id", "ann", "--reason", "x"
        )
        assert out.returncode == 1 and "not a pii_officer" in out.stderr, role
    rows = store.query(conn, "SELECT action, subject, reason, outcome FROM pii_audit ORDER BY id DESC LIMIT 2")
    assert rows == [("erase", None, "(not kept: refused caller)", "refused: not a pii_officer")] * 2


def test_a_rotation_racing_an_erasure_brings_nothing_back(
    written: ProcessGroup, logins: dict[str, str], conn: store.Connection
) -> None:
    from etl.crypto.masking import Masker
    from etl.store import pii as tables
    from tests.support import MASKING_KEY

    batch = tables.old_tokens(conn, 2, 100)  # the rotation reads its batch (every k1 entry) ...
    officer = officer_env({**written.env, "DATABASE_URL": logins["pii_officer"]})
    assert etl(officer, "erase", "--user-id", "ann", "--reason", "ticket 10").returncode == 0  # ... ann goes ...
    k2 = Masker(MASKING_KEY + "-2", 2)
    changes = [(f, t, k2.token(f, "x"), "s0000000000000000:AAAA") for f, t, _ in batch]
    tables.retokenize(conn, changes)  # ... and the batch is written: ann's entries stay gone
    assert len(store.query(conn, "SELECT 1 FROM pii_vault")) == 2  # bob's ip and device, moved


def test_a_replay_racing_an_erasure_sends_no_body_the_erasure_misses(
    written: ProcessGroup, logins: dict[str, str], conn: store.Connection, queue: sqs.Queue
) -> None:
    import threading

    send([message("ann-bad", {**INSIDER_EVENTS[0], "app_version": "v2"}, time.time())])  # a rejection of ann's
    wait_until(lambda: store.query(conn, "SELECT 1 FROM rejected_messages WHERE user_id = 'ann'"), 60, "it")
    officer = officer_env({**written.env, "DATABASE_URL": logins["pii_officer"]})
    erase: list[int] = []

    def send_while_an_erasure_starts(bodies: list[str]) -> list[str]:
        runner = threading.Thread(
            target=lambda: erase.append(etl(officer, "erase", "--user-id", "ann", "--reason", "t11").returncode)
        )
        runner.start()
        runner.join(3)
        assert runner.is_alive(), "the erasure did not wait for the replay"
        ids = queue.send(bodies)
        threading.Thread(target=runner.join).start()
        return ids

    from etl.crypto.sealing import Sealer as _Sealer

    sealer = _Sealer([PAYLOAD_KEY])
    with store.connection(DATABASE_URL) as admin:
        assert (
            store.replay_batch(
                admin, None, 10, lambda sealed: send_while_an_erasure_starts([sealer.open(b).decode() for b in sealed])
            )
            == 1
        )
    wait_until(lambda: erase == [0], 60, "the erasure after the replay")
    wait_until(lambda: not queue.depth()["visible"] and not queue.depth()["in_flight"], 60, "the replay to be read")
    assert store.query(conn, "SELECT count(*) FROM rejected_messages WHERE user_id = 'ann'") == [(0,)]
