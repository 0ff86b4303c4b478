"""The only module that talks to Kinesis Data Streams: shards, iterators, reads, puts.

Its client is etl.aws's stock boto3 client; GetRecords, the one hot call, goes lean
(etl.wire.lean: ~15 µs less CPU per record than botocore's parsing) unless ``reads="boto3"``
(ETL_KINESIS_CLIENT) or the endpoint goes through a proxy. Driver errors leave this module as etl.errors kinds
(etl.aws.translated's table), naming the operation and error code only (never a record's data).
Two transient kinds have their own class (etl.model.shards), because a fetch handles them per
shard: an expired iterator (get a new one) and a throttled shard (back off).
"""

import base64
import binascii
import contextlib
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from etl import aws
from etl.errors import TerminalError, TransientError
from etl.model import kpl, shards
from etl.model.records import Message
from etl.model.shards import Batch, Shard
from etl.wire import lean

MAX_PUT = 500  # PutRecords: records per call
MAX_PUT_BYTES = 5 * 1024 * 1024  # PutRecords: bytes per call (data + partition keys)
MAX_RECORD_BYTES = 1024 * 1024
MAX_TIMESTAMP = 1e11  # unix seconds: an ApproximateArrivalTimestamp past this is not taken as one


def _translated(operation: str, expected: Collection[str] = ()) -> AbstractContextManager[aws.Refusal]:
    return aws.translated("Kinesis", operation, expected)


class Stream:
    """One Kinesis data stream."""

    def __init__(self, name: str, client: Any = None, reads: str = "lean") -> None:
        self.name = name
        # what checkpoints and message ids call this incarnation of the stream (etl.model.shards.
        # Incarnation.key): the name until a fetch run (or a caller) learns otherwise
        self.key = name
        self._lean: lean.LeanClient | None = None
        if client is None:
            client, wire = aws.kinesis()
            if reads == "lean" and not lean.uses_proxy(wire.endpoint_url):
                self._lean = lean.LeanClient(wire, None, api=lean.KINESIS)
        self.client = client

    def incarnation(self) -> tuple[float, str | None]:
        """The stream's StreamCreationTimestamp (unix time) and ARN: a stream deleted and re-created
        under the same name has another creation time."""
        with _translated("DescribeStreamSummary"):
            summary = self.client.describe_stream_summary(StreamName=self.name)["StreamDescriptionSummary"]
        return summary["StreamCreationTimestamp"].timestamp(), summary.get("StreamARN")

    def shards(self) -> list[Shard]:
        """Every shard ListShards reports (open and closed, with their parents)."""
        found: list[Shard] = []
        kwargs: dict[str, Any] = {"StreamName": self.name}
        while True:
            with _translated("ListShards"):
                page = self.client.list_shards(**kwargs)
            for s in page.get("Shards", []):
                parents = tuple(p for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p)
                ending = s.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
                found.append(Shard(s["ShardId"], parents, ending))
            token = page.get("NextToken")
            if not token:
                return found
            kwargs = {"NextToken": token}  # ListShards refuses StreamName beside a token

    def iterator(self, shard_id: str, after: str, start_at: float | None = None) -> str:
        """An iterator just after position ``after``; at the start: from ``start_at``
        (a unix time) if given, else from the oldest record kept (TRIM_HORIZON)."""
        kwargs: dict[str, Any] = {"StreamName": self.name, "ShardId": shard_id}
        if "/" in after:  # inside an aggregated record: read it again (the fetch drops what it handed on)
            kwargs.update(ShardIteratorType="AT_SEQUENCE_NUMBER", StartingSequenceNumber=after.partition("/")[0])
        elif after != shards.START:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after)
        elif start_at is not None:
            kwargs.update(ShardIteratorType="AT_TIMESTAMP", Timestamp=datetime.fromtimestamp(start_at, tz=UTC))
        else:
            kwargs.update(ShardIteratorType="TRIM_HORIZON")
        with _translated("GetShardIterator"):
            return str(self.client.get_shard_iterator(**kwargs)["ShardIterator"])

    def read(self, shard_id: str, iterator: str, limit: int) -> Batch:
        """Up to ``limit`` records from ``iterator``, as messages of this stream and shard (an
        aggregated record as one message per user record)."""
        limit = max(1, min(limit, 10_000))
        messages: list[Message] = []
        try:
            if self._lean is not None:
                with _translated("GetRecords"):
                    response = self._lean.call("GetRecords", {"ShardIterator": iterator, "Limit": limit})
                received_at = time.time()
                for r in response.get("Records") or ():
                    arrived = r.get("ApproximateArrivalTimestamp")
                    messages += _to_messages(self.key, shard_id, r["SequenceNumber"], _data(r), arrived, received_at)
            else:
                with _translated("GetRecords"):
                    response = self.client.get_records(ShardIterator=iterator, Limit=limit)
                received_at = time.time()
                for r in response.get("Records", []):
                    arrived = r.get("ApproximateArrivalTimestamp")
                    data = bytes(r.get("Data", b""))
                    stamp = arrived.timestamp() if arrived else None
                    messages += _to_messages(self.key, shard_id, r["SequenceNumber"], data, stamp, received_at)
            next_iterator, behind = response.get("NextShardIterator"), response.get("MillisBehindLatest")
            if not isinstance(next_iterator, str | None) or not isinstance(behind, int | None):
                raise TypeError("NextShardIterator or MillisBehindLatest")
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            # An answer not as the API documents it (a broken proxy or server): never a crash of
            # the fetch, and never its values in the message; the shard is read again shortly.
            raise TransientError(f"Kinesis GetRecords: an answer not as documented ({type(exc).__name__})") from None
        return Batch(messages, next_iterator, behind)

    def put(
        self, records: Sequence[tuple[str, str]], progress: Callable[[int], None] = lambda n: None, attempts: int = 8
    ) -> list[str]:
        """PutRecords (partition key, body) in batches of 500 / 5 MiB; entries that failed
        (throttled) are sent again with backoff. Returns the records' message ids in order;
        raises TransientError if some never went in."""
        ids: list[str] = []
        batch: list[dict[str, Any]] = []
        size = 0
        for key, body in records:
            data = body.encode("utf-8", "surrogatepass")
            entry_size = len(data) + len(key.encode())
            if entry_size > MAX_RECORD_BYTES:
                raise TerminalError(f"Kinesis PutRecords: a record of {len(data)} bytes is over the 1 MiB limit")
            if batch and (len(batch) == MAX_PUT or size + entry_size > MAX_PUT_BYTES):
                ids += self._put_batch(batch, attempts)
                progress(len(ids))
                batch, size = [], 0
            batch.append({"Data": data, "PartitionKey": key or "-"})
            size += entry_size
        if batch:
            ids += self._put_batch(batch, attempts)
            progress(len(ids))
        return ids

    def _put_batch(self, entries: list[dict[str, Any]], attempts: int) -> list[str]:
        ids: list[str | None] = [None] * len(entries)
        pending = list(range(len(entries)))
        for attempt in range(attempts):
            with _translated("PutRecords"):
                response = self.client.put_records(StreamName=self.name, Records=[entries[i] for i in pending])
            failed = []
            for i, result in zip(pending, response["Records"], strict=True):
                if result.get("ErrorCode"):
                    failed.append(i)
                else:
                    ids[i] = shards.message_id(self.key, result["ShardId"], result["SequenceNumber"])
            if not failed:
                return [i for i in ids if i is not None]
            pending = failed
            time.sleep(min(0.1 * 2**attempt, 2.0))
        raise TransientError(f"Kinesis PutRecords: {len(pending)} of {len(entries)} records not accepted")

    def create(self, shard_count: int, timeout: float = 60) -> bool:
        """Create the stream with ``shard_count`` shards unless it exists; wait until ACTIVE.
        Returns whether it was created."""
        with _translated("CreateStream", expected={"ResourceInUseException"}) as exists:
            self.client.create_stream(StreamName=self.name, ShardCount=shard_count)
        created = exists.code is None
        deadline = time.monotonic() + timeout
        while self.status() != "ACTIVE":
            if time.monotonic() > deadline:
                raise TransientError(f"Kinesis stream {self.name} not ACTIVE after {timeout:.0f}s")
            time.sleep(0.5)
        return created

    def status(self) -> str:
        with _translated("DescribeStreamSummary"):
            summary = self.client.describe_stream_summary(StreamName=self.name)["StreamDescriptionSummary"]
        return str(summary["StreamStatus"])


