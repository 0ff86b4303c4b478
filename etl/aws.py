"""The one place that makes AWS clients (SQS, Kinesis, S3); their errors leave as our kinds.

boto3 is imported here and nowhere else in etl. The lean SQS client (etl.wire.lean) sends
its three hot calls itself, with what this module resolved through botocore (``Wire``: endpoint,
region, the credential chain, CA bundle, retries and timeouts), and sends every other call
through the stock client made here.

Every botocore error leaves through ``translated`` as one of the failure kinds of etl.errors,
chosen by etl.awserrors' table.
"""

import sys
import threading
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import boto3
import botocore.session
from botocore import xform_name
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError

from etl import awserrors

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
    _endpoints[awserrors.NAMES[service]] = awserrors.where(client.meta.endpoint_url)
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


class Refusal:
    """What ``translated`` let through: the code of an expected ClientError, or None."""

    code: str | None = None


@contextmanager
def translated(service: str, operation: str, expected: Collection[str] = ()) -> Iterator[Refusal]:
    """botocore errors inside become our kinds (etl.awserrors.TABLE). A ClientError whose code is in
    ``expected`` is an answer, not a failure: it ends the block and is kept in ``Refusal.code``."""
    refusal = Refusal()
    try:
        with _notice(service, operation):
            yield refusal
    except (BotoCoreError, ClientError) as exc:
        code = awserrors.error_code(exc)
        if code is not None and code in expected:
            refusal.code = code
            return
        error = awserrors.translate(service, operation, exc)
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
