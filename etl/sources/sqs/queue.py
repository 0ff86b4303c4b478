"""The SQS queue: receive, delete, visibility, send, depth, create.

Every call goes through the SQS client interface (etl.sources.sqs.client.SqsClient), whichever
client ``ETL_SQS_CLIENT`` chose: the stock one (etl.aws) or the lean one (etl.wire.lean).
Both fail with botocore's exceptions, which leave this module as our kinds (etl.errors, through
etl.aws.translated's one table), with messages that name the operation and error code only.
"""

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from etl import aws
from etl.errors import TransientError
from etl.model.records import Message
from etl.sources.sqs.client import SqsClient
from etl.wire import lean

log = logging.getLogger("etl.sqs")

MAX_BATCH = 10  # SQS's own limit for ReceiveMessage, SendMessageBatch and DeleteMessageBatch
MAX_BATCH_BYTES = 256 * 1024  # SQS's limit for one message, and for one SendMessageBatch


def make_client(max_pool: int = 10, kind: str = "boto3", threads: int | None = None) -> SqsClient:
    """An SQS client configured from AWS's own environment variables (etl.aws), keeping up to
    ``max_pool`` connections; the stock client runs up to ``threads`` (default ``max_pool``)
    calls at once.

    ``kind="lean"`` sends the three hot calls (receive, delete batch, visibility batch) through
    etl.wire.lean with the stock client's credentials, region, endpoint and CA bundle, and
    every other call through the stock client; where a proxy is configured for the endpoint it
    stays stock (the lean path speaks direct only).
    """
    stock = aws.sqs(max_pool, threads)
    if kind != "lean" or lean.uses_proxy(stock.endpoint_url):
        return stock
    return lean.LeanClient(stock.wire, stock, max_pool=max_pool)


