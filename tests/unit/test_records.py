import json
from datetime import date

from etl.crypto.masking import Masker
from etl.crypto.sealing import Sealer, new_key
from etl.model import records
from etl.model.records import Message
from tests.conftest import MASKING_KEY

EVENT = {
    "user_id": "u-1",
    "app_version": "2.3.0",
    "device_type": "ios",
    "ip": "198.51.100.23",
    "locale": None,
    "device_id": "593-47-5928",
}
# 2026-03-01 23:59:59.999 UTC, and one millisecond later
LAST_MS_OF_DAY = 1772409599999


def message(body: str, ms: int = LAST_MS_OF_DAY, mid: str = "m-1") -> Message:
    return Message(message_id=mid, receipt_handle="rh", body=body, sent_timestamp_ms=ms)


def test_a_valid_message_becomes_a_row_with_tokens() -> None:
    masker, sealer = Masker(MASKING_KEY), Sealer([new_key()])
    result = records.transform([message(json.dumps(EVENT))], masker, sealer)
    assert result.rejected == []
    (row,) = result.rows
    assert row.masked_ip == masker.mask_ip(EVENT["ip"])  # type: ignore[arg-type]
    assert row.masked_device_id == masker.mask_device_id(EVENT["device_id"])  # type: ignore[arg-type]
    assert row.app_version == 2_003_000
    assert row.locale is None
    assert EVENT["ip"] not in repr(row) and EVENT["device_id"] not in repr(row)


def test_create_date_is_the_utc_day_it_was_sent() -> None:
    masker, sealer = Masker(MASKING_KEY), Sealer([new_key()])
    rows = records.transform(
        [message(json.dumps(EVENT), LAST_MS_OF_DAY, "a"), message(json.dumps(EVENT), LAST_MS_OF_DAY + 1, "b")],
        masker,
        sealer,
    ).rows
    assert [r.create_date for r in rows] == [date(2026, 3, 1), date(2026, 3, 2)]


def test_rejected_body_is_sealed_and_recoverable() -> None:
    sealer = Sealer([new_key()])
    body = json.dumps({**EVENT, "app_version": "not-a-version"})
    (rejected,) = records.transform([message(body)], Masker(MASKING_KEY), sealer).rejected
    assert rejected.reason == "bad_app_version"
    assert EVENT["ip"] not in rejected.sealed_body
    assert sealer.open(rejected.sealed_body).decode() == body


def test_every_message_ends_as_exactly_one_outcome() -> None:
    bodies = [json.dumps(EVENT), "nope", "[]", json.dumps({**EVENT, "ip": 4})]
    msgs = [message(b, mid=str(i)) for i, b in enumerate(bodies)]
    result = records.transform(msgs, Masker(MASKING_KEY), Sealer([new_key()]))
    assert sorted([r.message_id for r in result.rows] + [r.message_id for r in result.rejected]) == ["0", "1", "2", "3"]


def test_chunk_payload_round_trips_and_hides_pii() -> None:
    sealer = Sealer([new_key()])
    msgs = [message(json.dumps(EVENT), mid="x"), message("\ud800 lone surrogate", mid="y")]
    packed = records.pack_chunk(msgs, sealer)
    assert EVENT["ip"].encode() not in packed and EVENT["device_id"].encode() not in packed
    assert b"\x03" + bytes(4) not in packed  # the plaintext's framing is not visible either
    assert records.unpack_chunk(packed, sealer) == msgs


def test_payload_keys_rotate() -> None:
    old, new = new_key(), new_key()
    packed = records.pack_chunk([message("b")], Sealer([old]))
    assert records.unpack_chunk(packed, Sealer([new, old]))[0].body == "b"


