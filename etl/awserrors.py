"""AWS errors in our words: one table (``TABLE``, first matching row wins) maps each botocore
error to one of the failure kinds of etl.errors, with a message that names the service, the
operation and the error code (and, for a connection that failed, the endpoint's scheme, host and
port): never a request's values, never credentials. etl.aws.translated applies it to every call.
"""

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
)

from etl.errors import ConfigError, EtlError, TerminalError, TransientError
from etl.model.shards import IteratorExpired, Throttled


def _codes(*codes: str) -> frozenset[str]:
    return frozenset(codes)


@dataclass(frozen=True)
class Row:
    """One row of the error table.

    ``service``: "SQS", "Kinesis", "S3", or "*" for any; ``match``: a ClientError's error codes,
    or a botocore exception class; ``says``: the message, formatted with ``service``,
    ``operation``, ``code`` (a ClientError's), ``name`` (the exception's class) and ``at``
    (" at scheme://host:port" where a connection failed, else "").
    """

    service: str
    match: frozenset[str] | type[Exception]
    kind: type[EtlError]
    says: str


_SET_CREDENTIALS = "{service} {operation}: {name}: set AWS credentials and region"
_UNREACHABLE = "{service} {operation} failed{at}: {failure} ({name}); {fix}"
NAMES = {"sqs": "SQS", "kinesis": "Kinesis", "s3": "S3"}
# What to check when a service cannot be reached: the settings that say where it is.
FIXES = {
    "SQS": "check AWS_ENDPOINT_URL_SQS and SQS_QUEUE_URL, and that the SQS server answers",
    "Kinesis": "check AWS_ENDPOINT_URL_KINESIS and KINESIS_STREAM_NAME, and that Kinesis answers",
    "S3": "check AWS_ENDPOINT_URL_S3 and ETL_AUDIT_ANCHOR, and that S3 answers",
}
# botocore's connection failures in words.
_FAILURES = {
    "EndpointConnectionError": "cannot connect",
    "ConnectTimeoutError": "no connection in time",
    "ReadTimeoutError": "no answer in time",
    "ConnectionClosedError": "the connection was closed",
    "SSLError": "TLS failed",
    "ProxyConnectionError": "cannot connect to the proxy",
}
_REFUSED = "{service} {operation} refused: {code}"

TABLE: tuple[Row, ...] = (
    Row("*", NoCredentialsError, ConfigError, _SET_CREDENTIALS),
    Row("*", NoRegionError, ConfigError, _SET_CREDENTIALS),
    # e.g. a bucket name S3 would never accept: it came from the setting
    Row(
        "S3",
        ParamValidationError,
        ConfigError,
        "S3 {operation}: invalid parameters; set ETL_AUDIT_ANCHOR=file:///path or s3://bucket/prefix",
    ),
    Row(
        "SQS",
        _codes("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"),
        ConfigError,
        "SQS {operation}: the queue does not exist; check SQS_QUEUE_URL or run `etl init --create-queue`",
    ),
    Row(
        "SQS",
        _codes("InvalidParameterValue", "MissingParameter", "InvalidAddress", "AccessDenied"),
        ConfigError,
        _REFUSED,
    ),
    # A fetch handles these two per shard: a new iterator, or backing off that shard.
    Row("Kinesis", _codes("ExpiredIteratorException"), IteratorExpired, "Kinesis {operation}: iterator expired"),
    Row(
        "Kinesis",
        _codes("ProvisionedThroughputExceededException", "LimitExceededException", "ThrottlingException"),
        Throttled,
        "Kinesis {operation} throttled: {code}",
    ),
    Row(
        "Kinesis",
        _codes("ResourceNotFoundException"),
        ConfigError,
        "Kinesis {operation}: the stream does not exist; check KINESIS_STREAM_NAME or run `etl init --create-stream`",
    ),
    Row(
        "Kinesis",
        _codes("AccessDeniedException", "KMSAccessDeniedException", "KMSNotFoundException"),
        ConfigError,
        _REFUSED,
    ),
    Row("Kinesis", _codes("InvalidArgumentException", "ValidationException"), TerminalError, _REFUSED),
    Row("S3", _codes("NoSuchBucket"), ConfigError, "S3 {operation}: the bucket does not exist; check ETL_AUDIT_ANCHOR"),
    Row(
        "S3",
        _codes(
            "AccessDenied",
            "AllAccessDisabled",
            "InvalidAccessKeyId",
            "InvalidArgument",
            "InvalidBucketName",
            "InvalidRequest",
            "PreconditionFailed",  # the name exists already: anchors are never overwritten
            "SignatureDoesNotMatch",
        ),
        ConfigError,
        _REFUSED,
    ),
    # Endpoint unreachable, timeouts, closed connections, TLS: say where, and what to check.
    Row("*", ConnectionError, TransientError, _UNREACHABLE),
    Row("*", HTTPClientError, TransientError, _UNREACHABLE),
    # Everything else may heal: throttling and 5xx after botocore's retries, codes we do not know.
    Row("*", ClientError, TransientError, "{service} {operation} failed: {code}"),
    # Any other botocore error (parameter validation, ...).
    Row("*", BotoCoreError, TransientError, "{service} {operation} failed: {name}{at}"),
)


_CODE = re.compile(r"[A-Za-z0-9_.:#-]{1,128}")


def error_code(exc: BaseException) -> str | None:
    """A ClientError's error code ("Unknown" when the answer has none, "Unrecognized" when it is
    not a code's shape: a server's bytes never reach a log or a terminal); None for any other error."""
    if not isinstance(exc, ClientError):
        return None
    code = str(exc.response.get("Error", {}).get("Code") or "Unknown")
    return code if _CODE.fullmatch(code) else "Unrecognized"


def row_for(service: str, exc: BaseException) -> Row | None:
    """The table's first row for ``exc`` from ``service``; None for an error that is not botocore's."""
    code = error_code(exc)
    for row in TABLE:
        if row.service != "*" and row.service != service:
            continue
        if isinstance(row.match, frozenset):
            if code in row.match:
                return row
        elif isinstance(exc, row.match):
            return row
    return None


def translate(service: str, operation: str, exc: BaseException) -> EtlError | None:
    """Our kind of failure for botocore's ``exc`` (None when it is not botocore's)."""
    row = row_for(service, exc)
    if row is None:
        return None
    name = type(exc).__name__
    at = _endpoint(exc)
    return row.kind(
        row.says.format(
            service=service,
            operation=operation,
            code=error_code(exc),
            name=name,
            at=at,
            failure=_FAILURES.get(name, "unreachable"),
            fix=FIXES.get(service, "check its endpoint"),
        )
    )


def where(url: str) -> str:
    """scheme://host:port of ``url`` (no user info, path or query); empty if it has no host."""
    try:
        parts = urlsplit(str(url))
        host, port = parts.hostname, parts.port
    except ValueError:
        return ""
    if not parts.scheme or not host:
        return ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _endpoint(exc: BaseException) -> str:
    """The endpoint a botocore connection error names, as ' at scheme://host:port' (else empty).

    Only scheme, host and port: a URL's user info, path and query (a request's values) are left out.
    """
    url = exc.kwargs.get("endpoint_url") if isinstance(exc, BotoCoreError) else None
    named = where(str(url)) if url else ""
    return f" at {named}" if named else ""
