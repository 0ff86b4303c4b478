"""The only module that uses prometheus_client: the pipeline's metrics and their endpoint.

Celery's prefork pool runs tasks in several processes, so metrics use prometheus_client's
multiprocess mode: each process writes its samples to files in PROMETHEUS_MULTIPROC_DIR (one
directory per worker, set in the worker's environment) and the worker's main process serves them
all on ETL_METRICS_PORT. Without that directory the worker runs unmeasured and says so. Queue
depths are read at scrape time (cached for a few seconds), not counted.

No label ever holds a message value: reasons are the fixed rejection codes.
"""

import glob
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from etl.model import events, latency


class Instruments:
    """The pipeline's counters and histograms, made once per process by ``instruments()``.

    In multiprocess mode each one opens a file in PROMETHEUS_MULTIPROC_DIR when it is made, so
    they are made on first use (in a worker: when it starts, after ``prepare``; its pool processes
    inherit them and move to files of their own), never at import.
    """

    def __init__(self) -> None:
        self.received = Counter("etl_messages_received", "Messages received from SQS by fetch runs")
        self.rows = Counter("etl_rows_written", "New user_logins rows committed")
        self.duplicates = Counter("etl_duplicates_skipped", "Redelivered messages whose row was already written")
        self.rejected = Counter("etl_rejected", "Messages recorded in rejected_messages, by reason", ["reason"])
        # Every reason exported at 0 from the start: a series born at its first rejection starts
        # at that chunk's count, and rate() never sees that jump (the first burst of bad events
        # would not move EtlRejectsSpiking; tests/integration/test_prometheus.py).
        for reason in events.REASONS:
            self.rejected.labels(reason)
        self.deleted = Counter("etl_messages_deleted", "Messages deleted from SQS after their commit")
        self.retries = Counter("etl_chunk_retries", "Chunk attempts that failed transiently and will be retried")
        self.chunk_seconds = Histogram(
            "etl_chunk_write_seconds",
            "Time to transform, write and commit one chunk",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.lag = Histogram(
            "etl_end_to_end_lag_seconds",
            "From SQS SentTimestamp to the commit of the message's row",
            buckets=latency.BUCKETS,  # etl stats reads the same buckets from Redis
        )
        self.stream_read = Counter("etl_stream_records_read", "Records read from the Kinesis stream by fetch runs")
        self.stream_expired = Counter(
            "etl_stream_retention_gaps",
            "Times a shard's next records had expired (past retention) before they were read",
        )


def observe_latencies(histogram: Histogram, lags: list[float], counts: dict[str, int]) -> None:
    """Add a chunk's latencies ``lags`` (seconds) to ``histogram`` (made with latency.BUCKETS),
    given their bucket counts (latency.bucket_counts): one increment per bucket, where observe()
    costs ~1 µs a message. It moves prometheus_client's own bucket and sum values (what observe
    moves, under the same names since 0.4); where they are not there, it observes each latency.
    tests/unit/test_metrics.py checks the result against observe's."""
    buckets, total = getattr(histogram, "_buckets", None), getattr(histogram, "_sum", None)
    if buckets is None or total is None or len(buckets) != len(latency.BUCKETS) + 1:
        for lag in lags:
            histogram.observe(lag)
        return
    histogram._raise_if_not_observable()  # type: ignore[no-untyped-call]
    total.inc(sum(lags))
    for label, n in counts.items():
        buckets[_BUCKET_INDEX.get(label, len(latency.BUCKETS))].inc(n)


_BUCKET_INDEX = {label: i for i, label in enumerate(latency.LABELS)}
_instruments: Instruments | None = None


def instruments() -> Instruments:
    """This process's instruments, made on first use."""
    global _instruments
    if _instruments is None:
        _instruments = Instruments()
    return _instruments


class ScrapedCollector(Collector):
    """The source's numbers and the broker queue length, read when Prometheus scrapes (cached
    ``ttl`` s); a subclass turns the source's snapshot into metric families."""

    def __init__(self, read: Callable[[], Any], queued: Callable[[], int], ttl: float = 5) -> None:
        self._read, self._queued, self._ttl = read, queued, ttl
        self._cache: tuple[float, Any, int] | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._cache is None or time.monotonic() - self._cache[0] > self._ttl:
                try:
                    self._cache = (time.monotonic(), self._read(), self._queued())
                except Exception:  # a scrape must not fail because SQS or Redis is down
                    self._cache = None
                    return
            _, snapshot, queued = self._cache
        yield from self.families(snapshot)
        yield GaugeMetricFamily("etl_broker_queued_chunks", "Chunks waiting in the Redis broker", value=queued)

    def families(self, snapshot: Any) -> Iterator[Metric]:
        raise NotImplementedError


class QueueCollector(ScrapedCollector):
    """SQS depth (``read`` returns Queue.depth()) and the broker queue length."""

    def families(self, snapshot: Any) -> Iterator[Metric]:
        sqs = GaugeMetricFamily("etl_sqs_messages", "Approximate SQS queue depth", labels=["state"])
        for state in ("visible", "in_flight", "delayed"):
            sqs.add_metric([state], snapshot.get(state, 0))
        yield sqs


class StreamCollector(ScrapedCollector):
    """Per-shard lag (MillisBehindLatest at the last read), checkpoint age and records not yet
    committed, as the last fetch runs published them (``read`` returns the status hash)."""

    def families(self, snapshot: Any) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "etl_stream_lag_milliseconds", "MillisBehindLatest of each shard's last read", labels=["shard"]
        )
        age = GaugeMetricFamily(
            "etl_stream_checkpoint_age_seconds", "Seconds since each shard's checkpoint last moved", labels=["shard"]
        )
        uncommitted = GaugeMetricFamily(
            "etl_stream_uncommitted",
            "1 where the last fetch handed records on past the shard's checkpoint (read, not yet committed)",
            labels=["shard"],
        )
        now = time.time()
        for shard, s in sorted(snapshot.items()):
            if s.get("behind_ms") is not None:
                lag.add_metric([shard], float(s["behind_ms"]))
            if s.get("checkpoint_moved_at") is not None:
                age.add_metric([shard], max(0.0, now - float(s["checkpoint_moved_at"])))
            uncommitted.add_metric([shard], 1.0 if s.get("uncommitted") else 0.0)
        yield lag
        yield age
        yield uncommitted


def prepare(directory: str) -> None:
    """Make the worker's metrics directory and remove samples other processes left in it (a
    restarted worker starts at zero). Called when the worker starts, in its main process before
    it forks its pool: every file already there is stale."""
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):
        if not path.endswith(f"_{os.getpid()}.db"):
            os.unlink(path)


def serve(port: int, address: str, source: Collector) -> None:
    """Serve every pool process's metrics, plus the source's (queue depths or shard lag), on
    http://address:port/metrics."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(source)
    start_http_server(port, addr=address, registry=registry)