def test_a_rejection_keeps_its_valid_user_id_for_erasure() -> None:
    masker, sealer = Masker(MASKING_KEY), Sealer([new_key()])
    named = {k: v for k, v in EVENT.items() if k != "device_type"}  # missing field, user_id still valid
    bodies = [json.dumps(named), "[" * 5000, json.dumps({**named, "user_id": 7}), '{"user_id": "u-1", "user_id": "x"}']
    result = records.transform([message(b, mid=f"m-{i}") for i, b in enumerate(bodies)], masker, sealer)
    users = [r.user_id for r in sorted(result.rejected, key=lambda r: r.message_id)]
    assert users == ["u-1", None, None, "u-1"]  # a body naming two users is tied to the first
    assert all("u-1" not in r.detail for r in result.rejected)


def test_a_body_that_is_json_but_no_event_is_still_tied_to_its_user() -> None:
    """A duplicate key elsewhere, or a byte-order mark: the sealed body holds the user's values,
    so erasure must find it (and a nested user_id is not the body's)."""
    masker, sealer = Masker(MASKING_KEY), Sealer([new_key()])
    bodies = [
        json.dumps(EVENT)[:-1] + ', "locale": "fr"}',  # locale twice
        "\ufeff" + json.dumps(EVENT),
        '{"user_id": 5, "x": {"user_id": "u-2"}, "x": 1}',
    ]
    result = records.transform([message(b, mid=f"m-{i}") for i, b in enumerate(bodies)], masker, sealer)
    rejected = sorted(result.rejected, key=lambda r: r.message_id)
    assert [(r.reason, r.user_id) for r in rejected] == [
        ("duplicate_key", "u-1"),
        ("invalid_json", "u-1"),
        ("duplicate_key", None),
    ]


def test_an_erased_users_earlier_messages_keep_no_token_vault_entry_or_body() -> None:
    from datetime import UTC, datetime

    from etl.crypto import vault as vaults

    masker, sealer = Masker(MASKING_KEY), Sealer([new_key()])
    writer, _ = vaults.new_writer(vaults.parse_public_key(vaults.new_keypair()[1]))
    erased_at = datetime.fromtimestamp(LAST_MS_OF_DAY / 1000, tz=UTC)
    bob = {**EVENT, "user_id": "bob", "device_id": "bob-phone"}  # shares u-1's ip
    chunk = records.transform(
        [
            message(json.dumps(EVENT), mid="before"),
            message(json.dumps(bob), mid="bob"),
            message('{"user_id": "u-1"}', mid="rejected"),
            message(json.dumps(EVENT), ms=LAST_MS_OF_DAY + 1, mid="after"),
        ],
        masker,
        sealer,
        writer,
    )
    kept = records.forget_erased(chunk, {"u-1": erased_at})
    rows = {r.message_id: r for r in kept.rows}
    assert rows["before"].masked_ip.startswith("erased:") and rows["before"].masked_device_id.startswith("erased:")
    assert rows["after"] == next(r for r in chunk.rows if r.message_id == "after")  # new data: as it came
    assert rows["bob"] == next(r for r in chunk.rows if r.message_id == "bob")
    assert [r.message_id for r in kept.rejected] == []  # u-1's body is not kept
    # the shared ip and the later message's device keep their entries; nothing else of u-1's does
    assert {(v.field, v.token) for v in kept.vault} == {
        ("ip", rows["bob"].masked_ip),
        ("device_id", rows["bob"].masked_device_id),
        ("device_id", rows["after"].masked_device_id),
    }
    assert records.forget_erased(chunk, {}) is chunk


