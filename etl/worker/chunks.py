"""What the SQS and the stream tasks share: the chunk task base and the worker's signals.

* ``ChunkTask`` and ``CHUNK_TASK_OPTIONS``: how every chunk task runs (acked late, transient
  failures retried with backoff, a retry keeps the PII-free argsrepr);
* ``hand_on``, ``open_chunk``, ``chunk_attempt`` and ``committed``: publishing a sealed chunk
  (its ciphertext kept in Redis under a key of its own, the task carrying the key), opening it (an
  expired or vanished one is dropped), one attempt at it, and what follows its commit;
* ``pause`` and ``shutting_down``: when a fetch stops handing chunks on (backpressure, SIGTERM);
  ``request_fetch_if_starving``: a fetch now, when the broker runs low;
* the argsrepr guard (``before_task_publish``) and the worker's signals: refuse to start without
  keys, JSON logs, the metrics endpoint.

The task modules (etl.worker.tasks, etl.worker.stream_tasks) hold only their source's wiring.
"""

import logging
import multiprocessing
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    before_task_publish,
    worker_init,
    worker_ready,
    worker_shutting_down,
)

from etl import load, logs, settings, store
from etl.crypto import sealing
from etl.errors import ConfigError, Expired, TerminalError, TransientError
from etl.model import latency, records
from etl.model.records import Message
from etl.sources.kinesis.fetch import stream_key
from etl.worker import metrics, runtime
from etl.worker.celery import app
from etl.worker.coordination import CHUNKS, Coordinator

log = logging.getLogger("etl.tasks")
QUEUE = "etl"  # celeryconfig.task_default_queue
MASK_AND_WRITE = "etl.mask_and_write"  # etl.worker.tasks
MASK_AND_WRITE_STREAM = "etl.mask_and_write_stream"  # etl.worker.stream_tasks
CHUNK_TASKS = (MASK_AND_WRITE, MASK_AND_WRITE_STREAM)
SEALED = "<sealed chunk>"  # argsrepr of a chunk whose size is not known where it is published
_OURS = re.compile(r"<sealed chunk( of \d+ messages)?>")
# Made here, in the worker's main process before it forks its pool: a threading.Event would be
# set in the main process only, never seen by the fetch running in a pool process.
shutting_down = multiprocessing.Event()


@worker_init.connect
def _refuse_to_start_without_keys(**_: Any) -> None:
    """A worker without its secrets, or whose login may not write, would fail every chunk:
    refuse to start, and say why (an unreachable database is only a warning: it may come later).

    Also readies the metrics directory before the pool forks, and makes the instruments there so
    that every counter is served (at zero) from the start; pool processes inherit them."""
    try:
        rt = runtime.get()
        warning = runtime.check_database(rt.settings)
    except ConfigError as exc:
        print(f"etl worker: {exc}", file=sys.stderr)
        sys.exit(2)
    for line in [warning, *settings.contradictions(rt.settings)]:
        if line:
            print(f"etl worker: warning: {line}", file=sys.stderr, flush=True)
    metrics.prepare(rt.settings.metrics_dir)
    metrics.instruments()


@after_setup_logger.connect
@after_setup_task_logger.connect
def setup_logs(logger: logging.Logger, **_: Any) -> None:
    """Quiet the drivers and, with ETL_LOG_FORMAT=json, give ``logger`` JSON lines."""
    logs.quiet_drivers()  # at --loglevel=DEBUG botocore would log raw SQS bodies
    if runtime.config().log_format == "json":
        logs.use_json(logger)


def chunk_argsrepr(count: int) -> str:
    return f"<sealed chunk of {count} messages>"


