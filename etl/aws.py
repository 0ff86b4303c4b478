"""The one place that makes AWS clients (SQS, Kinesis, S3) and maps AWS errors to our kinds.

boto3 is imported here and nowhere else in etl. The lean SQS client (etl.wire.lean) sends
its three hot calls itself, with what this module resolved through botocore (``Wire``: endpoint,
region, the credential chain, CA bundle, retries and timeouts), and sends every other call
through the stock client made here.

Every botocore error leaves through ``translated`` as one of the failure kinds of etl.errors,
chosen by one table (``TABLE``, first matching row wins), with a message that names the service,
the operation and the error code (and, for a connection that failed, the endpoint's scheme, host
and port): never a request's values, never credentials.
"""

import re
import sys
import threading
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import boto3
import botocore.session
from botocore import xform_name
from botocore.config import Config
from botocore.credentials import Credentials
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

RETRIES = 3  # botocore's "max_attempts" counts retries: 4 attempts in all, jittered exponential backoff
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 30  # above SQS's 20 s long-poll maximum
DEFAULT_REGION = "us-east-1"  # so that a local setup needs no AWS configuration at all


@dataclass(frozen=True)
class Patience:
    """How long a call may wait: per attempt (connect, read) and how many retries after the first.

    Workers keep the defaults (a long poll waits 20 s; retries ride out a blip). A command a person
    typed must not sit silent for minutes (4 attempts x 30 s): ``for_commands`` bounds each call to
    about 30 s in all and makes a call that is slow say what it waits for (``notice``)."""

    retries: int = RETRIES
    connect_timeout: float = CONNECT_TIMEOUT
    read_timeout: float = READ_TIMEOUT
    notice: bool = False  # say on stderr what a call waits for once it takes NOTICE_AFTER s

    @property
    def bound(self) -> float:
        """The longest one call can take, retries included (backoff aside)."""
        return (self.retries + 1) * (self.connect_timeout + self.read_timeout)


COMMANDS = Patience(retries=1, connect_timeout=4, read_timeout=10, notice=True)  # 2 x 14 s: under 30 s
NOTICE_AFTER = 2.0
_patience = Patience()
# Where each service's clients were pointed (botocore's resolution), for messages that say where.
_endpoints: dict[str, str] = {}


def for_commands() -> None:
    """Bound every AWS call of this process for a command line (``etl ...``): see Patience."""
    global _patience
    _patience = COMMANDS


# ---- clients --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wire:
    """What botocore resolved for a client, for a client that sends its calls itself (lean)."""

    endpoint_url: str
    region: str
    credentials: Credentials | None  # the chain's; refreshable ones refresh themselves
    verify: bool | str  # True, or the CA bundle's path (AWS_CA_BUNDLE / ca_bundle)
    user_agent: str
    max_attempts: int = RETRIES + 1
    connect_timeout: float = CONNECT_TIMEOUT
    read_timeout: float = READ_TIMEOUT


Service = Literal["sqs", "kinesis", "s3"]


def _boto3(service: Service, max_pool: int) -> tuple[Any, Wire]:
    """A stock boto3 client for ``service`` and what botocore resolved for it.

    AWS's own environment variables configure it (AWS_ENDPOINT_URL_SQS / _KINESIS / _S3 point it
    at LocalStack, moto or MinIO); AWS_DEFAULT_REGION defaults to us-east-1 here.
    """
    core = botocore.session.get_session()  # its public config lookup finds AWS_CA_BUNDLE / ca_bundle
    session = boto3.session.Session(botocore_session=core)
    patience = _patience
    config = Config(
        retries={"mode": "standard", "max_attempts": patience.retries},
        connect_timeout=patience.connect_timeout,
        read_timeout=patience.read_timeout,
        max_pool_connections=max_pool,
    )
    # Any: calls go by operation name (Boto3Sqs.call), and the stubs' Config has no user_agent.
    client: Any = session.client(service, region_name=session.region_name or DEFAULT_REGION, config=config)
    wire = Wire(
        endpoint_url=client.meta.endpoint_url,
        region=client.meta.region_name,
        credentials=session.get_credentials(),
        verify=core.get_config_variable("ca_bundle") or True,
        user_agent=client.meta.config.user_agent,
        max_attempts=patience.retries + 1,
        connect_timeout=patience.connect_timeout,
        read_timeout=patience.read_timeout,
    )
    _endpoints[_NAMES[service]] = _where(client.meta.endpoint_url)
    return client, wire


