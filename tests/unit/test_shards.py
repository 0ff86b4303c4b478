"""Shard lineage, checkpoint advance and where a fetch reads on (etl.model.shards), and the stream
fetch loop (etl.sources.kinesis.fetch.fetch) against an in-memory shard reader."""

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.errors import TerminalError, TransientError
from etl.model import shards
from etl.model.records import Message
from etl.model.shards import Batch, Checkpoint, IteratorExpired, Pointer, Position, Shard, Throttled
from etl.sources.kinesis import fetch as streaming


def test_children_wait_for_every_listed_parent() -> None:
    parent, other = Shard("p", ending="9"), Shard("q", ending="5")
    child = Shard("c", parents=("p", "q"))
    listed = [parent, other, child]
    assert [s.shard_id for s in shards.readable(listed, {})] == ["p", "q"]
    done_p = {"p": Checkpoint("9", 0.0), "q": Checkpoint("4", 0.0)}
    assert [s.shard_id for s in shards.readable(listed, done_p)] == ["q"]
    both = {"p": Checkpoint("9", 0.0), "q": Checkpoint("5", 0.0)}
    assert [s.shard_id for s in shards.readable(listed, both)] == ["c"]
    # a parent past retention (no longer listed) holds nothing back
    assert [s.shard_id for s in shards.readable([child], {})] == ["c"]


def test_a_shard_is_finished_by_its_recorded_end_or_its_ending_number() -> None:
    assert not shards.finished(Shard("s"), Checkpoint("100", 0.0))  # open
    assert shards.finished(Shard("s"), Checkpoint("7", 0.0, end="7"))  # read to its end
    assert not shards.finished(Shard("s", ending="9"), Checkpoint("7", 0.0, end=None))
    assert shards.finished(Shard("s", ending="9"), Checkpoint("9", 0.0))
    assert shards.finished(Shard("s"), Checkpoint(shards.START, 0.0, end=shards.START))  # empty closed shard
    assert not shards.finished(Shard("s"), None)


def test_resume_continues_at_the_pointer_until_the_checkpoint_is_stuck() -> None:
    cp = Checkpoint("10", moved_at=1000.0)
    assert shards.resume(cp, None, 2000.0, 120) == (Pointer("10"), False)  # Redis lost the pointer
    assert shards.resume(cp, Pointer("5", 900.0), 1001.0, 120) == (Pointer("10"), False)  # behind
    ahead = Pointer("30", pending_since=1050.0)
    assert shards.resume(cp, ahead, 1100.0, 120) == (ahead, False)  # chunks in flight
    assert shards.resume(cp, ahead, 1171.0, 120) == (Pointer("10"), True)  # stuck: read again
    moving = Checkpoint("20", moved_at=1160.0)  # still moving: not stuck however old the pointer
    assert shards.resume(moving, ahead, 1200.0, 120) == (ahead, False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 8), min_size=1, max_size=12), st.randoms(use_true_random=False), st.data())
def test_checkpoint_never_passes_an_uncommitted_record(
    sizes: list[int], rnd: random.Random, data: st.DataObject
) -> None:
    """Chunks of consecutive records commit in any order, some never: the checkpoint is always
    the end of the longest committed prefix."""
    bounds, end = [], 0
    for n in sizes:
        bounds.append((str(end), str(end + n)))
        end += n
    order = list(range(len(bounds)))
    rnd.shuffle(order)
    lost = set(data.draw(st.lists(st.sampled_from(order), max_size=2)))
    committed: set[int] = set()
    checkpoint = shards.START
    for i in order:
        if i in lost:
            continue
        committed.add(i)
        checkpoint = shards.advance(checkpoint, [bounds[j] for j in committed])
        prefix = 0
        while prefix in committed:
            prefix += 1
        assert checkpoint == (bounds[prefix - 1][1] if prefix else shards.START)


