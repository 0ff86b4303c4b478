"""The SQS fetch loop and chunk processing, written against a narrow interface (no Celery here).

* ``fetch``: pull SQS batches for a bounded time and hand them on in chunks, pausing when the
  broker already holds enough work (backpressure) or the worker is shutting down.
* ``process_chunk``: transform a chunk, write it in one transaction (etl.load), and only after
  the commit delete its messages from SQS, keeping them invisible in SQS while the work is in
  progress.

Both take their I/O objects as arguments, so tests hand in real ones and the Celery tasks stay
thin wrappers that only wire settings to these functions.
"""

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from etl import store
from etl.crypto.masking import Masker
from etl.crypto.sealing import Sealer
from etl.crypto.vault import Vault
from etl.load import ChunkReport, chunk_report, write
from etl.model import chunking
from etl.model.records import Message

log = logging.getLogger("etl.pipeline")


class MessageSource(Protocol):
    def receive(
        self, max_messages: int = 10, wait_seconds: int = 0, visibility_timeout: int = 120
    ) -> list[Message]: ...
    def delete(self, messages: list[Message]) -> list[str]: ...
    def change_visibility(self, messages: list[Message], seconds: int) -> list[str]: ...


ROOM_POLL = 0.2  # seconds between looks at the broker while a fetch waits for room
PACE = 0.25  # after a round that ran the queue dry, a lingering fetch pauses up to this share of its linger
FULL = 0.8  # a round that brought this share of what it asked for is full (next_round doubles after it)


@dataclass(frozen=True)
class FetchReport:
    received: int
    chunks: int
    receive_calls: int
    seconds: float
    stopped: str  # why the run ended: budget, max_messages, or what ``pause`` said
    withheld: int = 0  # messages handed on without their body (too_large, broker_refused)


