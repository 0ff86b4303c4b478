"""The KPL aggregated record decoder (etl.model.kpl) against records made by aws-kinesis-agg
(the aggregation library AWS maintains for Python), and what a corrupt one becomes."""

import hashlib
import json

import pytest
from aws_kinesis_agg.aggregator import AggRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.crypto.masking import Masker
from etl.crypto.sealing import Sealer, new_key
from etl.model import events, kpl, records
from etl.model.records import Message


def aggregate(users: list[tuple[str, bytes, str | None]]) -> bytes:
    agg = AggRecord()
    for key, data, hash_key in users:
        assert agg.add_user_record(key, data, hash_key)
    return bytes(agg.get_contents()[2])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=20),
            st.binary(max_size=300),
            st.none() | st.integers(0, 2**128 - 1).map(str),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_decodes_what_aws_kinesis_agg_makes(users: list[tuple[str, bytes, str | None]]) -> None:
    data = aggregate(users)
    assert kpl.is_aggregated(data)
    assert [(u.partition_key, u.data, u.explicit_hash_key) for u in kpl.decode(data)] == users
    assert kpl.fault(data) == ""


def test_a_record_without_the_magic_bytes_is_plain() -> None:
    assert not kpl.is_aggregated(b'{"user_id": "u"}')
    assert not kpl.is_aggregated(b"")


def _framed(body: bytes) -> bytes:
    return kpl.MAGIC + body + hashlib.md5(body, usedforsecurity=False).digest()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (kpl.MAGIC + b"\x00" * 10, "shorter than its magic bytes and digest"),
        (aggregate([("k", b"x", None)])[:-1] + b"\x00", "MD5 digest does not match"),
        (_framed(b"\x0a\x05ab"), "protobuf: AggregatedRecord: truncated"),
        (_framed(b"\x0a\x01k\x1a\x01\x08"), "protobuf: record 0: bad varint"),
        (_framed(b"\x0a\x01k\x1a\x02\x08\x00"), "record 0: a required field is missing"),
        (_framed(b"\x0a\x01k\x1a\x04\x08\x03\x1a\x00"), "record 0: partition key index out of range"),
        (_framed(b"\x0a\x01k"), "no user records"),
        (_framed(b"\xff"), "protobuf: AggregatedRecord: bad varint"),
        (_framed(b"\x0b"), "protobuf: AggregatedRecord: wire type 3"),
        (_framed(b"\x0a\x01\xff\x1a\x04\x08\x00\x1a\x00"), "partition key: not UTF-8"),
        (_framed(b"\x0a\x01k" + b"\x1a\x04\x08\x00\x1a\x00" * 10_001), "more than 10000 user records"),  # a bomb
    ],
)
def test_a_corrupt_aggregate_says_why_and_names_no_data(data: bytes, why: str) -> None:
    with pytest.raises(kpl.Corrupt) as caught:
        kpl.decode(data)
    assert str(caught.value) == why
    assert kpl.fault(data) == why


def test_a_corrupt_aggregate_is_one_rejection_with_its_own_reason() -> None:
    """The reader passes an aggregate that does not decode on whole: one message, one rejection."""
    inner = json.dumps({"user_id": "u-1", "device_type": "ios", "ip": "10.0.0.1", "device_id": "d", "app_version": "1"})
    data = aggregate([("k", inner.encode(), None)] * 3)
    bad = data[:-1] + bytes([data[-1] ^ 1])
    message = Message("s/shardId-0/7", "7", bad.decode("utf-8", "surrogateescape"), 1_700_000_000_000)
    sealer = Sealer([new_key()])
    result = records.transform([message], Masker("k" * 32), sealer)
    assert result.rows == []
    [rejected] = result.rejected
    assert (rejected.reason, rejected.detail) == (events.BAD_AGGREGATE, "MD5 digest does not match")
    kept = sealer.open(rejected.sealed_body).decode("utf-8", "surrogatepass")
    assert kept.encode("utf-8", "surrogateescape") == bad  # kept byte for byte, sealed