def test_a_reread_range_overlapping_old_ones_still_advances() -> None:
    # first read (0,5] (5,9] committed out of order with (0,5] lost; re-read after a reset as (0,7]
    assert shards.advance("0", [("5", "9")]) == "0"
    assert shards.advance("0", [("5", "9"), ("0", "7")]) == "9"


class Reader:
    """An in-memory stream: shard -> sequence numbers; optional scripted failures."""

    name = "s"
    key = "s"

    def __init__(self, records: dict[str, list[int]], closed: set[str] = frozenset(), fail: list[Exception] = ()):
        self.records, self.closed, self.fail = records, closed, list(fail)
        self.calls: list[tuple[str, float]] = []
        self.iterators: list[str] = []  # where each iterator asked for starts
        self.limits: list[int] = []  # each read's Limit
        self.now = 0.0

    def iterator(self, shard_id: str, after: str, start_at: float | None = None) -> str:
        self.iterators.append(after)
        return f"{shard_id}:{after}"

    def read(self, shard_id: str, iterator: str, limit: int) -> Batch:
        self.calls.append((shard_id, self.now))
        self.limits.append(limit)
        if self.fail:
            raise self.fail.pop(0)
        after = int(iterator.split(":")[1])
        seqs = [q for q in self.records[shard_id] if q > after][:limit]
        last = seqs[-1] if seqs else after
        more = any(q > last for q in self.records[shard_id])
        messages = [Message(f"s/{shard_id}/{q}", str(q), "{}", 0) for q in seqs]
        end = shard_id in self.closed and not more
        return Batch(messages, None if end else f"{shard_id}:{last}", 0)


def run(reader: Reader, cursors: list[streaming.Cursor], **kw: object) -> tuple[list[Position], object]:
    sent: list[Position] = []

    def clock() -> float:
        return reader.now

    def sleep(seconds: float) -> None:
        reader.now += seconds

    report = streaming.fetch(
        reader,
        cursors,
        kw.pop("dispatch", lambda pos, msgs: sent.append(pos)),  # type: ignore[arg-type]
        chunk_size=kw.pop("chunk_size", 3),  # type: ignore[arg-type]
        budget_seconds=kw.pop("budget", 3.0),  # type: ignore[arg-type]
        clock=clock,
        wall=clock,
        sleep=sleep,
        **kw,  # type: ignore[arg-type]
    )
    return sent, report


def test_fetch_hands_on_contiguous_ranges_and_finishes_closed_shards() -> None:
    reader = Reader({"a": [1, 2, 3, 4, 5, 6, 7], "b": [10, 20]}, closed={"b"})
    ended: list[str] = []
    cursors = [streaming.Cursor(Shard("a"), Pointer("0")), streaming.Cursor(Shard("b", (), "20"), Pointer("0"))]
    sent, _ = run(reader, cursors, ended=lambda c: ended.append(c.shard.shard_id))
    by_shard: dict[str, list[tuple[str, str]]] = {}
    for p in sent:
        by_shard.setdefault(p.shard_id, []).append((p.after, p.last))
    assert by_shard == {"a": [("0", "3"), ("3", "6"), ("6", "7")], "b": [("0", "20")]}
    assert ended == ["b"] and cursors[0].pointer.seq == "7"


class Truncated(Reader):
    """Answers its first read of an open shard without a next iterator (a broken proxy's `{}`)."""

    def read(self, shard_id: str, iterator: str, limit: int) -> Batch:
        batch = super().read(shard_id, iterator, limit)
        if len(self.calls) == 1:
            return Batch(batch.messages, None, 0)
        return batch


def test_an_open_shard_is_not_finished_by_an_answer_without_a_next_iterator() -> None:
    """Taken as the end, one such answer finished the shard for good: all later records unread."""
    reader = Truncated({"a": [1, 2, 3, 4, 5]})
    ended: list[str] = []
    cursor = streaming.Cursor(Shard("a"), Pointer("0"))
    sent, _ = run(reader, [cursor], budget=5.0, ended=lambda c: ended.append(c.shard.shard_id))
    assert ended == [] and cursor.pointer.seq == "5"
    assert [(p.after, p.last) for p in sent] == [("0", "3"), ("3", "5")], "the answer's records read again"