def fetch(
    source: MessageSource,
    dispatch: Callable[[list[Message]], None],
    *,
    chunk_size: int,
    chunk_bytes: int = chunking.DEFAULT_CHUNK_BYTES,
    max_messages: int,
    budget_seconds: float,
    visibility_timeout: int,
    receive_batch: int = 10,
    linger: float = 0.0,
    pause: Callable[[], str | None] = lambda: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchReport:
    """Receive for up to ``budget_seconds`` (or ``max_messages``), dispatching full chunks.

    A chunk holds at most ``chunk_size`` messages and ``chunk_bytes`` broker bytes (a heavier
    message travels alone); a body over the source's maximum travels without its body, to be
    rejected as ``too_large`` (etl.model.chunking).

    Each round asks the source for up to ``receive_batch`` messages (the SQS module spreads that
    over concurrent calls); a round sized to what is arriving (``next_round``): after a thin round
    the next one asks for a little more than it got, after a full one for twice as much, so a
    trickle costs one call a round, not one per thread. Long-polls only while holding nothing
    after a round that was not full (at saturation a chunk boundary empties the hand too; after
    a burst, a round that came back short says the queue is running dry).

    A partial chunk is handed on once it has waited ``linger`` seconds for company (from its
    first message). With a linger, a round that came back short (it ran the queue dry) is
    followed by a pause, so that messages gather between rounds instead of rounds being spent
    on a few each: up to ``PACE`` of the linger, or until what one round takes (or what the
    chunk still has room for) has likely arrived at the rate measured (``Arrivals``); the round
    after it asks for that and one call more. At a tenth of capacity rounds went back to back
    (each brought the ~15 messages that arrived during its own call) and every one of those
    ~60 rounds a second woke the process. With ``linger=0`` a partial chunk goes as soon as the
    queue runs dry.

    Before starting each new chunk it asks ``pause`` (backpressure, shutdown); a reason stops
    the run; a round that makes several chunks (large bodies: cut by bytes) waits before each
    further one while ``pause`` says "backpressure", up to the run's budget, so the broker's
    bound holds whatever the bodies weigh. A chunk the broker refuses is split and tried again,
    down to a single message rejected on its own (``broker_refused``); if the broker is down, the
    messages not handed on are made visible again at once instead of waiting out their
    visibility timeout.
    """
    started = clock()
    deadline = started + budget_seconds
    pending: list[Message] = []
    weights: list[int] = []  # chunking.weight of each message of ``pending``: each is weighed once
    held = chunking.CHUNK_OVERHEAD  # estimated broker bytes of ``pending`` as one chunk, kept as it grows
    held_since = started  # when the oldest message of ``pending`` was received
    asking = receive_batch  # messages the next round asks for
    full = False  # the last round came back (nearly) full: the next one does not long-poll
    received = chunks = calls = withheld = 0
    stopped = "max_messages"
    arrivals = Arrivals()
    paused = False  # the loop paused after the last round, for messages to gather

    def send(chunk: list[Message]) -> None:
        nonlocal chunks, withheld
        try:
            refused = chunking.deliver(chunk, dispatch)
        except chunking.Undelivered as exc:
            log.warning("dispatch failed (%s); releasing %d messages back to SQS", exc, len(exc.left))
            release(source, exc.left)
            raise exc.cause from None
        if refused:
            log.warning("the broker refused %d messages on their own; rejected as broker_refused", len(refused))
        withheld += len(refused) + sum(1 for m in chunk if m.withheld is not None)
        chunks += 1

    def room() -> None:
        """Wait while the broker holds enough chunks (held messages stay invisible meanwhile)."""
        while clock() < deadline and pause() == "backpressure":
            sleep(ROOM_POLL)

    try:
        while received < max_messages:
            remaining = deadline - clock()
            if remaining <= 0:
                stopped = pause() or "budget"  # a broker still full at the deadline: say so (no successor is queued)
                break
            if not pending:
                reason = pause()
                if reason:
                    stopped = reason
                    break
            wait = 0
            if not pending and not full:  # nothing in hand and the last round was not full: long-poll
                wait = math.floor(remaining)
                if wait == 0:
                    stopped = "budget"
                    break  # under a second left and nothing in hand: a last short poll is waste
            sent_at = clock()
            if paused and not wait:  # after a pause: ask for what likely gathered meanwhile
                asking = arrivals.size(asking, sent_at, receive_batch)
            paused = False
            asked = min(asking, max_messages - received)
            batch = source.receive(max_messages=asked, wait_seconds=wait, visibility_timeout=visibility_timeout)
            calls += 1
            received += len(batch)
            could = min(asked, 10) if wait else asked  # a long poll is one call
            asking = next_round(could, len(batch), receive_batch)
            full = len(batch) >= FULL * could  # the queue kept up: no long poll next, even with an empty hand
            # came back short: the queue ran dry (as it stood when the round went out; a long poll's when it answered)
            arrivals.saw(len(batch), len(batch) < could, clock() if wait else sent_at)
            if batch and not pending:
                held_since = clock()
            screened = chunking.screen(batch)
            weighed = [chunking.weight(m) for m in screened]
            pending.extend(screened)
            weights.extend(weighed)
            held += sum(weighed)
            ready = []
            if len(pending) >= chunk_size or held > chunk_bytes:  # else all of it is one partial chunk
                # (cut only then: a trickle re-weighing all it holds every round cost ~4 µs a message)
                ready = chunking.cut(pending, chunk_size, chunk_bytes, weights)
                if ready and len(ready[-1]) < chunk_size:
                    ready.pop()  # not full yet (a full one by bytes was cut before its next message)
            for n, chunk in enumerate(ready):
                if n:
                    room()
                pending, weights = pending[len(chunk) :], weights[len(chunk) :]
                send(chunk)
            if ready:
                held = chunking.CHUNK_OVERHEAD + sum(weights)
            if ready and pending:
                held_since = clock()  # what is left came with this round
            if pending and ((linger > 0 and clock() - held_since >= linger) or (linger == 0 and not batch)):
                room()
                chunk, pending, weights, held = pending, [], [], chunking.CHUNK_OVERHEAD
                send(chunk)  # it waited long enough for company (or the queue ran dry)
            if linger > 0 and len(batch) < could and (pending or full):
                # The round came back short, the queue ran dry: let messages gather before the next
                # round (at a tenth of capacity, rounds back to back took ~15 each, 60 rounds a
                # second), for a share of the linger or until a chunk's worth has likely come. (An
                # empty hand after a round that was not full long-polls instead: it waits anyway.)
                waited = clock() - held_since if pending else 0.0
                room_left = room_for(len(pending), held, chunk_size, chunk_bytes)
                fill = arrivals.seconds_for(min(room_left, int(FULL * receive_batch)), clock())  # one round takes it
                # (never below 0: the linger may have run out since the look above, one clock read ago)
                sleep(max(0.0, min(PACE * linger, linger - waited, fill, deadline - clock())))
                paused = True
    except BaseException:
        for chunk in chunking.cut(pending, chunk_size, chunk_bytes):
            send(chunk)  # hand on what is held, then fail (the broker may be what failed)
        raise
    for chunk in chunking.cut(pending, chunk_size, chunk_bytes):
        room()
        send(chunk)
    return FetchReport(received, chunks, calls, clock() - started, stopped, withheld)


class Arrivals:
    """How fast messages arrive, as the rounds see it: what came in between two rounds that
    found the queue drained (came back short), over the time between them. Sizes the round after a pause to what
    has likely gathered since, instead of doubling up to it from a call or two (whose last
    doubling was a round of mostly empty calls: at a tenth of capacity a third of all receives)."""

    def __init__(self) -> None:
        self.drained_at: float | None = None  # when a round last found the queue drained
        self.since = 0  # messages received since then
        self.rate: float | None = None  # messages a second between the last two drained rounds

    def saw(self, got: int, drained: bool, now: float) -> None:
        self.since += got
        if drained:
            if self.drained_at is not None and now > self.drained_at:
                self.rate = self.since / (now - self.drained_at)
            self.drained_at, self.since = now, 0

    def expected(self, now: float) -> float:
        """Messages likely to have arrived since the queue was last drained (0 unknown)."""
        return self.rate * (now - self.drained_at) if self.rate and self.drained_at is not None else 0.0

    def steady(self, now: float) -> bool:
        """Whether the rate is known and still holds: no clearly more came than it expected."""
        return self.rate is not None and self.drained_at is not None and self.since <= self.expected(now) * 1.25 + 20

    def seconds_for(self, count: int, now: float) -> float:
        """How long until ``count`` messages not yet received have likely arrived (inf unknown)."""
        if not self.rate or self.drained_at is None:
            return math.inf
        return max(0.0, (count + self.since) / self.rate - (now - self.drained_at))

    def size(self, asking: int, now: float, most: int) -> int:
        """Messages the next round asks for: what has likely gathered since the queue was last
        drained and not yet received, and one call more (whole calls of 10, at most ``most``):
        a round that comes back short says the estimate held (the queue ran dry), one that comes
        back full says more came. ``asking`` (``next_round``'s) without an estimate, or once
        clearly more came than it expected (the rate went up: doubling finds it)."""
        if not self.steady(now):
            return asking
        left = max(0, int(self.expected(now)) - self.since)
        return min(most, max(10, -(-(left + 10) // 10) * 10))


def room_for(count: int, held: int, chunk_size: int, chunk_bytes: int) -> int:
    """Messages a partial chunk of ``count`` messages and ``held`` broker bytes can still take, by
    count and by its messages' average weight."""
    room = chunk_size - count
    if count and held > chunking.CHUNK_OVERHEAD:
        room = min(room, int((chunk_bytes - held) * count / (held - chunking.CHUNK_OVERHEAD)))
    return max(1, room)


def next_round(asked: int, got: int, most: int) -> int:
    """Messages the next receive round asks for: twice as many after a (nearly) full round, up to
    ``most``; after a thin one a little more than it got (whole calls of 10), at least one call."""
    if got >= asked * FULL:
        return min(most, max(asked * 2, 10))
    return min(most, max(10, -(-(got + got // 4 + 1) // 10) * 10))


def release(source: MessageSource, messages: list[Message]) -> None:
    """Make messages visible again now (work we will not do), best effort."""
    try:
        source.change_visibility(messages, 0)
    except Exception:
        log.warning("releasing %d messages failed; they return after their visibility timeout", len(messages))


@contextmanager
def kept_invisible(source: MessageSource, messages: list[Message], visibility_timeout: int) -> Iterator[None]:
    """While the body runs, keep ``messages`` hidden in SQS by extending their visibility.

    A chunk that waited long in the broker is extended at once if less than half its visibility
    is left; then every third of the timeout, so a slow write (a lock, a busy server) never lets
    the messages reappear and be processed twice in parallel.
    """
    oldest = min((m.received_at for m in messages if m.received_at), default=time.time())
    if time.time() - oldest > visibility_timeout / 2:
        extend(source, messages, visibility_timeout)
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(visibility_timeout / 3):
            extend(source, messages, visibility_timeout)

    keeper = threading.Thread(target=keep, name="etl-visibility", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()


def extend(source: MessageSource, messages: list[Message], seconds: int) -> None:
    try:
        failed = source.change_visibility(messages, seconds)
    except Exception as exc:
        log.warning("extending visibility of %d messages failed: %s", len(messages), exc)
        return
    if failed:
        log.info("%d messages could not be extended (already redelivered or deleted)", len(failed))


def process_chunk(
    messages: list[Message],
    *,
    masker: Masker,
    sealer: Sealer,
    conn: store.Connection,
    source: MessageSource,
    visibility_timeout: int = 120,
    label: str = "",
    vault: Vault | None = None,
) -> ChunkReport:
    """Transform, write in one transaction, commit, then delete from SQS.

    A crash anywhere before the delete leaves the messages in SQS; their redelivery finds the
    rows already written (ON CONFLICT on message_id) and only deletes them.
    """
    started = time.monotonic()
    with kept_invisible(source, messages, visibility_timeout):
        written = write(messages, masker=masker, sealer=sealer, conn=conn, label=label, vault=vault)
        write_seconds = time.monotonic() - started
        not_deleted = source.delete(messages)
    report = chunk_report(messages, written, not_deleted, started, write_seconds, label)
    if not_deleted:
        log.warning(
            "chunk %s: SQS did not delete %d messages; they will be redelivered and skipped as already written",
            label,
            len(not_deleted),
        )
    return report
