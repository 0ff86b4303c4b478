"""An SQS stand-in for capacity benchmarks: fixed latency per call, no CPU work of its own.

It replaces only the boto3 client under etl.sqs.Queue, so the real fetch and mask_and_write
code (batching, threads, chunking, Celery, masking, Postgres) runs unchanged. Messages are
generated on demand from a small pool of realistic bodies; a shared Redis counter caps the total
(``BENCH_TOTAL``), and every process adds its call counts to the Redis hash ``bench:calls``.

Run a worker on it with:  python -m bench.standin_worker -A etl worker ...
Environment: BENCH_LATENCY_MS (15), BENCH_TOTAL (unlimited), CELERY_BROKER_URL (for counters).
"""

import os
import threading
import time
import uuid
from collections import Counter
from typing import Any

import redis

from etl import runtime, samples, settings, sqs

COUNTER = "bench:issued"
CALLS = "bench:calls"


class StandInClient:
    """Answers the SQS calls etl makes after ``latency`` seconds."""

    def __init__(self, latency: float, total: int | None, redis_url: str) -> None:
        self.latency = latency
        self.total = total
        self.bodies = samples.generate(1000, seed=42, malformed_rate=0.01)
        self.prefix = uuid.uuid4().hex[:10]
        self.next_id = 0
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.redis = redis.Redis.from_url(redis_url)
        threading.Thread(target=self._flush_calls, daemon=True).start()

    def _count(self, name: str) -> None:
        with self.lock:
            self.calls[name] += 1

    def _flush_calls(self) -> None:
        while True:
            time.sleep(0.5)
            with self.lock:
                calls, self.calls = self.calls, Counter()
            for name, n in calls.items():
                self.redis.hincrby(CALLS, name, n)

    def receive_message(self, *, MaxNumberOfMessages: int = 1, WaitTimeSeconds: int = 0, **_: Any) -> dict[str, Any]:
        self._count("ReceiveMessage")
        n = MaxNumberOfMessages
        if self.total is not None:
            issued = int(self.redis.incrby(COUNTER, n))
            n = max(0, min(n, self.total - (issued - n)))
        time.sleep(self.latency if n else max(self.latency, WaitTimeSeconds))
        now_ms = str(int(time.time() * 1000))
        with self.lock:
            first, self.next_id = self.next_id, self.next_id + n
        return {
            "Messages": [
                {
                    "MessageId": f"{self.prefix}-{i}",
                    "ReceiptHandle": f"rh-{i}",
                    "Body": self.bodies[i % len(self.bodies)],
                    "Attributes": {"SentTimestamp": now_ms, "ApproximateReceiveCount": "1"},
                }
                for i in range(first, first + n)
            ]
        }

    def _batch(self, name: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self._count(name)
        time.sleep(self.latency)
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    def delete_message_batch(self, *, Entries: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
        return self._batch("DeleteMessageBatch", Entries)

    def change_message_visibility_batch(self, *, Entries: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
        return self._batch("ChangeMessageVisibilityBatch", Entries)

    def get_queue_attributes(self, **_: Any) -> dict[str, Any]:
        self._count("GetQueueAttributes")
        return {"Attributes": {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}}


def install() -> None:
    """Make this process's etl runtime use the stand-in instead of boto3."""
    latency = float(os.environ.get("BENCH_LATENCY_MS", "15")) / 1000
    total = int(os.environ["BENCH_TOTAL"]) if os.environ.get("BENCH_TOTAL") else None

    def factory(config: settings.Settings) -> sqs.Queue:
        client = StandInClient(latency, total, config.broker_url)
        return sqs.Queue(config.sqs_queue_url, client=client, threads=config.sqs_threads)  # type: ignore[arg-type]

    runtime.queue_factory = factory
