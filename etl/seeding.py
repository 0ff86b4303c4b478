"""Putting events on the queue: from a file or the generator, in steps that report progress."""

from pathlib import Path

from etl import samples, sqs
from etl.progress import Progress

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
