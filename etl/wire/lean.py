"""The lean path for the hot calls of AWS's JSON-protocol services (``Api``): SQS's
ReceiveMessage, DeleteMessageBatch and ChangeMessageVisibilityBatch, and Kinesis' GetRecords
(docs/performance.md, docs/kinesis.md).

botocore spends about 2 ms of CPU on each SQS call (model-driven serialization and validation,
event hooks, urllib3, model-driven parsing); at 0.2 calls per message that was most of what a
message cost; on a GetRecords of 500 records it spends ~15 µs a record (base64 and timestamps
parsed for every field). This client sends these calls itself, over pooled keep-alive
connections, and keeps from botocore everything that is hard to get right:

* credentials: the boto3 session's credential chain (env, profile, SSO, container and instance
  roles, web identity / IRSA); expiring credentials are refreshed by botocore itself, because
  every request asks ``get_frozen_credentials()`` of the session's (refreshable) credentials;
* region and endpoint: what botocore resolved for the stock client (``etl.aws.Wire``:
  ``AWS_ENDPOINT_URL_SQS`` / ``_KINESIS``, config files, FIPS/dual-stack, partitions);
* signing: SigV4 (etl.wire.sigv4, held equal to botocore's own signer by a test; botocore's costs
  more CPU than the rest of a lean call);
* TLS: verified against botocore's CA bundle (or ``AWS_CA_BUNDLE``), hostname checked;
* errors: botocore's own exception classes, built as botocore's JSON parser builds them
  (``x-amzn-query-error`` codes included), so ``etl.aws.translated`` maps both clients' errors
  to our kinds with one table;
* retries: botocore's "standard" mode as etl.aws configures it (4 attempts in all; throttling
  codes, 5xx and connection errors; exponential backoff with full jitter, at most 20 s).

For SQS it implements etl.sources.sqs.client.SqsClient, every other call (send, depth, create)
going to the stock client (``etl.aws.Boto3Sqs``) it is given; Kinesis' stream sends only
GetRecords through it (answers as the service's JSON: Data still base64, timestamps as epoch
seconds). Nothing here logs, and no error message carries a request or response body (they hold PII).
"""

import json
import random
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    SSLError,
)
from botocore.httpsession import get_cert_path

from etl.aws import Wire
from etl.wire import http1, sigv4
from etl.wire.api import KINESIS, SQS, Api, Cold, request_body

__all__ = ["KINESIS", "SQS", "Api", "Cold", "LeanClient", "uses_proxy"]


# botocore's standard retry mode (botocore/retries/standard.py): what it retries, and how long.
_THROTTLING = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
}
_TRANSIENT_CODES = {"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"}
_TRANSIENT_STATUS = {500, 502, 503, 504}
MAX_BACKOFF = 20.0