def client(
    service: Literal["kinesis", "s3"], max_pool: int = 10
) -> Any:  # no stubs for kinesis or s3 are installed: untyped
    """A stock boto3 client for ``service`` ("kinesis", "s3"), with our retries and timeouts."""
    return _boto3(service, max_pool)[0]


def kinesis(max_pool: int = 10) -> tuple[Any, Wire]:
    """The stock Kinesis client and what botocore resolved for it (for the lean GetRecords)."""
    return _boto3("kinesis", max_pool)


def sqs(max_pool: int = 10, threads: int | None = None) -> "Boto3Sqs":
    """The stock SQS client, behind the interface Queue calls (etl.sources.sqs.client.SqsClient),
    running up to ``threads`` (default ``max_pool``) calls at once."""
    stock, wire = _boto3("sqs", max_pool)
    return Boto3Sqs(stock, wire, threads=max_pool if threads is None else threads)


class Boto3Sqs:
    """SQS through boto3: every call through botocore, several at once on a thread pool.

    Implements etl.sources.sqs.client.SqsClient. ``wire`` is what botocore resolved for it, for
    the lean client to use the same endpoint, credentials and CA bundle.
    """

    def __init__(self, stock: Any, wire: Wire, threads: int = 10) -> None:
        self._stock = stock
        self.wire = wire
        self.endpoint_url: str = wire.endpoint_url
        # Threads start on first use only; one thread or none: calls run one after the other.
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="etl-sqs") if threads > 1 else None

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """One call ("ReceiveMessage", ...) with botocore's standard retries; botocore's errors."""
        answer: dict[str, Any] = getattr(self._stock, xform_name(operation))(**params)
        return answer

    def call_many(self, operation: str, params_list: list[dict[str, Any]]) -> list[dict[str, Any] | Exception]:
        """The calls at once (up to the pool's threads); each answer or botocore error in its place."""
        if self._pool is None or len(params_list) <= 1:
            return [self._settled(operation, p) for p in params_list]
        return list(self._pool.map(lambda p: self._settled(operation, p), params_list))

    def _settled(self, operation: str, params: dict[str, Any]) -> dict[str, Any] | Exception:
        try:
            return self.call(operation, params)
        except (BotoCoreError, ClientError) as exc:
            return exc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self._stock.close()


# ---- errors ---------------------------------------------------------------------------------------


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
_NAMES = {"sqs": "SQS", "kinesis": "Kinesis", "s3": "S3"}
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


class Refusal:
    """What ``translated`` let through: the code of an expected ClientError, or None."""

    code: str | None = None


@contextmanager
def translated(service: str, operation: str, expected: Collection[str] = ()) -> Iterator[Refusal]:
    """botocore errors inside become our kinds (TABLE). A ClientError whose code is in
    ``expected`` is an answer, not a failure: it ends the block and is kept in ``Refusal.code``."""
    refusal = Refusal()
    try:
        with _notice(service, operation):
            yield refusal
    except (BotoCoreError, ClientError) as exc:
        code = error_code(exc)
        if code is not None and code in expected:
            refusal.code = code
            return
        error = translate(service, operation, exc)
        if error is None:  # not reached: the table's last rows take every botocore error
            raise
        raise error from None


@contextmanager
def _notice(service: str, operation: str) -> Iterator[None]:
    """With ``Patience.notice``: one line on stderr when a call has waited NOTICE_AFTER seconds."""
    patience = _patience
    if not patience.notice:
        yield
        return
    where = f" at {_endpoints[service]}" if service in _endpoints else ""
    line = f"etl: waiting for {service}{where} ({operation}); giving up within {patience.bound:.0f} s"
    timer = threading.Timer(NOTICE_AFTER, lambda: print(line, file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _where(url: str) -> str:
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
    where = _where(str(url)) if url else ""
    return f" at {where}" if where else ""
