"""How each AWS JSON-protocol service's calls look on the wire (``Api``), the services the lean
client speaks (``SQS``, ``KINESIS``), and the stock client it hands every other call to (``Cold``)."""

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Api:
    """How one JSON-protocol service's calls look on the wire, and which of them go lean."""

    service: str  # SigV4's signing name
    target: str  # X-Amz-Target is "<target>.<operation>"
    content_type: str
    hot: frozenset[str]
    headers: tuple[tuple[str, str], ...] = ()


SQS = Api(
    "sqs",
    "AmazonSQS",
    "application/x-amz-json-1.0",
    frozenset({"ReceiveMessage", "DeleteMessageBatch", "ChangeMessageVisibilityBatch"}),
    (("x-amzn-query-mode", "true"),),  # as botocore sends for SQS (query-compatible error codes)
)
KINESIS = Api("kinesis", "Kinesis_20131202", "application/x-amz-json-1.1", frozenset({"GetRecords"}))


class Cold(Protocol):
    """The stock client a lean one hands every other call to (etl.aws.Boto3Sqs)."""

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]: ...
    def call_many(self, operation: str, params_list: list[dict[str, Any]]) -> list[dict[str, Any] | Exception]: ...
    def close(self) -> None: ...