def test_a_chunk_sealed_longer_ago_than_allowed_is_expired() -> None:
    import time
    from unittest import mock

    import pytest
    from cryptography.fernet import Fernet

    from etl.errors import Expired, TerminalError

    key = new_key()
    sealer = Sealer([key])
    fresh = records.pack_chunk([message("b")], sealer)
    assert records.unpack_chunk(fresh, sealer, max_age=120)[0].body == "b"
    payload = json.dumps([{"message_id": "m", "receipt_handle": "r", "body": "b", "sent_timestamp_ms": 1}])
    old = Fernet(key.encode()).encrypt_at_time(payload.encode(), int(time.time()) - 121).decode()
    with pytest.raises(Expired):
        records.unpack_chunk(old, sealer, max_age=120)
    assert records.unpack_chunk(old, sealer)[0].body == "b"  # without a limit (tools, tests): as before
    future = Fernet(key.encode()).encrypt_at_time(payload.encode(), int(time.time()) + 3600).decode()
    with pytest.raises(Expired):  # stamped ahead of any clock skew: it would never expire
        records.unpack_chunk(future, sealer, max_age=120)
    with pytest.raises(TerminalError):
        records.unpack_chunk(old[:-4] + "AAAA", sealer, max_age=10**9)  # tampered: refused, not dated
    # today's chunks (AES-GCM bytes) carry their seal time in the authenticated head
    with mock.patch("time.time", return_value=time.time() - 121):
        old_bytes = records.pack_chunk([message("b")], sealer)
    with pytest.raises(Expired):
        records.unpack_chunk(old_bytes, sealer, max_age=120)
    assert records.unpack_chunk(old_bytes, sealer)[0].body == "b"
    with mock.patch("time.time", return_value=time.time() + 3600):
        future_bytes = records.pack_chunk([message("b")], sealer)
    with pytest.raises(Expired):
        records.unpack_chunk(future_bytes, sealer, max_age=120)
    redated = old_bytes[:1] + int(time.time()).to_bytes(8, "big") + old_bytes[9:]
    with pytest.raises(TerminalError):  # a younger seal time written over the old one: refused
        records.unpack_chunk(redated, sealer, max_age=120)


def test_a_withheld_message_is_rejected_with_its_own_reason_and_no_body() -> None:
    from etl.model import chunking

    sealer = Sealer([new_key()])
    stub = chunking.withhold(message(json.dumps(EVENT), mid="big"), chunking.TOO_LARGE, "is too large")
    packed = records.pack_chunk([stub, message(json.dumps(EVENT), mid="ok")], sealer)
    opened = records.unpack_chunk(packed, sealer)
    assert opened[0] == stub
    result = records.transform(opened, Masker(MASKING_KEY), sealer)
    (rejected,) = result.rejected
    assert [r.message_id for r in result.rows] == ["ok"]
    assert (rejected.message_id, rejected.reason, rejected.sealed_body) == ("big", "too_large", "")
    assert rejected.body_chars == len(json.dumps(EVENT)) and rejected.user_id is None
    assert EVENT["ip"] not in rejected.detail and "sha256" in rejected.detail


def test_a_chunk_sealed_before_the_upgrade_still_opens() -> None:
    sealer = Sealer([new_key()])
    fields = ("message_id", "receipt_handle", "body", "sent_timestamp_ms", "receive_count", "received_at")
    msgs = [message(json.dumps(EVENT), mid="x"), message("\ud800 é \U0001f600", mid="y")]
    version1 = json.dumps([{f: getattr(m, f) for f in fields} for m in msgs]).encode("utf-8", "surrogatepass")
    assert records.unpack_chunk(sealer.seal(version1), sealer) == msgs


def test_a_chunk_whose_lengths_do_not_add_up_is_refused() -> None:
    import pytest

    from etl.errors import TerminalError

    sealer = Sealer([new_key()])
    data = sealer.open_bytes(records.pack_chunk([message("abc")], sealer))
    for broken in (data[:-1], data + b"x", b"\x02" + data[1:], data[:5] + b"\x00" + data[6:]):
        with pytest.raises(TerminalError):
            records.unpack_chunk(sealer.seal_bytes(broken), sealer)
    version2 = b"\x02" + len(b"[]").to_bytes(4, "big") + b"[]"
    for broken in (version2 + b"x", b"\x03" + version2[1:]):  # version 2 travels as Fernet text only
        with pytest.raises(TerminalError):
            records.unpack_chunk(sealer.seal(broken), sealer)
    assert records.unpack_chunk(sealer.seal(version2), sealer) == []
