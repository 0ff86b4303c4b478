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
    assert EVENT["ip"] not in packed and EVENT["device_id"] not in packed
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
    assert users == ["u-1", None, None, None]
    assert all("u-1" not in r.detail for r in result.rejected)