@before_task_publish.connect
def _pii_free_argsrepr(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Every publish of a chunk shows a PII-free argsrepr, whoever publishes it.

    ``send_chunk`` passes its own and ChunkTask carries it over to retries; anything else
    (``apply_async`` without one, ``send_task`` by name, a canvas) would put Celery's repr of the
    arguments - the sealed ciphertext - into the message headers, which workers report in their
    task events and Flower shows. (The publisher's own task-sent event is built before this
    signal and cannot be changed here.)
    """
    if headers is None or headers.get("task") not in CHUNK_TASKS:
        return
    if not _OURS.fullmatch(str(headers.get("argsrepr") or "")):
        headers["argsrepr"] = SEALED
    headers["kwargsrepr"] = "{}"


@worker_ready.connect
def _record_start_and_serve_metrics(sender: Any = None, **_: Any) -> None:
    rt = runtime.get()
    rt.coordinator.heartbeat("start", getattr(sender, "hostname", "?"))
    port = rt.settings.metrics_port
    if port and not rt.settings.metrics_dir:
        log.warning("metrics off: set PROMETHEUS_MULTIPROC_DIR to a directory of this worker's own")
    elif port:
        queued = lambda: rt.coordinator.queued(QUEUE)  # noqa: E731
        if rt.settings.source == "kinesis":
            name = rt.settings.kinesis_stream_name

            def status() -> dict[str, dict[str, Any]]:
                """The shards of the incarnation the fetch runs read now (a stream re-created under
                its name has a key of its own; the old one's status would stay frozen)."""
                current = rt.coordinator.entries(stream_key(name, "incarnation")).get("current") or {}
                return rt.coordinator.entries(stream_key(str(current.get("key") or name), "status"))

            source: Any = metrics.StreamCollector(status, queued)
        else:
            source = metrics.QueueCollector(rt.queue.depth, queued)
        try:
            metrics.serve(port, rt.settings.metrics_address, source)
            log.info("metrics on http://%s:%d/metrics", rt.settings.metrics_address, port)
        except OSError as exc:  # e.g. a second worker on the same host: it still works, unmeasured
            log.warning("metrics port %d unavailable (%s); set ETL_METRICS_PORT per worker", port, exc)


@worker_shutting_down.connect
def _stop_fetching(**_: Any) -> None:
    """On SIGTERM a running fetch stops receiving and hands on what it holds."""
    shutting_down.set()


def room(rt: runtime.Runtime) -> int:
    """How many more chunks the broker takes before backpressure (ETL_MAX_QUEUED_CHUNKS less those queued)."""
    return max(0, rt.settings.max_queued_chunks - rt.coordinator.queued(QUEUE))


def pause(rt: runtime.Runtime) -> str | None:
    """Why a fetch should stop handing on chunks now ("shutdown", "backpressure"), or None."""
    if shutting_down.is_set():
        return "shutdown"
    if room(rt) == 0:
        return "backpressure"
    return None


def record(report: load.ChunkReport, messages: list[Message], deleted: bool = True) -> dict[str, int]:
    """Move the metrics by what one committed chunk did (``deleted``: from SQS); return its
    messages' end-to-end latencies as bucket counts (latency.bucket_counts)."""
    m = metrics.instruments()
    m.rows.inc(report.inserted)
    m.duplicates.inc(report.duplicates)
    for reason, count in report.rejected_by_reason.items():
        m.rejected.labels(reason).inc(count)
    if deleted:
        m.deleted.inc(report.messages - report.not_deleted)
    m.chunk_seconds.observe(report.write_seconds)
    committed_ms = time.time() * 1000
    lags = [max(0.0, (committed_ms - message.sent_timestamp_ms) / 1000) for message in messages]
    counts = latency.bucket_counts(lags)
    metrics.observe_latencies(m.lag, lags, counts)
    return counts


def request_fetch_if_starving(rt: runtime.Runtime, fetch_task: Any) -> None:
    """Ask for a fetch (``fetch_task``) now when the broker runs low, instead of waiting for the
    next beat.

    Beat keeps an idle queue polled; this keeps a busy one flowing. A short Redis flag makes
    sure that a burst of finishing chunks sends one request, not one each.
    """
    try:
        starving = rt.coordinator.queued(QUEUE) < max(1, rt.settings.max_queued_chunks // 2)
        if starving and rt.coordinator.flag("etl:fetch-requested", seconds=1):
            fetch_task.apply_async(expires=rt.settings.fetch_interval)
    except TransientError:
        pass  # beat will fetch anyway


def hand_on(task: Any, coordinator: Coordinator, sealed: bytes, count: int, keep: int, *more: Any) -> str:
    """Publish one sealed chunk of ``count`` messages to ``task``: the ciphertext is kept in Redis
    for ``keep`` seconds under a key of its own and the task's arguments are that key (then
    ``more``), with a PII-free argsrepr; returns the key. A publish that fails forgets the key."""
    key = coordinator.stash(sealed, keep)
    try:
        task.apply_async(args=[key, *more], argsrepr=chunk_argsrepr(count), kwargsrepr="{}")
    except BaseException:
        coordinator.discard(key)
        raise
    return key


def keep_seconds(rt: runtime.Runtime) -> int:
    """How long a stashed chunk is kept: as long as it may be opened (the visibility timeout after
    its sealing, plus the clock skew ``open`` allows)."""
    return rt.settings.visibility_timeout + sealing.MAX_CLOCK_SKEW


def open_chunk(task: Any, rt: runtime.Runtime, ref: str, comes_back: str) -> list[Message] | None:
    """The chunk's messages, from ``ref``: the key ``hand_on`` kept it under (or, from an older
    publisher, the sealed chunk itself). None for a chunk whose key is gone (expired, or lost with
    Redis) or that was sealed longer ago than the visibility timeout: by now its source hands its
    messages out again (``comes_back`` says how), so it is dropped unopened and a captured chunk
    replayed later writes nothing. Redis unreachable: TransientError (the task is retried)."""
    if not isinstance(ref, str):
        raise TerminalError("the task's argument is not a chunk (a key or a sealed chunk)")
    sealed: bytes | str = ref
    if ref.startswith(CHUNKS):
        stashed = rt.coordinator.claim(ref)
        if stashed is None:
            log.warning(
                "chunk %s: dropped, no longer in Redis (committed already, expired, or lost with Redis); %s",
                task.request.id,
                comes_back,
            )
            return None
        sealed = stashed
    try:
        return records.unpack_chunk(sealed, rt.sealer, max_age=rt.settings.visibility_timeout)
    except Expired as exc:
        log.warning("chunk %s: dropped, %s; %s", task.request.id, exc, comes_back)
        rt.coordinator.discard(ref)
        return None


@contextmanager
def chunk_attempt(
    task: Any, rt: runtime.Runtime, kept: str, on_time_limit: Callable[[], None]
) -> Iterator[store.Connection]:
    """One attempt at a chunk, for both sources: the process's connection (taken inside, so an
    unreachable Postgres is a transient failure like any other) with a watchdog for the soft
    time limit. A transient failure drops the connection, is counted and logged with where the
    records stay (``kept``) and retried by Celery; at the time limit ``on_time_limit`` runs."""
    watchdog: threading.Timer | None = None
    try:
        conn = rt.conn()
        watchdog = cancel_after_soft_limit(task, conn)
        yield conn
    except TransientError as exc:
        rt.drop_conn()
        metrics.instruments().retries.inc()
        log.warning("chunk %s: %s (attempt %d); %s", task.request.id, exc, task.request.retries + 1, kept)
        raise
    except SoftTimeLimitExceeded:
        rt.drop_conn()
        on_time_limit()
        raise
    finally:
        if watchdog is not None:
            watchdog.cancel()


def committed(
    task: Any,
    rt: runtime.Runtime,
    report: load.ChunkReport,
    messages: list[Message],
    fetch_task: Any,
    deleted: bool,
    ref: str,
) -> None:
    """After a chunk's commit: its stashed ciphertext forgotten (``ref``), heartbeat, metrics
    (``deleted``: from SQS), latency counts for ``etl stats``, and a fetch (``fetch_task``) if the
    broker runs low. (A redelivery after this finds the key gone: its work is committed.)"""
    rt.coordinator.discard(ref)
    rt.coordinator.heartbeat("commit", task.request.hostname or "?")
    rt.coordinator.count_latencies(record(report, messages, deleted=deleted))
    request_fetch_if_starving(rt, fetch_task)


def cancel_after_soft_limit(task: Any, conn: Any) -> threading.Timer | None:
    """The soft limit's signal cannot interrupt a wait inside libpq (a lock, a stalled server):
    cancel the statement just after it, so the task's time-limit handling runs at once."""
    soft = (task.request.timelimit or (None, None))[1] or app.conf.task_soft_time_limit
    if not soft:
        return None
    watchdog = threading.Timer(float(soft) + 0.5, conn.cancel)
    watchdog.daemon = True
    watchdog.start()
    return watchdog


class ChunkTask(app.Task):  # type: ignore[misc]
    """The chunk tasks' class: a retry is published with the argsrepr of the try it repeats.

    Celery re-publishes a retry without the original argsrepr, so it would show the ciphertext
    (in the message, and in the task-sent event that before_task_publish cannot reach).
    """

    def signature_from_request(
        self, request: Any = None, args: Any = None, kwargs: Any = None, queue: Any = None, **extra: Any
    ) -> Any:
        request = self.request if request is None else request
        previous = str(getattr(request, "argsrepr", None) or "")
        extra.setdefault("argsrepr", previous if _OURS.fullmatch(previous) else SEALED)
        extra.setdefault("kwargsrepr", "{}")
        return super().signature_from_request(request, args, kwargs, queue, **extra)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """A chunk task that failed for good (out of retries, a time limit that released its
        messages, a chunk that cannot be opened) will not run again: its stashed chunk goes now,
        not at its TTL, so failures cannot pile chunks up in Redis beyond the stated bound. (A
        worker lost mid-task is requeued instead, key and all: Celery calls this only for a task
        that raised.)"""
        ref = args[0] if args else None
        if isinstance(ref, str):
            runtime.get().coordinator.discard(ref)


# Every chunk task (SQS and stream): acked after it ran, transient failures retried with backoff.
CHUNK_TASK_OPTIONS: dict[str, Any] = {
    "base": ChunkTask,
    "bind": True,
    "acks_late": True,
    "autoretry_for": (TransientError,),
    "retry_backoff": 2,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 5,
    "ignore_result": True,
}
