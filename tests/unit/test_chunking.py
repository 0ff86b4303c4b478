"""etl.model.chunking: byte-bounded chunks, withheld bodies, delivery that splits a refused chunk."""

import hashlib
import itertools

import pytest

from etl.model import chunking
from etl.model.records import Message


def message(i: int, body: str = "{}") -> Message:
    return Message(f"m{i}", f"rh{i}", body, 0)


class Broker:
    """Refuses any part that holds a message of more than ``limit`` body bytes (or all, when down)."""

    def __init__(self, limit: int = 70_000, down: bool = False) -> None:
        self.limit, self.down = limit, down
        self.sent: list[list[Message]] = []
        self.tries = 0

    def __call__(self, part: list[Message]) -> None:
        self.tries += 1
        if self.down or any(chunking.body_bytes(m) > self.limit for m in part):
            raise ConnectionError("Broken pipe")
        self.sent.append(part)


def test_a_refused_message_is_withheld_alone_and_its_neighbours_go_on_in_order() -> None:
    chunk = [message(i) for i in range(7)] + [message(7, "x" * 100_000)] + [message(i) for i in range(8, 16)]
    broker = Broker()
    refused = chunking.deliver(chunk, broker)
    sent = [m for part in broker.sent for m in part]
    assert [m.message_id for m in sent] == [f"m{i}" for i in range(16)]  # order kept (stream ranges)
    assert [m.message_id for m in refused] == ["m7"]
    stub = next(m for m in sent if m.message_id == "m7")
    assert stub.body == "" and stub.withheld is not None and stub.withheld.reason == chunking.BROKER_REFUSED
    assert hashlib.sha256(b"x" * 100_000).hexdigest() in stub.withheld.detail and stub.withheld.chars == 100_000
    assert all(m.withheld is None for m in sent if m.message_id != "m7")


def test_a_broker_that_is_down_rejects_nothing_and_names_every_message_left() -> None:
    chunk = [message(i) for i in range(16)]
    with pytest.raises(chunking.Undelivered) as caught:
        chunking.deliver(chunk, Broker(down=True))
    assert caught.value.left == chunk and isinstance(caught.value.cause, ConnectionError)


def test_what_was_sent_before_the_broker_went_down_is_not_given_back() -> None:
    broker = Broker()
    calls = 0

    def flaky(part: list[Message]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1 or calls > 2:  # the whole refused, first half sent, then the broker is gone
            raise ConnectionError("down")
        broker(part)

    chunk = [message(i) for i in range(8)]
    with pytest.raises(chunking.Undelivered) as caught:
        chunking.deliver(chunk, flaky)
    assert [m.message_id for m in broker.sent[0]] == ["m0", "m1", "m2", "m3"]
    assert [m.message_id for m in caught.value.left] == ["m4", "m5", "m6", "m7"]


def test_a_broker_restarting_under_a_single_message_rejects_nothing() -> None:
    """A Redis restart drops the connection under one light message: it is tried again and goes
    on whole; had it stayed refused, it is given back (Undelivered), never withheld for ever."""
    broker, failures = Broker(), iter([True, True])  # the pair, then m0 alone; up again for its retry

    def restarting(part: list[Message]) -> None:
        if next(failures, False):
            raise ConnectionError("Connection reset by peer")
        broker(part)

    chunk = [message(0), message(1)]
    assert chunking.deliver(chunk, restarting) == []
    sent = [m for part in broker.sent for m in part]
    assert [m.message_id for m in sent] == ["m0", "m1"] and all(m.withheld is None for m in sent)

    picky = Broker()

    def refuses_m1(part: list[Message]) -> None:
        if any(m.message_id == "m1" for m in part):
            raise ConnectionError("Broken pipe")
        picky(part)

    with pytest.raises(chunking.Undelivered) as caught:
        chunking.deliver([message(0), message(1), message(2)], refuses_m1)
    assert [m.message_id for m in caught.value.left] == ["m1", "m2"]
    assert all(m.withheld is None for part in picky.sent for m in part)


def test_chunks_are_cut_by_count_and_by_bytes_and_a_heavy_message_travels_alone() -> None:
    small = [message(i, "a" * 100) for i in range(10)]
    assert [len(c) for c in chunking.cut(small, 4, 10**6)] == [4, 4, 2]
    per = chunking.weight(small[0])
    by_bytes = chunking.cut(small, 100, chunking.CHUNK_OVERHEAD + 3 * per)
    assert [len(c) for c in by_bytes] == [3, 3, 3, 1]
    heavy = [message(0), message(1, "b" * 100_000), message(2)]
    assert [len(c) for c in chunking.cut(heavy, 100, 65_536)] == [1, 1, 1]
    assert chunking.cut([], 10, 10**6) == []
    mixed = small + heavy
    weights = [chunking.weight(m) for m in mixed]  # weighed once by the caller: the same cut
    for count, limit in ((4, 10**6), (100, chunking.CHUNK_OVERHEAD + 3 * per), (100, 65_536)):
        assert chunking.cut(mixed, count, limit, weights) == chunking.cut(mixed, count, limit)


def test_a_body_over_the_source_maximum_is_withheld_as_too_large() -> None:
    at_limit = message(0, "a" * chunking.SOURCE_MAX_BODY_BYTES)
    over = message(1, "\U0001f600" * (chunking.SOURCE_MAX_BODY_BYTES // 4 + 1))  # bytes, not characters
    kept, stub = chunking.screen([at_limit, over])
    assert kept is at_limit
    assert stub.body == "" and stub.withheld is not None and stub.withheld.reason == chunking.TOO_LARGE
    assert f"{chunking.SOURCE_MAX_BODY_BYTES + 4} bytes" in stub.withheld.detail
    assert chunking.weight(stub) < 1000


def test_body_bytes_counts_utf8_and_lone_surrogates() -> None:
    assert chunking.body_bytes(message(0, "abc")) == 3
    assert chunking.body_bytes(message(0, "é\U0001f600")) == 6
    assert chunking.body_bytes(message(0, "\ud800")) == 3


def test_the_pure_default_is_the_settings_default() -> None:
    from etl import settings

    assert settings.Settings().chunk_max_bytes == chunking.DEFAULT_CHUNK_BYTES


def test_a_stream_read_is_handed_on_as_contiguous_ranges() -> None:
    from etl.model.shards import Position
    from etl.sources.kinesis.fetch import hand_on

    records = [Message(f"s/sh/{n}", str(n), "z" * 30_000, 0) for n in range(100, 110)]
    records[4] = Message("s/sh/104", "104", "q" * 90_000, 0)
    records[6] = Message("s/sh/106", "106", "\U0001f600" * 300_000, 0)  # over the stream's 1 MiB
    got: list[tuple[Position, list[Message]]] = []

    def dispatch(position: Position, part: list[Message]) -> None:
        if any(m.receipt_handle == "104" and not m.withheld for m in part):
            raise ConnectionError("Broken pipe")  # the broker refuses record 104 however it is cut
        got.append((position, part))

    whole = Position("s", "sh", "99", "109")
    chunks = hand_on(whole, records, dispatch, chunk_size=500, chunk_bytes=100_000)
    assert chunks >= 3
    ranges = [(p.after, p.last) for p, _ in got]
    assert ranges[0][0] == "99" and ranges[-1][1] == "109"
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # no gap, no overlap
    assert all(p.last == part[-1].receipt_handle for p, part in got)
    reasons = {m.receipt_handle: m.withheld.reason for _, part in got for m in part if m.withheld}
    assert reasons == {"104": "broker_refused", "106": "too_large"}