def test_a_read_asks_for_several_chunks_and_hands_them_on_in_order() -> None:
    """Five reads a second per shard: a read of one chunk would cap a shard at five chunks a second."""
    reader = Reader({"a": list(range(1, 14))})
    sent, _ = run(reader, [streaming.Cursor(Shard("a"), Pointer("0"))], chunk_size=3, budget=0.1)
    assert reader.limits[0] == streaming.READ_CHUNKS * 3
    assert [(p.after, p.last) for p in sent] == [("0", "3"), ("3", "6"), ("6", "9"), ("9", "12")]
    big = Reader({"a": [1]})
    run(big, [streaming.Cursor(Shard("a"), Pointer("0"))], chunk_size=5000, budget=0.1)
    assert big.limits[0] == streaming.MAX_READ == 10_000, "GetRecords' own limit"
    tight = Reader({"a": list(range(1, 14))})
    run(tight, [streaming.Cursor(Shard("a"), Pointer("0"))], chunk_size=3, budget=0.1, room=lambda: 2)
    assert tight.limits[0] == 2 * 3, "no more than the broker takes"


def test_a_read_the_broker_fills_up_under_is_cut_and_read_on_by_the_next_run() -> None:
    """The broker's bound holds inside a read too: once it is full, the rest of the read is not
    handed on (nor waited for in the worker process); the run ends, and the next run reads on
    from the pointer: nothing skipped, nothing twice."""
    reader = Reader({"a": list(range(1, 13))})
    looks = iter([None, None, "backpressure"])
    cursor = streaming.Cursor(Shard("a"), Pointer("0"))
    sent, report = run(reader, [cursor], chunk_size=3, pause=lambda: next(looks, "backpressure"))
    assert [(p.after, p.last) for p in sent] == [("0", "3"), ("3", "6")]
    assert report.stopped == "backpressure" and cursor.pointer.seq == "6"  # type: ignore[attr-defined]
    then, _ = run(reader, [streaming.Cursor(Shard("a"), Pointer("6"))], chunk_size=3, budget=0.1)
    assert [(p.after, p.last) for p in then] == [("6", "9"), ("9", "12")]


def test_fetch_respects_five_reads_per_second_per_shard_and_idles() -> None:
    reader = Reader({"a": list(range(1, 100))})
    run(reader, [streaming.Cursor(Shard("a"), Pointer("0"))], chunk_size=5, budget=2.0)
    times = [t for _, t in reader.calls]
    assert all(b - a >= streaming.MIN_INTERVAL - 1e-9 for a, b in itertools.pairwise(times))
    idle = Reader({"a": []})
    run(idle, [streaming.Cursor(Shard("a"), Pointer("0"))], budget=3.0)
    assert len(idle.calls) <= 4  # about one read a second on a quiet shard


def test_fetch_backs_off_when_throttled_and_renews_expired_iterators() -> None:
    reader = Reader({"a": [1, 2]}, fail=[Throttled("t"), Throttled("t"), IteratorExpired("x"), TransientError("e")])
    sent, report = run(reader, [streaming.Cursor(Shard("a"), Pointer("0"))], budget=10.0)
    assert reader.iterators[:3] == ["0", "0", "0"]  # renewed from the pointer each time, then read on
    assert [(p.after, p.last) for p in sent] == [("0", "2")]
    assert report.throttled == 2  # type: ignore[attr-defined]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(reader.calls)]
    assert gaps[0] >= 0.4 and gaps[1] >= 0.8  # exponential backoff


