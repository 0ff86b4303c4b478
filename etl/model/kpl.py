"""The KPL aggregated record format, decoded (pure: no I/O).

Producers built on the Kinesis Producer Library (and the aggregation libraries that copy its
format, e.g. aws-kinesis-agg) pack many user records into one Kinesis record:

    f3 89 9a c2 | protobuf AggregatedRecord | MD5 of the protobuf (16 bytes)

    message AggregatedRecord { repeated string partition_key_table = 1;
                               repeated string explicit_hash_key_table = 2;
                               repeated Record records = 3; }
    message Record { required uint64 partition_key_index = 1; optional uint64 explicit_hash_key_index = 2;
                     required bytes data = 3; repeated Tag tags = 4; }

``decode`` returns the user records in order (their index is the KCL's sub-sequence number).
Unlike the KCL, which passes a record with the magic bytes but a bad digest on as if it were
plain, a record that starts with the magic bytes and does not decode raises ``Corrupt``: the
pipeline rejects it once, with its own reason, instead of as "not UTF-8".

A small decoder of its own rather than a library: the maintained Python implementation
(aws-kinesis-agg) needs the protobuf runtime and decodes Lambda/boto3 event dicts; this reads
the two messages above and nothing else (the tests check it against records aws-kinesis-agg made).
"""

import hashlib
from dataclasses import dataclass

MAGIC = b"\xf3\x89\x9a\xc2"
DIGEST_BYTES = 16
# The magic bytes as they appear in a body decoded from bytes with "surrogateescape" (they are not UTF-8).
MAGIC_TEXT = MAGIC.decode("utf-8", "surrogateescape")
# The most user records one aggregated record may carry. The KPL packs at most 50 KiB by default
# (AggregationMaxSize) and a login event is over 100 bytes: a real aggregate holds hundreds. A
# 1 MiB record of empty user records would hold ~170,000, each a rejection row: over this cap the
# whole record is one ``bad_aggregate`` rejection instead.
MAX_USER_RECORDS = 10_000


class Corrupt(ValueError):
    """An aggregated record that does not decode. The message names what is wrong, never data."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    partition_key: str
    data: bytes
    explicit_hash_key: str | None = None


def is_aggregated(data: bytes) -> bool:
    """Does ``data`` start with the aggregation magic bytes? (Then it decodes or it is corrupt.)"""
    return data[:4] == MAGIC


def decode(data: bytes) -> list[UserRecord]:
    """The user records of an aggregated record, in order; raises Corrupt."""
    if not is_aggregated(data):
        raise Corrupt("no magic bytes")
    if len(data) < len(MAGIC) + DIGEST_BYTES:
        raise Corrupt("shorter than its magic bytes and digest")
    body, digest = data[len(MAGIC) : -DIGEST_BYTES], data[-DIGEST_BYTES:]
    if hashlib.md5(body, usedforsecurity=False).digest() != digest:
        raise Corrupt("MD5 digest does not match")
    keys: list[str] = []
    hash_keys: list[str] = []
    raw: list[tuple[int, int | None, bytes]] = []
    for field, value in _fields(body, "AggregatedRecord"):
        if field == 1:
            keys.append(_text(value, "partition key"))
        elif field == 2:
            hash_keys.append(_text(value, "explicit hash key"))
        elif field == 3:
            if len(raw) == MAX_USER_RECORDS:
                raise Corrupt(f"more than {MAX_USER_RECORDS} user records")
            raw.append(_record(_bytes(value, "record"), len(raw)))
    if not raw:
        raise Corrupt("no user records")
    out = []
    for i, (key_index, hash_index, payload) in enumerate(raw):
        if key_index >= len(keys):
            raise Corrupt(f"record {i}: partition key index out of range")
        if hash_index is not None and hash_index >= len(hash_keys):
            raise Corrupt(f"record {i}: explicit hash key index out of range")
        out.append(UserRecord(keys[key_index], payload, None if hash_index is None else hash_keys[hash_index]))
    return out


def fault(data: bytes) -> str:
    """Why an aggregated record does not decode ("" if it does)."""
    try:
        decode(data)
    except Corrupt as exc:
        return str(exc)
    return ""


def _record(buf: bytes, index: int) -> tuple[int, int | None, bytes]:
    key_index: int | None = None
    hash_index: int | None = None
    data: bytes | None = None
    for field, value in _fields(buf, f"record {index}"):
        if field == 1:
            key_index = _int(value, f"record {index}: partition key index")
        elif field == 2:
            hash_index = _int(value, f"record {index}: explicit hash key index")
        elif field == 3:
            data = _bytes(value, f"record {index}: data")
    if key_index is None or data is None:
        raise Corrupt(f"record {index}: a required field is missing")
    return key_index, hash_index, data


def _int(value: int | bytes, what: str) -> int:
    if not isinstance(value, int):
        raise Corrupt(f"{what}: wrong wire type")
    return value


def _bytes(value: int | bytes, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise Corrupt(f"{what}: wrong wire type")
    return value


def _text(value: int | bytes, what: str) -> str:
    try:
        return _bytes(value, what).decode("utf-8")
    except UnicodeDecodeError:
        raise Corrupt(f"{what}: not UTF-8") from None


def _fields(buf: bytes, what: str) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: varints as int, length-delimited as bytes;
    fixed-width fields are skipped (none is expected here); groups are refused."""
    out: list[tuple[int, int | bytes]] = []
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos, what)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise Corrupt(f"protobuf: {what}: field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, what)
            out.append((field, value))
        elif wire == 2:
            size, pos = _varint(buf, pos, what)
            if pos + size > end:
                raise Corrupt(f"protobuf: {what}: truncated")
            out.append((field, buf[pos : pos + size]))
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise Corrupt(f"protobuf: {what}: truncated")
        else:
            raise Corrupt(f"protobuf: {what}: wire type {wire}")
    return out


def _varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise Corrupt(f"protobuf: {what}: bad varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
