"""Kinesis shards as the pipeline sees them (pure: no boto3, no database, no clock of its own).

* ``Shard`` and ``Checkpoint``: what ListShards says, and what Postgres says was committed.
* ``readable``: the shards a fetch may read now. A child of a split or merge is read only after
  every parent still in the stream is finished, so a user's events keep their order.
* ``Pointer`` and ``resume``: where a fetch continues. The pointer (in Redis) runs ahead of the
  checkpoint (in Postgres) by the chunks in flight; when the checkpoint has not moved for the
  redelivery timeout while chunks are in flight, one of them was lost (a broker restart, a
  chunk out of retries) and the shard is read again from the checkpoint.
* ``Position``: the contiguous range of one shard a chunk covers. Every record with
  ``after < sequence number <= last`` is in the chunk; the checkpoint advances over a committed
  range only when the range starts at or before it, so it never passes an uncommitted record.

``Batch``, ``IteratorExpired`` and ``Throttled`` are what a shard reader (etl.sources.kinesis.stream) returns
and raises, so the fetch loop (etl.sources.kinesis.fetch) never imports the driver.

Sequence numbers are decimal strings (up to 128 digits), compared as integers; "0" is the
position before a shard's first record.

A position is a sequence number, or ``<seq>/<sub>`` inside an aggregated record (etl.model.kpl):
"through user record ``sub`` of record ``seq``, not the rest of it" (a chunk may end there). A
position on the last user record of an aggregate is the record's plain sequence number: the
record is done. ``key`` orders them: ``seq * SUB_SCALE``, and ``(seq - 1) * SUB_SCALE + sub + 1``
inside a record, i.e. between the record before it and the record itself whatever their
numbers. Postgres keeps the same order as numeric ``key / SUB_SCALE`` (``to_db``, ``from_db``),
so positions written before aggregates existed keep their values.
"""

from dataclasses import dataclass

from etl.errors import TransientError
from etl.model.records import Message

START = "0"  # the position before a shard's first record
SUB_SCALE = 10_000_000  # above any sub-sequence number (a 1 MiB record holds < 200,000 user records)
_DB_SCALE_DIGITS = 7


@dataclass(frozen=True)
class Shard:
    shard_id: str
    parents: tuple[str, ...] = ()
    ending: str | None = None  # EndingSequenceNumber: set once the shard is closed (split, merge)


@dataclass(frozen=True)
class Checkpoint:
    seq: str  # last position whose effect is committed (START: none yet)
    moved_at: float  # unix time it last moved (or the shard was first seen)
    end: str | None = None  # the last sequence number of a closed shard, once a fetch read to its end
    start_at: float | None = None  # ETL_KINESIS_START=latest: with no checkpoint, read from this time


@dataclass(frozen=True)
class Pointer:
    seq: str  # the last position handed on as a chunk
    pending_since: float | None = None  # unix time of the first chunk handed on past the checkpoint


@dataclass(frozen=True)
class Position:
    stream: str
    shard_id: str
    after: str
    last: str

    def as_dict(self) -> dict[str, str]:
        return {"stream": self.stream, "shard_id": self.shard_id, "after": self.after, "last": self.last}


@dataclass(frozen=True)
class Incarnation:
    """One life of a stream name: a stream deleted and re-created under it is a new incarnation
    (its StreamCreationTimestamp differs), read from its start under a key of its own."""

    name: str
    created_at: float  # StreamCreationTimestamp, unix time
    ordinal: int  # 1 for the first one this database saw under the name, then 2, 3, ...
    new: bool = False  # recorded by this call: the pipeline had not seen it before
    previous_created_at: float | None = None  # the incarnation before it, if any

    @property
    def key(self) -> str:
        """What checkpoints, ranges, read pointers and message ids name the stream by: the plain
        name for the first incarnation (what they were before incarnations were told apart)."""
        return incarnation_key(self.name, self.ordinal)


def incarnation_key(name: str, ordinal: int) -> str:
    return name if ordinal == 1 else f"{name}~{ordinal}"


def message_id(stream: str, shard_id: str, seq: str, sub: int | None = None) -> str:
    """The idempotency key of a stream record: ``<stream>/<shard id>/<sequence number>``, and
    ``/<sub-sequence number>`` for a user record of an aggregated record."""
    return f"{stream}/{shard_id}/{seq}" if sub is None else f"{stream}/{shard_id}/{seq}/{sub}"


def position(seq: str, sub: int, count: int) -> str:
    """The position through user record ``sub`` of the ``count`` in aggregated record ``seq``."""
    return seq if sub == count - 1 else f"{seq}/{sub}"