class Queue:
    """One SQS queue. Batch operations run their API calls at once (the client's ``call_many``),
    which hides SQS's per-call latency (~15 ms from inside a region) behind concurrency; a
    receive makes up to ``threads`` calls."""

    def __init__(self, url: str, client: SqsClient | None = None, threads: int = 32) -> None:
        self.url = url
        self.client = client or make_client(max_pool=threads + 2, threads=threads)
        self.threads = threads

    def receive(
        self, max_messages: int = MAX_BATCH, wait_seconds: int = 0, visibility_timeout: int = 120
    ) -> list[Message]:
        """Up to ``max_messages`` messages.

        More than 10 are fetched with concurrent ReceiveMessage calls. With ``wait_seconds`` it
        long-polls with a single call, for an idle queue costs one call per wait, not one per
        thread.
        """
        calls = 1 if wait_seconds > 0 else min(self.threads, -(-max_messages // MAX_BATCH))
        sizes = [min(MAX_BATCH, max_messages - i * MAX_BATCH) for i in range(calls)]
        requests: list[dict[str, Any]] = [
            {
                "QueueUrl": self.url,
                "MaxNumberOfMessages": min(n, MAX_BATCH),
                "WaitTimeSeconds": max(0, min(wait_seconds, 20)),
                "VisibilityTimeout": visibility_timeout,
                "MessageSystemAttributeNames": ["SentTimestamp", "ApproximateReceiveCount"],
            }
            for n in sizes
        ]
        # Every call's answer is kept even when another call failed: the messages it received are
        # invisible now, and dropping them would hold them back for the whole visibility timeout.
        with aws.translated("SQS", "ReceiveMessage"):
            responses = self._call_many("ReceiveMessage", requests)
            errors = [r for r in responses if isinstance(r, Exception)]
            if errors and len(errors) == len(responses):
                raise errors[0]
        now = time.time()
        received = [
            _to_message(m, now) for r in responses if not isinstance(r, Exception) for m in r.get("Messages", [])
        ]
        if errors:
            log.warning(
                "%d of %d ReceiveMessage calls failed (%s); keeping the %d messages the others received",
                len(errors),
                len(responses),
                type(errors[0]).__name__,
                len(received),
            )
        return received

    def _call_many(self, operation: str, requests: list[dict[str, Any]]) -> list[dict[str, Any] | Exception]:
        """The calls at once; one after the other with ``threads=1``."""
        if self.threads > 1:
            return self.client.call_many(operation, requests)
        return [answer for request in requests for answer in self.client.call_many(operation, [request])]

    def delete(self, messages: Sequence[Message]) -> list[str]:
        """Delete messages (concurrent batches of 10); return the ids SQS did not delete."""
        return self._batched("DeleteMessageBatch", messages, None)

    def change_visibility(self, messages: Sequence[Message], seconds: int) -> list[str]:
        """Set the visibility timeout of messages; return the ids that failed."""
        return self._batched("ChangeMessageVisibilityBatch", messages, seconds)

    def _batched(self, operation: str, messages: Sequence[Message], seconds: int | None) -> list[str]:
        batches = [messages[i : i + MAX_BATCH] for i in range(0, len(messages), MAX_BATCH)]
        extra = {} if seconds is None else {"VisibilityTimeout": seconds}
        requests = [
            {
                "QueueUrl": self.url,
                "Entries": [{"Id": str(i), "ReceiptHandle": m.receipt_handle, **extra} for i, m in enumerate(batch)],
            }
            for batch in batches
        ]
        with aws.translated("SQS", operation):
            responses = _all_answered(self._call_many(operation, requests))
        return [
            batch[int(f["Id"])].message_id
            for batch, response in zip(batches, responses, strict=True)
            for f in response.get("Failed", [])
        ]

    def send(self, bodies: Sequence[str]) -> list[str]:
        """Send bodies in batches of up to 10 (and 256 KiB); return their MessageIds in order."""
        sent: list[str] = []
        batch: list[str] = []
        size = 0
        for body in bodies:
            body_size = len(body.encode("utf-8", "surrogatepass"))
            if batch and (len(batch) == MAX_BATCH or size + body_size > MAX_BATCH_BYTES):
                sent += self._send_batch(batch)
                batch, size = [], 0
            batch.append(body)
            size += body_size
        if batch:
            sent += self._send_batch(batch)
        return sent

    def _send_batch(self, bodies: list[str]) -> list[str]:
        entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies)]
        with aws.translated("SQS", "SendMessageBatch"):
            response = self.client.call("SendMessageBatch", {"QueueUrl": self.url, "Entries": entries})
        failed = response.get("Failed", [])
        if failed:
            codes = sorted({f.get("Code", "?") for f in failed})
            raise TransientError(f"SQS SendMessageBatch: {len(failed)} of {len(bodies)} not sent ({', '.join(codes)})")
        ids = {int(ok["Id"]): ok["MessageId"] for ok in response.get("Successful", [])}
        return [ids[i] for i in range(len(bodies))]

    def depth(self) -> dict[str, int]:
        """Approximate counts: visible (waiting), in_flight (received, not deleted), delayed."""
        params = {
            "QueueUrl": self.url,
            "AttributeNames": [
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        }
        with aws.translated("SQS", "GetQueueAttributes"):
            attrs = self.client.call("GetQueueAttributes", params)["Attributes"]
        return {
            "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
            "delayed": int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
        }

    def attributes(self, names: Sequence[str]) -> dict[str, str]:
        """The queue's attributes ``names`` (e.g. "RedrivePolicy", "VisibilityTimeout") that it has."""
        with aws.translated("SQS", "GetQueueAttributes"):
            answer = self.client.call("GetQueueAttributes", {"QueueUrl": self.url, "AttributeNames": list(names)})
        return {k: str(v) for k, v in answer.get("Attributes", {}).items()}


def create_queue(name: str, client: SqsClient | None = None, dead_letter_after: int = 5) -> str:
    """Create (or find) ``name`` and its dead-letter queue ``name-dlq``; return the queue URL.

    A message received ``dead_letter_after`` times without being deleted moves to the DLQ, so a
    poison message can never loop forever.
    """
    client = client or make_client()
    with aws.translated("SQS", "CreateQueue"):
        dlq_url = client.call("CreateQueue", {"QueueName": f"{name}-dlq"})["QueueUrl"]
        dlq = client.call("GetQueueAttributes", {"QueueUrl": dlq_url, "AttributeNames": ["QueueArn"]})
        redrive = {"deadLetterTargetArn": dlq["Attributes"]["QueueArn"], "maxReceiveCount": str(dead_letter_after)}
        attributes = {"RedrivePolicy": json.dumps(redrive), "VisibilityTimeout": "120"}
        return str(client.call("CreateQueue", {"QueueName": name, "Attributes": attributes})["QueueUrl"])


def queue_name(url: str) -> str:
    """The queue name at the end of a queue URL."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def _all_answered(responses: list[dict[str, Any] | Exception]) -> list[dict[str, Any]]:
    """The answers of calls that must all succeed, or the first call's error (raised)."""
    answers: list[dict[str, Any]] = []
    for response in responses:
        if isinstance(response, Exception):
            raise response
        answers.append(response)
    return answers


def _to_message(raw: Any, received_at: float) -> Message:
    attrs = raw.get("Attributes", {})
    return Message(
        raw["MessageId"],
        raw["ReceiptHandle"],
        raw.get("Body", ""),
        int(attrs.get("SentTimestamp") or received_at * 1000),
        int(attrs.get("ApproximateReceiveCount", 1)),
        received_at,
    )
