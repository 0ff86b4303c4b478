"""The only module that talks to SQS (boto3): receive, delete, visibility, send, depth.

The three hot calls may go through etl.sources.sqs.lean instead (``ETL_SQS_CLIENT=lean``), which
raises botocore's own exceptions, so _translated below is the one place for both clients.

Driver errors leave this module as the two failure kinds of etl.errors (plus ConfigError for a
missing queue or credentials), with messages that name the operation and error code only.
"""

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from etl.errors import ConfigError, TransientError
from etl.model.records import Message
from etl.sources.sqs import lean as sqs_lean

log = logging.getLogger("etl.sqs")

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

MAX_BATCH = 10  # SQS's own limit for ReceiveMessage, SendMessageBatch and DeleteMessageBatch
MAX_BATCH_BYTES = 256 * 1024  # SQS's limit for one message, and for one SendMessageBatch
_MISSING_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
MAX_RETRIES = 3  # botocore's "max_attempts" counts retries: 4 attempts in all, jittered exponential backoff
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 30  # above the 20 s long-poll maximum
_CLIENT_FAULTS = {"InvalidParameterValue", "MissingParameter", "InvalidAddress", "AccessDenied"}


def make_client(max_pool: int = 10, kind: str = "boto3") -> "SQSClient":
    """An SQS client configured from AWS's own environment variables.

    AWS_ENDPOINT_URL_SQS points it at LocalStack or moto; AWS_DEFAULT_REGION defaults to
    us-east-1 here so a local setup needs no AWS configuration at all. ``kind="lean"`` sends the
    three hot calls (receive, delete batch, visibility batch) through etl.sources.sqs.lean with this
    client's credentials, region, endpoint and CA bundle, and every other call through boto3;
    where a proxy is configured for the endpoint it stays boto3 (the lean path speaks direct only).
    """
    core = botocore.session.get_session()  # its public config lookup finds AWS_CA_BUNDLE / ca_bundle
    session = boto3.session.Session(botocore_session=core)
    config = Config(
        retries={"mode": "standard", "max_attempts": MAX_RETRIES},
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        max_pool_connections=max_pool,
    )
    client = session.client("sqs", region_name=session.region_name or "us-east-1", config=config)
    if kind != "lean" or sqs_lean.uses_proxy(client.meta.endpoint_url):
        return client
    lean = sqs_lean.LeanClient(
        client,
        session.get_credentials(),  # the chain's credentials; refreshable ones refresh themselves
        max_pool=max_pool,
        max_attempts=MAX_RETRIES + 1,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        verify=core.get_config_variable("ca_bundle") or True,
    )
    return lean  # type: ignore[return-value]  # the same methods and answers as SQSClient for what Queue calls


@contextmanager
def _translated(operation: str) -> Iterator[None]:
    try:
        yield
    except (NoCredentialsError, NoRegionError) as exc:
        raise ConfigError(f"SQS {operation}: {type(exc).__name__}: set AWS credentials and region") from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        if code in _MISSING_QUEUE:
            raise ConfigError(
                f"SQS {operation}: the queue does not exist; check SQS_QUEUE_URL or run `etl init --create-queue`"
            ) from None
        if code in _CLIENT_FAULTS:
            raise ConfigError(f"SQS {operation} refused: {code}") from None
        raise TransientError(f"SQS {operation} failed: {code}") from None
    except BotoCoreError as exc:  # endpoint unreachable, timeouts, closed connections
        raise TransientError(f"SQS {operation} failed: {type(exc).__name__}") from None


