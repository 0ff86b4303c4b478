"""The Kinesis calls the stream source makes (etl.sources.kinesis.stream.Stream), on both Kinesis
servers the tests run: moto's and kinesis-mock (the server LocalStack runs). What the fetch
relies on is checked call by call: put ids equal read ids, Limit, every iterator kind it asks
for, the incarnation of a re-created stream, aggregated records, and errors as our kinds; each
with GetRecords lean (etl.wire.lean, the default) and through boto3 (ETL_KINESIS_CLIENT).
"""

import time
import uuid

import boto3
import pytest

from tests.support import AWS_ENV

from etl.errors import ConfigError, EtlError, TerminalError  # isort: skip
from etl.model import shards
from etl.sources.kinesis import stream as kinesis

pytestmark = pytest.mark.integration


@pytest.fixture(params=["moto", "kinesis-mock"])
def endpoint(request: pytest.FixtureRequest, sqs_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The server's endpoint, set as AWS_ENDPOINT_URL_KINESIS with local credentials (set here:
    a session fixture first made inside another test has its environment undone after it)."""
    url = sqs_endpoint if request.param == "moto" else str(request.getfixturevalue("kinesis_mock"))
    for name, value in {**AWS_ENV, "AWS_ENDPOINT_URL_KINESIS": url}.items():
        monkeypatch.setenv(name, value)
    return url


@pytest.fixture(params=["lean", "boto3"])
def reads(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def one_shard(endpoint: str, reads: str) -> kinesis.Stream:
    s = kinesis.Stream(f"conf-{uuid.uuid4().hex[:8]}", reads=reads)
    assert (s._lean is not None) == (reads == "lean")
    assert s.create(1) is True
    assert s.create(1) is False, "an existing stream is kept"
    return s


def read_all(s: kinesis.Stream, shard_id: str, iterator: str, limit: int = 10_000) -> list[str]:
    out: list[str] = []
    while True:
        batch = s.read(shard_id, iterator, limit)
        out += [m.body for m in batch.messages]
        assert batch.next_iterator, "an open shard always has a next iterator"
        if not batch.messages:
            return out
        iterator = batch.next_iterator


def test_put_ids_are_the_ids_read_and_limit_is_kept(one_shard: kinesis.Stream) -> None:
    bodies = [f'{{"user_id": "u{i}"}}' for i in range(25)]
    ids = one_shard.put([(f"k{i}", b) for i, b in enumerate(bodies)])
    [shard] = one_shard.shards()
    assert shard.parents == () and shard.ending is None
    batch = one_shard.read(shard.shard_id, one_shard.iterator(shard.shard_id, shards.START), 10)
    assert [m.body for m in batch.messages] == bodies[:10]
    assert [m.message_id for m in batch.messages] == ids[:10]
    assert all(m.receipt_handle == m.message_id.rsplit("/", 1)[1] for m in batch.messages)
    assert isinstance(batch.behind_ms, int)
    assert abs(batch.messages[0].sent_timestamp_ms / 1000 - time.time()) < 60, "ApproximateArrivalTimestamp"
    assert batch.next_iterator is not None
    assert read_all(one_shard, shard.shard_id, batch.next_iterator) == bodies[10:]


def test_every_iterator_kind_the_fetch_asks_for(one_shard: kinesis.Stream) -> None:
    first = one_shard.put([("k", f'{{"n": {i}}}') for i in range(5)])
    time.sleep(1.1)  # AT_TIMESTAMP: a time between the two puts (timestamps have ms resolution)
    between = time.time()
    time.sleep(0.1)
    one_shard.put([("k", f'{{"n": {i}}}') for i in range(5, 8)])
    [shard] = one_shard.shards()
    sid = shard.shard_id
    after_third = first[2].rsplit("/", 1)[1]
    assert read_all(one_shard, sid, one_shard.iterator(sid, after_third)) == [f'{{"n": {i}}}' for i in range(3, 8)]
    assert read_all(one_shard, sid, one_shard.iterator(sid, shards.START, between)) == [
        f'{{"n": {i}}}' for i in range(5, 8)
    ]
    # a position inside an aggregated record: the record itself is read again (AT_SEQUENCE_NUMBER)
    assert read_all(one_shard, sid, one_shard.iterator(sid, f"{after_third}/4"))[0] == '{"n": 2}'


def test_aggregated_records_become_their_user_records(one_shard: kinesis.Stream, endpoint: str) -> None:
    from aws_kinesis_agg.aggregator import AggRecord

    agg = AggRecord()
    for i in range(3):
        assert agg.add_user_record(f"k{i}", f'{{"user": {i}}}'.encode())
    client = boto3.client("kinesis", endpoint_url=endpoint, region_name=AWS_ENV["AWS_DEFAULT_REGION"])
    put = client.put_records(
        StreamName=one_shard.name,
        Records=[
            {"Data": bytes(agg.get_contents()[2]), "PartitionKey": "k"},
            {"Data": b'{"plain": 1}', "PartitionKey": "k"},
        ],
    )
    seq = put["Records"][0]["SequenceNumber"]
    [shard] = one_shard.shards()
    batch = one_shard.read(shard.shard_id, one_shard.iterator(shard.shard_id, shards.START), 10)
    assert [m.body for m in batch.messages] == ['{"user": 0}', '{"user": 1}', '{"user": 2}', '{"plain": 1}']
    assert [m.receipt_handle for m in batch.messages[:3]] == [f"{seq}/0", f"{seq}/1", seq]
    assert batch.messages[1].message_id == shards.message_id(one_shard.name, shard.shard_id, seq, 1)


def test_a_re_created_stream_is_another_incarnation(one_shard: kinesis.Stream, endpoint: str) -> None:
    created, arn = one_shard.incarnation()
    assert arn and arn.endswith(":stream/" + one_shard.name)
    assert abs(created - time.time()) < 120
    client = boto3.client("kinesis", endpoint_url=endpoint, region_name=AWS_ENV["AWS_DEFAULT_REGION"])
    client.delete_stream(StreamName=one_shard.name)
    deadline = time.monotonic() + 30
    while one_shard.name in client.list_streams()["StreamNames"]:
        assert time.monotonic() < deadline, "the stream was not deleted"
        time.sleep(0.2)
    time.sleep(0.01)
    one_shard.create(1)
    assert one_shard.incarnation()[0] != created


def test_errors_arrive_as_our_kinds_naming_no_data(endpoint: str, reads: str) -> None:
    missing = kinesis.Stream(f"missing-{uuid.uuid4().hex[:8]}", reads=reads)
    with pytest.raises(ConfigError, match="ListShards: the stream does not exist; check KINESIS_STREAM_NAME"):
        missing.shards()
    with pytest.raises(ConfigError, match="GetShardIterator: the stream does not exist"):
        missing.iterator("shardId-000000000000", shards.START)
    with pytest.raises(TerminalError, match=r"^Kinesis PutRecords: a record of 1048577 bytes"):
        missing.put([("k", "x" * (1024 * 1024 + 1))])
    # both servers answer a made-up iterator with a 500 (AWS: InvalidArgumentException); either
    # way both clients raise our kind, naming the call and never the request
    with pytest.raises(EtlError, match=r"^Kinesis GetRecords") as refused:
        missing.read("shardId-000000000000", "not-an-iterator-of-this-server", 10)
    assert "not-an-iterator" not in str(refused.value), "no request value in the message"