def test_a_failed_dispatch_leaves_the_pointer_where_it_was() -> None:
    reader = Reader({"a": [1, 2, 3]})
    cursor = streaming.Cursor(Shard("a"), Pointer("0"))
    saved: list[str] = []

    def broken(position: Position, messages: list[Message]) -> None:
        raise TransientError("broker down")

    with pytest.raises(TransientError, match="broker down"):
        streaming.fetch(
            reader, [cursor], broken, chunk_size=3, budget_seconds=1, advanced=lambda c: saved.append(c.pointer.seq)
        )
    assert cursor.pointer.seq == "0" and saved == []


def test_fetch_pauses_for_backpressure() -> None:
    reader = Reader({"a": [1, 2, 3]})
    sent, report = run(reader, [streaming.Cursor(Shard("a"), Pointer("0"))], pause=lambda: "backpressure")
    assert sent == [] and report.stopped == "backpressure"  # type: ignore[attr-defined]


class Trimmed(Reader):
    """A stream whose records up to 4 expired: an iterator after 2 is refused."""

    def iterator(self, shard_id: str, after: str, start_at: float | None = None) -> str:
        if after != shards.START and int(after) < 4:
            raise TerminalError("Kinesis GetShardIterator refused: InvalidArgumentException")
        return super().iterator(shard_id, after, start_at)


def test_records_past_retention_are_reported_and_reading_goes_on() -> None:
    reader = Trimmed({"a": [5, 6]})
    expired: list[str] = []
    sent, _ = run(reader, [streaming.Cursor(Shard("a"), Pointer("2"))], expired=lambda c: expired.append(c.pointer.seq))
    assert expired == ["2"]
    assert [(p.after, p.last) for p in sent] == [("2", "6")]  # the range covers the gap: it is gone for good


def test_an_idle_shard_whose_last_record_aged_out_is_no_loss() -> None:
    reader = Trimmed({"a": []})  # the committed record 2 expired; nothing came after it
    expired: list[str] = []
    sent, _ = run(reader, [streaming.Cursor(Shard("a"), Pointer("2"))], expired=lambda c: expired.append(c.pointer.seq))
    assert sent == [] and expired == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 10**56), st.integers(1, 300)), min_size=1, max_size=6), st.data())
def test_positions_inside_aggregates_order_between_records_and_survive_postgres(
    recs: list[tuple[int, int]], data: st.DataObject
) -> None:
    """A position inside record S lies after every record before S and before S itself; as
    numeric text and back it is the same position (Postgres compares them as numeric)."""
    seqs = sorted({s for s, _ in recs})
    order: list[str] = [shards.START]
    for seq in seqs:
        count = data.draw(st.integers(1, 300))
        order += [shards.position(str(seq), sub, count) for sub in range(count)]
    keys = [shards.key(p) for p in order]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert order[-1] == str(seqs[-1])  # the last user record's position is the record's own number
    from decimal import Decimal

    as_db = [Decimal(shards.to_db(p)) for p in order]
    assert as_db == sorted(as_db) and len(set(as_db)) == len(as_db)
    assert [shards.from_db(format(d, "f")) for d in as_db] == order
    assert all(shards.is_position(p) for p in order)


def test_the_checkpoint_stops_inside_an_aggregate_until_its_rest_commits() -> None:
    # record 7 holds 3 user records, split over two chunks: (5, 7/1] and (7/1, 9]
    assert shards.advance("5", [("5", "7/1")]) == "7/1"
    assert shards.advance("5", [("7/1", "9")]) == "5"
    assert shards.advance("5", [("7/1", "9"), ("5", "7/1")]) == "9"
    assert not shards.finished(Shard("s", ending="7"), Checkpoint("7/1", 0.0))
    assert shards.finished(Shard("s", ending="7"), Checkpoint("7", 0.0))
    assert shards.resume(Checkpoint("7/1", 0.0), Pointer("7/0", 0.0), 1.0, 60) == (Pointer("7/1"), False)


