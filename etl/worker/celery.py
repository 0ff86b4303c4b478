"""Builds the Celery app from the top-level celeryconfig module (read lazily, on first use of
``app.conf``); no I/O, no settings read and no library patched at import. A starting worker
patches kombu (``survive_broker_loss``, on Celery's worker_init signal) and tunes Python's
garbage collector (``tune_gc``, in the worker and in each pool process as it starts, and
``collect_after_failure``, after a task attempt that did not succeed)."""

import functools
import gc
import logging
from typing import Any

from celery import Celery
from celery.signals import task_postrun, worker_init, worker_process_init
from kombu.transport import redis as kombu_redis


def survive_broker_loss(**_: Any) -> None:
    """Keep a worker alive when Redis goes away while it holds unacknowledged chunks.

    kombu 5.7 closes the lost connection and then tries to put the worker's unacknowledged
    messages back through it; with the transport already released that raises AttributeError,
    which Celery treats as unrecoverable, and the worker stops consuming for good (seen in our
    Redis-restart tests). Those messages are not ours to rescue there: with Redis gone they are
    gone, and a chunk's records are still in SQS (redelivered after the visibility timeout) or in
    the stream (read again from the checkpoint). So the failed restore is logged and the worker
    reconnects as it does when nothing was unacknowledged.

    Applied once per process (a second call finds it applied); the pool's processes inherit it.
    """
    restore = kombu_redis.QoS.restore_unacked
    if getattr(restore, "etl_survives_broker_loss", False):
        return

    @functools.wraps(restore)
    def restore_unacked(self: Any, client: Any = None) -> Any:
        try:
            return restore(self, client)  # type: ignore[no-untyped-call]
        except AttributeError:
            logging.getLogger("etl.celery").warning(
                "broker lost with %d chunks unacknowledged; their messages come back from SQS or the stream",
                len(getattr(self, "_delivered", ())),
            )
            self._delivered.clear()
            return None

    restore_unacked.etl_survives_broker_loss = True  # type: ignore[attr-defined]
    kombu_redis.QoS.restore_unacked = restore_unacked  # type: ignore[method-assign]


# Net new container objects (allocations minus frees) that start a young-generation collection;
# Python's default is 700.
GC_THRESHOLD = 10_000


def tune_gc(**_: Any) -> None:
    """Fewer, cheaper garbage collections in a worker (docs/performance.md, "Garbage collection").

    A chunk of a thousand messages keeps tens of thousands of small objects alive while it is
    parsed and written, so at Python's default threshold (700) a pool process ran a collection
    every few hundred messages, and each of those objects was traversed again as it was promoted:
    a full collection of a pool process took ~70 ms, and collections were ~9% of the worker's CPU at
    full load. The threshold counts allocations net of frees, and an object freed by reference
    counting (nearly all of ours) cancels its own allocation: at 10,000 a collection still comes
    when reference cycles pile up, at most a few megabytes apart.

    ``gc.freeze()`` moves what start-up made (modules, the app, its tasks) to the permanent
    generation: collections no longer traverse it, and pool processes forked after it do not
    write to those pages (copy-on-write stays shared). Called on worker_init, before the pool
    forks (the processes inherit the threshold and the frozen objects), and on
    worker_process_init, for what each process made while starting. A collection first, so that
    no garbage already made (a reference cycle the parent left behind) is frozen with them."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


def collect_after_failure(state: str | None = None, **_: Any) -> None:
    """After a task attempt that did not succeed (retried, failed, rejected), a collection of the
    two younger generations (cheap: they hold what was made since the last one). An exception's
    traceback is a reference cycle holding the attempt's frames and, through them, its chunk; at
    ``GC_THRESHOLD`` such cycles would wait for 10,000 net new containers (an outside review: 256
    KiB one-message chunks failing while Postgres was down held ~80 MB of them)."""
    if state != "SUCCESS":
        gc.collect(1)


app = Celery("etl")
app.config_from_object("celeryconfig")
# Importing the task modules registers etl.fetch and etl.mask_and_write (SQS), and
# etl.fetch_stream and etl.mask_and_write_stream (Kinesis), with the app.
app.conf.imports = ("etl.worker.tasks", "etl.worker.stream_tasks")
# Before the worker connects to the broker and forks its pool.
worker_init.connect(survive_broker_loss, weak=False)
worker_init.connect(tune_gc, weak=False)
worker_process_init.connect(tune_gc, weak=False)
task_postrun.connect(collect_after_failure, weak=False)