class _Retryable(Exception):
    """A connection-level failure worth another attempt (wraps the botocore error to raise)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class LeanClient:
    """``api``'s hot calls over keep-alive HTTP; the others through the stock client ``cold``
    (none: only hot calls are made).

    Responses are the service's JSON as dicts (for SQS the same dicts boto3 returns), and
    failures raise the same botocore exceptions, so ``etl.sources.sqs.queue.Queue`` uses either
    client unchanged (SqsClient) and ``etl.aws.translated`` maps both clients' errors alike.
    """

    def __init__(
        self,
        wire: Wire,
        cold: Cold | None,
        *,
        api: Api = SQS,
        max_pool: int = 10,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._cold = cold
        self._api = api
        self._credentials = wire.credentials
        self._region = wire.region
        self.endpoint_url = wire.endpoint_url
        verify = wire.verify
        parts = urlsplit(self.endpoint_url)
        self._host = parts.hostname or ""
        self._tls: ssl.SSLContext | None = None
        if parts.scheme == "https":
            cafile = verify if isinstance(verify, str) else get_cert_path(True)  # a CA bundle, or botocore's
            self._tls = ssl.create_default_context(cafile=cafile)
            if verify is False:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE
        self._port = parts.port or (443 if self._tls else 80)
        # The Host header as botocore's signer derives it: lower case, default port left out.
        host = f"[{self._host}]" if ":" in self._host else self._host
        if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
            host = f"{host}:{parts.port}"
        self._url = f"{parts.scheme}://{host}{parts.path or '/'}"
        self._path = (parts.path or "/").encode()
        self._signer = sigv4.Signer(host, parts.path or "/", self._region, api.service)
        self._fixed: dict[str, tuple[tuple[str, str], ...]] = {}  # per operation: the headers signed as they are
        self._max_pool = max_pool
        self._max_attempts = wire.max_attempts
        self._timeouts = (wire.connect_timeout, wire.read_timeout)
        self._sleep = sleep
        self._idle: list[http1.Connection] = []
        self._lock = threading.Lock()
        self._user_agent = f"{wire.user_agent} etl-lean-{api.service}".encode()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        if self._cold is not None:
            self._cold.close()

    def _stock(self, operation: str) -> Cold:
        if self._cold is None:
            raise ValueError(f"{operation} is not one of this lean client's calls")
        return self._cold

    # -- one call, with botocore's standard retries --------------------------------------------

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """One call, with botocore's standard retries (a cold one: the stock client's call)."""
        if operation not in self._api.hot:
            return self._stock(operation).call(operation, params)
        body = request_body(params)
        attempt = 1
        while True:
            try:
                status, headers, payload = self._send(operation, body)
            except _Retryable as failure:
                if attempt >= self._max_attempts:
                    raise failure.error from None
            else:
                answer, retry = self._answer(operation, status, headers, payload)
                if not retry or attempt >= self._max_attempts:
                    if isinstance(answer, Exception):
                        raise answer
                    return answer
            self._backoff(attempt)
            attempt += 1

    def _backoff(self, attempt: int) -> None:
        self._sleep(random.random() * min(MAX_BACKOFF, 2 ** (attempt - 1)))

    def call_many(self, operation: str, params_list: list[dict[str, Any]]) -> list[dict[str, Any] | Exception]:
        """Several calls at once from this one thread: every request goes out on its own pooled
        connection before any answer is read (then read last-sent first), so N concurrent calls
        cost one latency and no thread switching. Retries follow the standard rules per call, and
        the calls to retry go out together again after one backoff; once every call has ended,
        each call's answer or botocore exception comes back in its place."""
        if operation not in self._api.hot:
            return self._stock(operation).call_many(operation, params_list)
        if len(params_list) <= 1:
            return [self._settled(operation, p) for p in params_list]
        bodies = [request_body(p) for p in params_list]
        results: list[Any] = [None] * len(params_list)
        pending = list(range(len(params_list)))
        attempt = 1
        while True:
            failed, stale = self._round(operation, bodies, pending, results)
            while stale:  # pooled connections the server had closed: again at once, as urllib3 does
                more, stale = self._round(operation, bodies, stale, results)
                failed.update(more)
            if not failed:
                break
            if attempt >= self._max_attempts:
                for i, exc in failed.items():
                    results[i] = exc
                break
            self._backoff(attempt)
            attempt += 1
            pending = sorted(failed)
        return results

    def _settled(self, operation: str, params: dict[str, Any]) -> dict[str, Any] | Exception:
        try:
            return self.call(operation, params)
        except (BotoCoreError, ClientError) as exc:
            return exc

    def _round(
        self, operation: str, bodies: list[bytes], indices: list[int], results: list[Any]
    ) -> tuple[dict[int, Exception], list[int]]:
        """One attempt of the calls ``indices``, concurrently. Answers and errors not worth a retry
        go into ``results``; returns the failures worth a retry and the calls that met a closed
        pooled connection."""
        failed: dict[int, Exception] = {}
        stale: list[int] = []
        waiting: list[tuple[int, http1.Connection, bool]] = []
        read = 0  # the answers of waiting[:read] have been read
        try:
            for i in indices:
                request = self._signed(operation, bodies[i])
                try:
                    conn, reused = self._connection()
                except _Retryable as failure:
                    failed[i] = failure.error
                    continue
                try:
                    conn.send(request)
                except OSError:
                    conn.close()
                    if reused:
                        stale.append(i)
                    else:
                        failed[i] = ConnectionClosedError(endpoint_url=self._url)
                    continue
                waiting.append((i, conn, reused))
            # Every request is out: the answers are read last-sent first, each one waiting at most
            # until one read timeout after the last send. By the time the last call's answer has
            # come, the earlier ones have mostly come too: the round sleeps once, not once an
            # answer (a wake-up costs more CPU than reading an answer at a tenth of capacity).
            # No selector: it cost more CPU than the wait it saved.
            waiting.reverse()
            deadline = time.monotonic() + self._timeouts[1]
            while read < len(waiting):
                i, conn, reused = waiting[read]
                read += 1
                try:
                    status, headers, payload = conn.read_response(within=deadline - time.monotonic())
                except TimeoutError:
                    conn.close()
                    failed[i] = ReadTimeoutError(endpoint_url=self._url)
                    continue
                except (OSError, ValueError, IndexError) as exc:
                    conn.close()
                    if reused and isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                        stale.append(i)
                    else:
                        failed[i] = ConnectionClosedError(endpoint_url=self._url)
                    continue
                self._release(conn)
                answer, retry = self._answer(operation, status, headers, payload)
                if retry and isinstance(answer, ClientError):
                    failed[i] = answer
                else:
                    results[i] = answer
        finally:  # an error on its way out: the calls not read are closed, never reused
            for i, conn, _ in waiting[read:]:
                conn.close()
                failed[i] = ReadTimeoutError(endpoint_url=self._url)
        return failed, stale

    def _answer(
        self, operation: str, status: int, headers: dict[bytes, bytes], payload: bytes
    ) -> tuple[dict[str, Any] | ClientError, bool]:
        """(the response dict or the ClientError, whether the standard rules retry it)."""
        if status < 300:
            try:
                answer: dict[str, Any] = json.loads(payload) if payload else {}
            except ValueError:  # a broken answer fails this call alone (retried), not its whole round
                broken = _error_response(status, headers, b"")
                broken["Error"].update(Code="MalformedResponse", Message=f"the {operation} answer is not JSON")
                return ClientError(broken, operation), True
            return answer, False
        error = _error_response(status, headers, payload)
        code = error["Error"]["Code"]
        retry = code in _THROTTLING or code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS
        return ClientError(error, operation), retry

    def _send(self, operation: str, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        request = self._signed(operation, body)
        conn, reused = self._connection()
        try:
            answer = conn.exchange(request)
        except TimeoutError:
            conn.close()
            raise _Retryable(ReadTimeoutError(endpoint_url=self._url)) from None
        except (OSError, ValueError, IndexError) as exc:
            conn.close()
            if reused and isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                # a pooled connection the server had closed while idle: once more on a new one, as urllib3 does
                return self._send_fresh(request)
            raise _Retryable(ConnectionClosedError(endpoint_url=self._url)) from None
        self._release(conn)
        return answer

    def _send_fresh(self, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        conn = self._connect()
        try:
            answer = conn.exchange(request)
        except TimeoutError:
            conn.close()
            raise _Retryable(ReadTimeoutError(endpoint_url=self._url)) from None
        except (OSError, ValueError, IndexError):
            conn.close()
            raise _Retryable(ConnectionClosedError(endpoint_url=self._url)) from None
        self._release(conn)
        return answer

    def _signed(self, operation: str, body: bytes) -> bytes:
        if self._credentials is None:
            raise NoCredentialsError()
        frozen = self._credentials.get_frozen_credentials()  # refreshes expiring credentials
        fixed = self._fixed.get(operation)
        if fixed is None:
            fixed = self._fixed[operation] = (
                ("Content-Type", self._api.content_type),
                ("X-Amz-Target", f"{self._api.target}.{operation}"),
                *self._api.headers,
            )
        keys = sigv4.Frozen(frozen.access_key or "", frozen.secret_key or "", frozen.token)
        return b"POST %s HTTP/1.1\r\n%sUser-Agent: %s\r\nContent-Length: %d\r\n\r\n%s" % (
            self._path,
            self._signer.header_lines(keys, body, fixed).encode(),
            self._user_agent,
            len(body),
            body,
        )

    # -- the pool --------------------------------------------------------------------------------

    def _connection(self) -> tuple[http1.Connection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _connect(self) -> http1.Connection:
        try:
            return http1.Connection(self._host, self._port, self._tls, *self._timeouts)
        except TimeoutError:
            raise _Retryable(ConnectTimeoutError(endpoint_url=self._url)) from None
        except ssl.SSLError as exc:  # a certificate that does not verify: not worth a retry
            raise SSLError(endpoint_url=self._url, error=exc) from None
        except OSError:
            raise _Retryable(EndpointConnectionError(endpoint_url=self._url)) from None

    def _release(self, conn: http1.Connection) -> None:
        if conn.reusable:
            with self._lock:
                if len(self._idle) < self._max_pool:
                    self._idle.append(conn)
                    return
        conn.close()


def _error_response(status: int, headers: dict[bytes, bytes], payload: bytes) -> Any:
    """The error dict botocore's JSON parser would make (botocore/parsers.py, awsQueryCompatible).

    Typed Any, not as botocore-stubs' response TypedDict: that lacks QueryErrorCode and Type,
    which botocore sets."""
    try:
        body = json.loads(payload) if payload else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("__type") or status)
    code = code.split(":", 1)[0].rsplit("#", 1)[-1]
    error: dict[str, Any] = {"Message": body.get("message", body.get("Message", "")), "Code": code}
    query_error = headers.get(b"x-amzn-query-error", b"").decode("ascii", "replace").split(";")
    if len(query_error) == 2 and query_error[0]:
        error.update(QueryErrorCode=code, Code=query_error[0], Type=query_error[1])
    request_id = headers.get(b"x-amzn-requestid", b"").decode("ascii", "replace")
    return {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": request_id}}


def uses_proxy(endpoint_url: str) -> bool:
    """True when the environment sends this endpoint through a proxy (the lean path speaks direct only)."""
    parts = urlsplit(endpoint_url)
    return bool(getproxies().get(parts.scheme)) and not proxy_bypass(parts.hostname or "")