def key(pos: str) -> int:
    """A position's place in its shard's order (see the module's docstring)."""
    seq, _, sub = pos.partition("/")
    return int(seq) * SUB_SCALE if not sub else (int(seq) - 1) * SUB_SCALE + int(sub) + 1


def is_position(text: str) -> bool:
    seq, slash, sub = text.partition("/")
    return seq.isdigit() and (not slash or (sub.isdigit() and int(sub) + 1 < SUB_SCALE and int(seq) > 0))


def to_db(pos: str) -> str:
    """A position as Postgres keeps it (numeric): ``key / SUB_SCALE``, exactly."""
    whole, frac = divmod(key(pos), SUB_SCALE)
    return str(whole) if not frac else f"{whole}.{frac:0{_DB_SCALE_DIGITS}d}"


def from_db(text: str) -> str:
    """The position Postgres' numeric text stands for (``to_db``'s inverse)."""
    whole, _, frac = text.partition(".")
    sub = int(frac.ljust(_DB_SCALE_DIGITS, "0")[:_DB_SCALE_DIGITS]) if frac.strip("0") else 0
    return str(int(whole)) if not sub else f"{int(whole) + 1}/{sub - 1}"


def after(messages: list[Message], pos: str) -> list[Message]:
    """The messages past position ``pos`` (a read that restarted inside an aggregated record
    gets the whole record again; the user records already handed on are dropped)."""
    if "/" not in pos:
        return messages
    k = key(pos)
    return [m for m in messages if key(m.receipt_handle) > k]


def finished(shard: Shard, checkpoint: Checkpoint | None) -> bool:
    """A closed shard whose every record is committed."""
    if checkpoint is None:
        return False
    ends = [e for e in (checkpoint.end, shard.ending) if e is not None]
    return any(key(checkpoint.seq) >= key(e) for e in ends)


def readable(shards: list[Shard], checkpoints: dict[str, Checkpoint]) -> list[Shard]:
    """Shards not finished whose parents (those still listed) are all finished."""
    listed = {s.shard_id: s for s in shards}
    done = {s.shard_id for s in shards if finished(s, checkpoints.get(s.shard_id))}
    return [s for s in shards if s.shard_id not in done and all(p in done or p not in listed for p in s.parents if p)]


def at_end(shard: Shard, pointer: Pointer, next_iterator: str | None) -> bool:
    """Has a read reached the end of a closed shard (no next iterator, or past its last number)?

    Only a shard ListShards called closed can end: an open one's read without a next iterator is
    an answer not as documented (or the shard closed since it was listed), and taken as the end it
    would finish the shard for good. Its reader takes a fresh iterator from the pointer instead,
    and the next listing tells a real end."""
    if shard.ending is None:
        return False
    return next_iterator is None or key(pointer.seq) >= key(shard.ending)


def resume(checkpoint: Checkpoint, pointer: Pointer | None, now: float, redeliver_after: float) -> tuple[Pointer, bool]:
    """Where to read on from, and whether that is a re-read of chunks presumed lost.

    Continue at the pointer while its chunks can still commit; fall back to the checkpoint when
    there is no pointer (Redis lost it), it is behind the checkpoint, or the checkpoint has been
    stuck for ``redeliver_after`` seconds with chunks in flight.
    """
    if pointer is None or key(pointer.seq) <= key(checkpoint.seq):
        return Pointer(checkpoint.seq), False
    stuck_since = max(checkpoint.moved_at, pointer.pending_since or 0.0)
    if now - stuck_since > redeliver_after:
        return Pointer(checkpoint.seq), True
    return pointer, False


def advance(checkpoint: str, ranges: list[tuple[str, str]]) -> str:
    """The checkpoint after the committed ``ranges`` (after, last): over every range that starts
    at or before it, as far as they reach. (The database does the same inside the write.)"""
    current, at = key(checkpoint), checkpoint
    moved = True
    while moved:
        moved = False
        for start, last in ranges:
            if key(start) <= current < key(last):
                current, at, moved = key(last), last, True
    return at


@dataclass(frozen=True)
class Batch:
    """What one read of a shard returned."""

    messages: list[Message]
    next_iterator: str | None  # None: a closed shard read to its end
    behind_ms: int | None  # MillisBehindLatest: how far this read is behind the shard's tip


class IteratorExpired(TransientError):
    """The shard iterator is older than 5 minutes: get a new one from the pointer."""


class Throttled(TransientError):
    """The shard's read (5 calls/s, 2 MB/s) or write limit was hit: back off."""
