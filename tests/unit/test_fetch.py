"""etl.sources.sqs.fetch.fetch against a small in-memory SQS (a real implementation, not a mock)."""

import threading
import time

import pytest

from etl.model.records import Message
from etl.sources.sqs import fetch as sqs_fetch


class MemoryQueue:
    def __init__(self, count: int) -> None:
        self.visible = [Message(f"m{i}", f"rh{i}", "{}", 0) for i in range(count)]
        self.invisible: list[Message] = []
        self.waits: list[int] = []

    def receive(self, max_messages: int = 10, wait_seconds: int = 0, visibility_timeout: int = 120) -> list[Message]:
        self.waits.append(wait_seconds)
        batch, self.visible = self.visible[:max_messages], self.visible[max_messages:]
        self.invisible += batch
        return batch

    def delete(self, messages: list[Message]) -> list[str]:
        self.invisible = [m for m in self.invisible if m not in messages]
        return []

    def change_visibility(self, messages: list[Message], seconds: int) -> list[str]:
        self.invisible = [m for m in self.invisible if m not in messages]
        self.visible += messages
        return []


class Clock:
    """Advances 10 ms per reading, so budgets end deterministically."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.01
        return self.now


def run(queue: MemoryQueue, dispatch, **kw):  # type: ignore[no-untyped-def]
    options = {"chunk_size": 25, "max_messages": 1000, "budget_seconds": 5, "visibility_timeout": 30}
    return sqs_fetch.fetch(queue, dispatch, clock=Clock(), **{**options, **kw})


def test_chunks_are_full_except_the_last_and_nothing_is_missed() -> None:
    queue, chunks = MemoryQueue(107), []
    report = run(queue, chunks.append)
    assert [len(c) for c in chunks] == [25, 25, 25, 25, 7]
    assert sorted(m.message_id for c in chunks for m in c) == sorted(f"m{i}" for i in range(107))
    assert report.received == 107


def test_long_polls_only_while_holding_nothing() -> None:
    queue = MemoryQueue(12)
    run(queue, lambda c: None)
    assert queue.waits[0] > 0  # nothing in hand: long poll
    assert queue.waits[1] == 0  # 10 in hand: do not keep them waiting
    assert queue.waits[2] == 0  # still 12 in hand (the dry receive): then flush


def test_stops_at_max_messages() -> None:
    queue, chunks = MemoryQueue(100), []
    report = run(queue, chunks.append, max_messages=30, chunk_size=50)
    assert report.received == 30 and [len(c) for c in chunks] == [30]
    assert len(queue.visible) == 70


def test_failed_dispatch_releases_messages_back_to_the_queue() -> None:
    queue = MemoryQueue(30)

    def broker_down(chunk: list[Message]) -> None:
        raise ConnectionError("redis down")

    with pytest.raises(ConnectionError):
        run(queue, broker_down)
    assert len(queue.visible) == 30 and queue.invisible == []


def test_pause_stops_before_a_new_chunk() -> None:
    queue, chunks = MemoryQueue(100), []
    calls = iter([None, None, "backpressure"])
    report = run(queue, chunks.append, chunk_size=10, pause=lambda: next(calls))
    assert report.stopped == "backpressure"
    assert [len(c) for c in chunks] == [10, 10] and len(queue.visible) == 80


class SlowQueue(MemoryQueue):
    """Records each visibility extension (seconds asked, when) and signals once ``until`` came."""

    def __init__(self, count: int, until: int = 0) -> None:
        super().__init__(count)
        self.extensions: list[int] = []
        self.times: list[float] = []
        self.until = until
        self.reached = threading.Event()

    def change_visibility(self, messages: list[Message], seconds: int) -> list[str]:
        self.extensions.append(seconds)
        self.times.append(time.monotonic())
        if len(self.extensions) >= self.until:
            self.reached.set()
        return []


def test_visibility_is_extended_while_work_is_in_progress() -> None:
    """The work inside ``kept_invisible`` lasts until the queue has seen three extensions (an
    event, not a sleep): they must come, every third of the timeout, and stop with the work."""
    queue = SlowQueue(3, until=3)
    messages = queue.receive(3)
    entered = time.monotonic()
    with sqs_fetch.kept_invisible(queue, messages, visibility_timeout=1):
        assert queue.reached.wait(30), f"only {len(queue.extensions)} extensions while the work ran"
    done = len(queue.extensions)
    assert not [t for t in threading.enumerate() if t.name == "etl-visibility"], "the keeper outlived the work"
    assert len(queue.extensions) == done and set(queue.extensions) == {1}
    # fresh messages are not extended at once, then once per third of the timeout (never faster)
    gaps = [b - a for a, b in zip([entered, *queue.times], queue.times, strict=False)]
    assert min(gaps) >= 1 / 3 - 0.05, gaps


def test_a_chunk_that_waited_long_is_extended_at_once() -> None:
    import dataclasses

    queue = SlowQueue(2)
    old = [dataclasses.replace(m, received_at=time.time() - 100) for m in queue.receive(2)]
    with sqs_fetch.kept_invisible(queue, old, visibility_timeout=120):
        pass
    assert queue.extensions == [120]


def test_chunks_are_bounded_by_bytes_and_an_oversized_body_travels_without_it() -> None:
    from etl.model import chunking

    queue, chunks = MemoryQueue(0), []
    queue.visible = [Message(f"m{i}", f"rh{i}", "x" * 40_000, 0) for i in range(30)]
    queue.visible.insert(5, Message("huge", "rh", "\U0001f600" * 300_000, 0))  # 1.2 MB: over SQS's 1 MiB
    report = run(queue, chunks.append, chunk_bytes=200_000)
    assert all(sum(chunking.weight(m) for m in c) + chunking.CHUNK_OVERHEAD <= 200_000 for c in chunks)
    sent = [m for c in chunks for m in c]
    assert sorted(m.message_id for m in sent) == sorted(["huge", *(f"m{i}" for i in range(30))])
    (stub,) = [m for m in sent if m.message_id == "huge"]
    assert stub.body == "" and stub.withheld is not None and stub.withheld.reason == "too_large"
    assert report.withheld == 1 and report.received == 31


def test_a_chunk_the_broker_refuses_loses_only_its_offender() -> None:
    queue, sent = MemoryQueue(20), []
    queue.visible[7] = Message("big", "rh-big", "y" * 100_000, 0)

    def small_broker(chunk: list[Message]) -> None:
        if any(len(m.body) > 70_000 for m in chunk):
            raise ConnectionError("Broken pipe")
        sent.extend(chunk)

    report = run(queue, small_broker, chunk_size=25)
    assert len(sent) == 20 and queue.visible == [] and report.withheld == 1
    assert [m.withheld.reason for m in sent if m.withheld] == ["broker_refused"]


def test_a_round_of_heavy_bodies_waits_for_room_before_each_further_chunk() -> None:
    queue, chunks = MemoryQueue(0), []
    queue.visible = [Message(f"m{i}", f"rh{i}", "x" * 300_000, 0) for i in range(10)]
    clock, slept = Clock(), []
    queued = lambda: len(chunks) - 2 * len(slept)  # noqa: E731  (the workers take two chunks per wait)

    def sleep(seconds: float) -> None:
        slept.append(seconds)

    seen: list[int] = []

    def dispatch(chunk: list[Message]) -> None:
        seen.append(queued())
        chunks.append(chunk)

    report = sqs_fetch.fetch(
        queue,
        dispatch,
        chunk_size=500,
        chunk_bytes=524_288,
        max_messages=10,
        budget_seconds=5,
        visibility_timeout=30,
        pause=lambda: "backpressure" if queued() >= 3 else None,
        clock=clock,
        sleep=sleep,
    )
    assert len(chunks) == 10 and report.received == 10  # one round of 10, each alone (300 KB bodies)
    assert slept and max(seen) < 3, str(seen)  # it waited for room instead of queueing all ten at once


class Trickle(MemoryQueue):
    """Messages arriving at ``rate`` per second of ``clock``; records what each round asks for."""

    def __init__(self, rate: float, clock: Clock) -> None:
        super().__init__(0)
        self.rate, self.clock, self.sent, self.asked = rate, clock, 0, []  # type: list[int]

    def receive(self, max_messages: int = 10, wait_seconds: int = 0, visibility_timeout: int = 120) -> list[Message]:
        self.asked.append(max_messages)
        due = int(self.clock.now * self.rate)
        self.visible += [Message(f"m{i}", f"rh{i}", "{}", 0) for i in range(self.sent, due)]
        self.sent = max(self.sent, due)
        return super().receive(max_messages, wait_seconds, visibility_timeout)


def trickle_run(linger: float, rate: float = 100) -> tuple[Trickle, list[list[Message]], sqs_fetch.FetchReport]:
    clock = Clock()
    queue, chunks = Trickle(rate, clock), []

    def sleep(seconds: float) -> None:
        clock.now += seconds

    report = sqs_fetch.fetch(
        queue, chunks.append, chunk_size=500, max_messages=10_000, budget_seconds=10, visibility_timeout=30,
        receive_batch=320, linger=linger, clock=clock, sleep=sleep,
    )  # fmt: skip
    return queue, chunks, report


def test_a_trickle_is_gathered_into_chunks_for_up_to_the_linger_in_rounds_sized_to_it() -> None:
    """100 messages/s for 10 s, chunks of up to 500: with a 0.5 s linger each chunk holds what
    arrived in about half a second, gathered in paced rounds of a call or two; without it, rounds
    follow each other as fast as they return, and a chunk that never sees an empty round waits
    until it is full (5 s at this rate)."""
    queue, chunks, report = trickle_run(0.5)
    sent = [m.message_id for c in chunks for m in c]
    assert sent == [f"m{i}" for i in range(len(sent))]  # each once, in order
    assert len(sent) == queue.sent >= 850  # all that arrived before the run ended (~9 s of 10)
    assert 15 <= len(chunks) <= 25 and min(len(c) for c in chunks[1:-1]) >= 30
    assert max(queue.asked[3:]) <= 40  # a round asks for about what arrives (~12 a round), not 320
    _, eager, eager_report = trickle_run(0)
    assert eager_report.receive_calls > 2 * report.receive_calls and len(eager[0]) == 500


def test_at_a_tenth_of_capacity_a_round_after_a_pause_asks_for_what_gathered_not_doubling_up_to_it() -> None:
    """1,000 messages/s with the default 1 s linger: after each pause a round asks for about what
    arrived meanwhile (the rate measured between rounds that drained the queue), where doubling
    up to it from a call or two ended in a round of mostly empty calls, a third of all receives."""
    queue, chunks, report = trickle_run(1.0, rate=1000)
    api_calls = sum(-(-n // 10) for n in queue.asked)
    assert report.received >= 9_000 and api_calls / report.received <= 0.13, (api_calls, report.received)
    sent = [m.message_id for c in chunks for m in c]
    assert sent == [f"m{i}" for i in range(len(sent))]  # each once, in order


class Latent(Trickle):
    """A Trickle whose every round takes ``latency`` seconds, as SQS's calls do (~15 ms): the
    messages that arrive meanwhile are there for the next round."""

    def __init__(self, rate: float, clock: Clock, latency: float = 0.016) -> None:
        super().__init__(rate, clock)
        self.latency, self.times = latency, []  # type: float, list[float]

    def receive(self, max_messages: int = 10, wait_seconds: int = 0, visibility_timeout: int = 120) -> list[Message]:
        got = super().receive(max_messages, wait_seconds, visibility_timeout)
        self.clock.now += self.latency
        self.times.append(self.clock.now)
        return got


def test_at_a_tenth_of_capacity_rounds_pause_for_messages_to_gather_instead_of_going_back_to_back() -> None:
    """1,000 messages/s, 16 ms a round: each round used to bring the ~15 messages that arrived
    during the last one, full of what it asked for, so none paused: ~50 rounds a second, each a
    wake-up of the process. A round that ran the queue dry now pauses (a quarter of the linger at
    most) and the next asks for what gathered: a few rounds a second, the same calls a message."""
    clock = Clock()
    queue, chunks = Latent(1000, clock), []  # type: Latent, list[list[Message]]
    report = sqs_fetch.fetch(
        queue, chunks.append, chunk_size=1000, max_messages=100_000, budget_seconds=20, visibility_timeout=30,
        receive_batch=320, linger=1.0, clock=clock, sleep=lambda s: setattr(clock, "now", clock.now + s),
    )  # fmt: skip
    seconds = queue.times[-1] - queue.times[0]
    assert report.receive_calls / seconds <= 8, (report.receive_calls, seconds)
    api_calls = sum(-(-n // 10) for n in queue.asked)
    assert api_calls / report.received <= 0.12, (api_calls, report.received)
    sent = [m.message_id for c in chunks for m in c]
    assert sent == [f"m{i}" for i in range(len(sent))] and len(sent) == queue.sent  # each once, in order, none left


@pytest.mark.parametrize("tick", [0.001, 0.0037, 0.01, 0.03, 0.07])
def test_a_pause_is_never_negative_whatever_time_passes_between_its_looks_at_the_clock(tick: float) -> None:
    """The linger can run out between the look that decides a chunk may still wait and the one
    that sizes the pause (an outside review): time.sleep raises on a negative length."""

    class Ticking(Clock):
        def __call__(self) -> float:
            self.now += tick
            return self.now

    clock = Ticking()

    def sleep(seconds: float) -> None:
        assert seconds >= 0, seconds
        clock.now += seconds

    queue = Latent(500, clock, latency=0.005)
    report = sqs_fetch.fetch(
        queue, lambda chunk: None, chunk_size=1000, max_messages=100_000, budget_seconds=10, visibility_timeout=30,
        receive_batch=320, linger=0.05, clock=clock, sleep=sleep,
    )  # fmt: skip
    assert report.received == queue.sent


def test_a_round_asks_for_twice_after_a_full_one_and_a_little_more_than_it_got_after_a_thin_one() -> None:
    assert sqs_fetch.next_round(10, 10, 320) == 20 and sqs_fetch.next_round(200, 200, 320) == 320
    assert sqs_fetch.next_round(320, 7, 320) == 10 and sqs_fetch.next_round(320, 0, 320) == 10
    assert sqs_fetch.next_round(320, 70, 320) == 90 and sqs_fetch.next_round(100, 85, 320) == 200


def test_a_queue_that_keeps_up_is_never_long_polled_nor_paced_between_full_rounds() -> None:
    """At saturation a chunk boundary can leave nothing in hand: that is no reason to long-poll
    (one call of 10, where a round asks for 320) nor to pace the next round as if thin: each was
    a stall of a quarter of the linger, every few rounds."""
    queue, chunks, slept = MemoryQueue(20_000), [], []
    report = sqs_fetch.fetch(
        queue, chunks.append, chunk_size=500, max_messages=16_000, budget_seconds=60, visibility_timeout=30,
        receive_batch=320, linger=1.0, clock=Clock(), sleep=slept.append,
    )  # fmt: skip
    assert report.received == 16_000 and [len(c) for c in chunks] == [500] * 32
    assert queue.waits[0] > 0 and not any(queue.waits[1:])  # only the first round long-polls
    assert slept == []


def test_a_burst_of_one_chunk_then_a_dry_queue_goes_back_to_long_polling() -> None:
    """A burst that ends on a chunk boundary: the round that came back short says the queue runs
    dry, so the empty hand long-polls (one call) instead of sending a full round of short polls
    (up to 32 calls) that all come back empty (an outside review's finding)."""

    class Counting(MemoryQueue):
        def __init__(self, count: int) -> None:
            super().__init__(count)
            self.rounds: list[tuple[int, int, int]] = []  # (wait, asked, got)

        def receive(
            self, max_messages: int = 10, wait_seconds: int = 0, visibility_timeout: int = 120
        ) -> list[Message]:
            got = super().receive(max_messages, wait_seconds, visibility_timeout)
            self.rounds.append((wait_seconds, max_messages, len(got)))
            return got

    # rounds of 320 (the long poll: this queue answers it whole), 20, 40, 80, then 100 of 160: short
    queue, chunks = Counting(560), []
    sqs_fetch.fetch(
        queue, chunks.append, chunk_size=560, max_messages=10_000, budget_seconds=5, visibility_timeout=30,
        receive_batch=320, linger=1.0, clock=Clock(), sleep=lambda s: None,
    )  # fmt: skip
    assert [len(c) for c in chunks] == [560] and queue.rounds[4] == (0, 160, 100)
    assert not [r for r in queue.rounds if r[0] == 0 and r[2] == 0]  # no short-poll round came back empty


class OneAtATime(MemoryQueue):
    """A queue that hands out one message a call."""

    def receive(self, max_messages: int = 10, wait_seconds: int = 0, visibility_timeout: int = 120) -> list[Message]:
        return super().receive(1, wait_seconds, visibility_timeout)


@pytest.mark.parametrize(
    ("body", "chunk_bytes", "sizes", "after"),
    [
        ("{}", 524_288, [5] * 6, [5, 10, 15, 20, 25, 30]),
        ("x" * 60_000, 200_000, [3] * 10, [4, 7, 10, 13, 16, 19, 22, 25, 28]),
    ],
)
def test_a_chunk_held_over_many_thin_rounds_leaves_as_soon_as_it_is_full_by_count_or_bytes(
    body: str, chunk_bytes: int, sizes: list[int], after: list[int]
) -> None:
    """The fetch keeps the weight of what it holds as rounds add to it (it does not re-weigh it all
    each round): a chunk still leaves at the round that fills it, by count (the 5th message) or
    by bytes (the 4th, which would not fit beside the other 3)."""
    from etl.model import chunking

    queue, chunks, rounds = OneAtATime(0), [], []

    def dispatch(chunk: list[Message]) -> None:
        chunks.append(chunk)
        rounds.append(len(queue.waits))  # receive calls made when the chunk left

    queue.visible = [Message(f"m{i}", f"rh{i}", body, 0) for i in range(sum(sizes))]
    run(queue, dispatch, chunk_size=5, chunk_bytes=chunk_bytes, linger=1000.0, sleep=lambda s: None)
    assert [len(c) for c in chunks] == sizes
    assert rounds[: len(after)] == after
    assert [m.message_id for c in chunks for m in c] == [f"m{i}" for i in range(sum(sizes))]
    assert all(sum(map(chunking.weight, c)) + chunking.CHUNK_OVERHEAD <= chunk_bytes for c in chunks)
