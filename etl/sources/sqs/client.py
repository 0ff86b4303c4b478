"""The SQS client interface: what etl.sources.sqs.queue.Queue asks of a client, and nothing more.

Two clients implement it (``ETL_SQS_CLIENT``): ``etl.aws.Boto3Sqs`` (every call through boto3,
several at once on a thread pool) and ``etl.wire.lean.LeanClient`` (the three hot calls
over keep-alive HTTP, multiplexed on one thread; the others through ``Boto3Sqs``). Both answer
with the dicts boto3 returns and fail with botocore's exceptions, which ``etl.aws.translated``
maps to our kinds: Queue has one code path for both.
"""

from typing import Any, Protocol


class SqsClient(Protocol):
    """SQS's JSON API: one call, or several of the same operation at once."""

    @property
    def endpoint_url(self) -> str:
        """The endpoint botocore resolved (AWS_ENDPOINT_URL_SQS, the region, ...)."""
        ...

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """One call, e.g. ("SendMessageBatch", {"QueueUrl": ..., "Entries": [...]}), with retries;
        the answer as boto3 returns it, or botocore's exception."""
        ...

    def call_many(self, operation: str, params_list: list[dict[str, Any]]) -> list[dict[str, Any] | Exception]:
        """The calls concurrently, each retried on its own; every call's answer or botocore
        exception in its place, once all have ended."""
        ...

    def close(self) -> None:
        """Release pooled connections and threads."""
        ...