def _data(record: dict[str, Any]) -> bytes:
    """A record's Data as the JSON protocol sends it (base64); what does not decode is kept as
    sent, to be rejected, never dropped."""
    raw = record.get("Data") or ""
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return str(raw).encode("utf-8", "surrogatepass")


def _to_messages(
    stream: str, shard_id: str, seq: str, data: bytes, arrived: float | None, received_at: float
) -> list[Message]:
    """One message for a plain record; one per user record for an aggregated one, each with its
    sub-sequence number in its id and its position (etl.model.shards.position) as receipt handle.
    An aggregate that does not decode stays one message, rejected by etl.model.records.
    ``arrived``: ApproximateArrivalTimestamp (unix seconds)."""
    when = float(arrived) if arrived else received_at
    if not 0 < when < MAX_TIMESTAMP:  # what no server could mean (year 5138 and on): when it was read
        when = received_at
    sent_ms = int(when * 1000)
    if not isinstance(seq, str) or not shards.is_position(seq):
        raise ValueError("SequenceNumber")
    users = None
    if kpl.is_aggregated(data):
        with contextlib.suppress(kpl.Corrupt):
            users = kpl.decode(data)
    if users is None:
        # Not UTF-8? Kept byte for byte (surrogateescape) and rejected by validation, never lost.
        body = data.decode("utf-8", "surrogateescape")
        return [Message(shards.message_id(stream, shard_id, seq), seq, body, sent_ms, 1, received_at)]
    n = len(users)
    return [
        Message(
            shards.message_id(stream, shard_id, seq, i),
            shards.position(seq, i, n),
            u.data.decode("utf-8", "surrogateescape"),
            sent_ms,
            1,
            received_at,
        )
        for i, u in enumerate(users)
    ]