class Aggregates(Reader):
    """An in-memory stream of aggregated records: shard -> [(sequence number, user records)]."""

    def __init__(self, records: dict[str, list[tuple[int, int]]]) -> None:
        super().__init__({k: [q for q, _ in v] for k, v in records.items()})
        self.aggregates = records

    def read(self, shard_id: str, iterator: str, limit: int) -> Batch:
        self.calls.append((shard_id, self.now))
        where = iterator.split(":")[1]
        seq, _, sub = where.partition("/")
        first = [(q, n) for q, n in self.aggregates[shard_id] if (q >= int(seq) if sub else q > int(seq))][:limit]
        messages = [
            Message(shards.message_id("s", shard_id, str(q), i), shards.position(str(q), i, n), "{}", 0)
            for q, n in first
            for i in range(n)
        ]
        last = first[-1][0] if first else int(seq)
        return Batch(messages, f"{shard_id}:{last}", 0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 9), min_size=1, max_size=10),
    st.integers(1, 7),
    st.lists(st.integers(0, 12), max_size=4),
)
def test_aggregates_split_over_chunks_and_a_fetch_that_dies_between_them_skip_and_double_nothing(
    sizes: list[int], chunk_size: int, crashes: list[int]
) -> None:
    """Reads of aggregated records go on as chunks of at most chunk_size user records, boundaries
    inside aggregates; a fetch that dies after any chunk resumes from its pointer: every user
    record handed on exactly once, in contiguous ranges."""
    records = {"a": [(10 * (i + 1), n) for i, n in enumerate(sizes)]}
    expected = [shards.message_id("s", "a", str(q), i) for q, n in records["a"] for i in range(n)]
    reader = Aggregates(records)
    got: list[str] = []
    ranges: list[tuple[str, str]] = []
    pointer = Pointer(shards.START)
    for crash in [*crashes, None]:
        dispatched = 0

        def dispatch(position: Position, messages: list[Message], crash: int | None = crash) -> None:
            nonlocal dispatched
            if crash is not None and dispatched >= crash:
                raise TransientError("worker killed")
            assert 0 < len(messages) <= chunk_size
            dispatched += 1
            got.extend(m.message_id for m in messages)
            ranges.append((position.after, position.last))

        cursor = streaming.Cursor(Shard("a"), pointer)
        try:
            run(reader, [cursor], dispatch=dispatch, chunk_size=chunk_size, budget=30.0)
        except TransientError:
            pointer = cursor.pointer  # the next fetch reads on from where this one handed on
            continue
        break
    assert got == expected
    assert shards.advance(shards.START, ranges) == str(records["a"][-1][0])
    assert all(a == b for (_, a), (b, _) in itertools.pairwise(ranges))


def test_fresh_records_wait_for_a_check_that_the_stream_was_not_re_created() -> None:
    """A read of records newer than the last incarnation check is handed on only after a later
    check says the stream is the same one; if it was re-created, nothing of it is handed on."""
    fresh = Reader({"a": [1, 2, 3, 4, 5, 6]})  # records arrived at unix time 0 (Message's sent_timestamp_ms)
    checks: list[float] = []

    def same() -> bool:
        checks.append(fresh.now)
        return True

    sent, _ = run(fresh, [streaming.Cursor(Shard("a"), Pointer("0"))], same_stream=same, verified_at=0.0)
    assert [(p.after, p.last) for p in sent] == [("0", "3"), ("3", "6")]
    assert checks and all(b - a >= streaming.VERIFY_EVERY - 1e-9 for a, b in itertools.pairwise(checks))
    old = Reader({"a": [1, 2, 3]})  # checked well after they arrived: no check needed
    sent, _ = run(old, [streaming.Cursor(Shard("a"), Pointer("0"))], same_stream=lambda: False, verified_at=1000.0)
    assert [(p.after, p.last) for p in sent] == [("0", "3")]
    gone = Reader({"a": [1, 2, 3]})
    cursor = streaming.Cursor(Shard("a"), Pointer("0"))
    sent, report = run(gone, [cursor], same_stream=lambda: False, verified_at=0.0)
    assert sent == [] and cursor.pointer.seq == "0" and report.stopped == "stream re-created"  # type: ignore[attr-defined]
