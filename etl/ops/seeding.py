"""Putting events on the queue or stream: from a file or the generator, reporting progress."""

import json
from collections.abc import Callable
from pathlib import Path

from etl import settings, store
from etl.crypto.sealing import Sealer
from etl.ops import samples
from etl.progress import Progress
from etl.sources.kinesis import stream as kinesis
from etl.sources.sqs import queue as sqs
from etl.store import streams

SEND_STEP = 100  # messages per progress step


def bodies(file: Path | None, count: int, seed: int) -> list[str]:
    """The bodies of ``file`` (JSON array, JSON lines, .gz of either), or ``count`` generated ones."""
    return samples.read_bodies(file) if file else samples.generate(count, seed=seed)


def send(queue: sqs.Queue, bodies: list[str], progress: Progress) -> list[str]:
    """Send ``bodies``; return their MessageIds in order."""
    progress.start(len(bodies), "seeding")
    ids: list[str] = []
    for start in range(0, len(bodies), SEND_STEP):
        step = bodies[start : start + SEND_STEP]
        ids += queue.send(step)
        progress.advance(len(step))
    return ids


def partition_key(body: str) -> str:
    """A record's partition key: its user_id, so one user's events stay in order on one shard
    (a body that is not an object with a string user_id goes under "-")."""
    try:
        event = json.loads(body)
    except ValueError:
        return "-"
    user = event.get("user_id") if isinstance(event, dict) else None
    return user[:256] if isinstance(user, str) and user else "-"


def put(stream: kinesis.Stream, bodies: list[str], progress: Progress) -> list[str]:
    """Put ``bodies`` on the stream (PutRecords, partitioned by user_id); return their message ids."""
    progress.start(len(bodies), "seeding")
    done = 0

    def advance(total: int) -> None:
        nonlocal done
        progress.advance(total - done)
        done = total

    return stream.put([(partition_key(b), b) for b in bodies], advance)


def replay_rejected(
    s: settings.Settings,
    conn: store.Connection,
    reason: str | None,
    limit: int | None,
    progress: Callable[[int], None] = lambda n: None,
) -> tuple[int, str]:
    """Send rejected bodies back to where the pipeline reads (the queue, or the stream with
    ETL_SOURCE=kinesis), each replay recorded; returns (how many, where to)."""
    sealer = Sealer(list(s.payload_keys))
    send: Callable[[list[str]], list[str]]
    if s.source == "kinesis":
        stream = kinesis.Stream(s.kinesis_stream_name)
        target = stream.name
        life = streams.current_incarnation(conn, stream.name)
        stream.key = life.key if life else stream.name  # replays are recorded under the ids they will have

        def send(bodies: list[str]) -> list[str]:
            return stream.put([(partition_key(b), b) for b in bodies])
    else:
        send, target = sqs.Queue(s.sqs_queue_url).send, s.sqs_queue_url
    replayed = 0
    while limit is None or replayed < limit:
        step = SEND_STEP if limit is None else min(SEND_STEP, limit - replayed)
        sent = store.replay_batch(
            conn, reason, step, lambda sealed: send([sealer.open(b).decode("utf-8", "surrogatepass") for b in sealed])
        )
        if not sent:
            break
        replayed += sent
        progress(replayed)
    return replayed, target