class Queue:
    """One SQS queue. Batch operations run up to ``threads`` API calls at once, which hides
    SQS's per-call latency (~15 ms from inside a region) behind concurrency."""

    def __init__(self, url: str, client: "SQSClient | None" = None, threads: int = 32) -> None:
        self.url = url
        self.client = client or make_client(max_pool=threads + 2)
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def _map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """fn over items, concurrently when there is more than one (errors propagate)."""
        if len(items) <= 1 or self.threads <= 1:
            return [fn(i) for i in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="etl-sqs")
        return list(self._pool.map(fn, items))

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
        responses = self._calls("ReceiveMessage", self.client.receive_message, requests, partial=len(requests) > 1)
        errors = [r for r in responses if isinstance(r, BaseException)]
        answers = [r for r in responses if not isinstance(r, BaseException)]
        received = [_to_message(m) for r in answers for m in r.get("Messages", [])]
        if errors and len(errors) == len(responses):
            with _translated("ReceiveMessage"):
                raise errors[0]
        if errors:
            log.warning(
                "%d of %d ReceiveMessage calls failed (%s); keeping the %d messages the others received",
                len(errors),
                len(responses),
                type(errors[0]).__name__,
                len(received),
            )
        return received

    def _calls(
        self, operation: str, method: Callable[..., Any], requests: list[dict[str, Any]], partial: bool = False
    ) -> list[Any]:
        """One API call per request, concurrently: the lean client multiplexes them on one thread,
        boto3 gets up to ``threads`` threads. The first error leaves as one of our kinds, or, with
        ``partial``, every call's answer or exception comes back in its place."""
        call_many = getattr(self.client, "call_many", None)
        with _translated(operation):
            if call_many is not None and self.threads > 1:
                return list(call_many(operation, requests, return_exceptions=partial))
            if not partial:
                return self._map(lambda r: method(**r), requests)
            return self._map(lambda r: _answer_or_error(method, r), requests)

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
        method = self.client.delete_message_batch if seconds is None else self.client.change_message_visibility_batch
        responses = self._calls(operation, method, requests)
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
        with _translated("SendMessageBatch"):
            response = self.client.send_message_batch(QueueUrl=self.url, Entries=entries)  # type: ignore[arg-type]
        failed = response.get("Failed", [])
        if failed:
            codes = sorted({f.get("Code", "?") for f in failed})
            raise TransientError(f"SQS SendMessageBatch: {len(failed)} of {len(bodies)} not sent ({', '.join(codes)})")
        ids = {int(ok["Id"]): ok["MessageId"] for ok in response.get("Successful", [])}
        return [ids[i] for i in range(len(bodies))]

    def depth(self) -> dict[str, int]:
        """Approximate counts: visible (waiting), in_flight (received, not deleted), delayed."""
        with _translated("GetQueueAttributes"):
            attrs = self.client.get_queue_attributes(
                QueueUrl=self.url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            )["Attributes"]
        return {
            "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
            "delayed": int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
        }


def create_queue(name: str, client: "SQSClient | None" = None, dead_letter_after: int = 5) -> str:
    """Create (or find) ``name`` and its dead-letter queue ``name-dlq``; return the queue URL.

    A message received ``dead_letter_after`` times without being deleted moves to the DLQ, so a
    poison message can never loop forever.
    """
    client = client or make_client()
    with _translated("CreateQueue"):
        dlq_url = client.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        dlq_arn = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        redrive: dict[str, Any] = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(dead_letter_after)}
        return client.create_queue(
            QueueName=name,
            Attributes={"RedrivePolicy": json.dumps(redrive), "VisibilityTimeout": "120"},
        )["QueueUrl"]


def queue_name(url: str) -> str:
    """The queue name at the end of a queue URL."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def _answer_or_error(method: Callable[..., Any], request: dict[str, Any]) -> Any:
    try:
        return method(**request)
    except (BotoCoreError, ClientError) as exc:
        return exc


def _to_message(raw: Any) -> Message:
    attrs = raw.get("Attributes", {})
    return Message(
        message_id=raw["MessageId"],
        receipt_handle=raw["ReceiptHandle"],
        body=raw.get("Body", ""),
        sent_timestamp_ms=int(attrs.get("SentTimestamp") or time.time() * 1000),
        receive_count=int(attrs.get("ApproximateReceiveCount", 1)),
        received_at=time.time(),
    )
