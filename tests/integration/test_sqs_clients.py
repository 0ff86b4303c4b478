"""One conformance suite for both SQS clients (ETL_SQS_CLIENT=lean|boto3), run against moto's
server and against LocalStack where it is installed: the same assertions on both clients.

What boto3 gives and the lean client must keep: the calls' answers (bodies, attributes, partial
batch failures), error codes mapped to our kinds (etl.aws.translated), retries with backoff on
throttling and 5xx, credentials from the chain with refresh, endpoint resolution through
AWS_ENDPOINT_URL_SQS and the region, TLS verification (and AWS_CA_BUNDLE). Faults come from a real
HTTP server in front of the real SQS server (tests.support.FrontServer), never from mocks.
"""

import dataclasses
import datetime
import ipaddress
import json
import ssl
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import AWS_ENV, FrontServer, receive_all, wait_until

from etl.sources.sqs import queue as sqs  # isort: skip
from etl.wire import lean as sqs_lean  # isort: skip
from etl.errors import ConfigError, TransientError  # isort: skip
from etl.demo.processes import LocalStack, free_port  # isort: skip
from etl import aws  # isort: skip

KINDS = ["lean", "boto3"]


@pytest.fixture(scope="module")
def localstack_endpoint() -> Iterator[str]:
    python = LocalStack.python()
    if python is None:
        pytest.skip(
            "LocalStack is not installed at /tmp/localstack-venv: the LocalStack half of the SQS client "
            "conformance suite is skipped (install it as ../shared/sqs-servers.md says, or run `make bench` once)"
        )
    server = LocalStack(python)
    yield server.endpoint
    server.stop()


@pytest.fixture(params=["moto", "localstack"])
def endpoint(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The SQS server's endpoint, set as AWS_ENDPOINT_URL_SQS with local credentials."""
    url: str = request.getfixturevalue("sqs_endpoint" if request.param == "moto" else "localstack_endpoint")
    for name, value in {**AWS_ENV, "AWS_ENDPOINT_URL_SQS": url}.items():
        monkeypatch.setenv(name, value)
    return url


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def new_queue_url(visibility: int = 30) -> str:
    url = sqs.create_queue(f"conformance-{uuid.uuid4().hex[:8]}")
    sqs.make_client().call(
        "SetQueueAttributes", {"QueueUrl": url, "Attributes": {"VisibilityTimeout": str(visibility)}}
    )
    return url


def queue_for(url: str, kind: str) -> sqs.Queue:
    client = sqs.make_client(6, kind)
    assert isinstance(client, sqs_lean.LeanClient) == (kind == "lean"), "the setting must choose the client"
    return sqs.Queue(url, client, threads=4)


def bogus(message: sqs.Message) -> sqs.Message:
    """The same message with a receipt handle SQS will not accept."""
    return sqs.Message(message.message_id, "not-a-receipt-handle", message.body, message.sent_timestamp_ms)


# ---- the calls' answers -------------------------------------------------------------------------


def test_receive_returns_what_was_sent_with_its_attributes(endpoint: str, kind: str) -> None:
    url = new_queue_url()
    bodies = [json.dumps({"n": i, "ip": "198.51.100.7", "text": "é ✓ 😀 \\u0000-free"}) for i in range(23)]
    bodies.append("x" * 200_000)  # a large body, sent on its own batch
    ids = sqs.Queue(url).send(bodies)
    queue = queue_for(url, kind)
    started_ms = time.time() * 1000

    got = receive_all(queue, len(bodies), visibility_timeout=30)

    assert sorted(m.message_id for m in got) == sorted(ids)
    assert sorted(m.body for m in got) == sorted(bodies)
    assert all(m.receive_count == 1 for m in got)
    assert all(abs(m.sent_timestamp_ms - started_ms) < 120_000 for m in got)
    assert len({m.receipt_handle for m in got}) == len(got)


def test_an_empty_queue_is_long_polled(endpoint: str, kind: str) -> None:
    queue = queue_for(new_queue_url(), kind)
    started = time.monotonic()
    assert queue.receive(10, wait_seconds=1) == []
    assert time.monotonic() - started >= 0.9


def test_a_delete_batch_reports_only_the_messages_it_could_not_delete(endpoint: str, kind: str) -> None:
    url = new_queue_url()
    sqs.Queue(url).send([f"m{i}" for i in range(15)])
    queue = queue_for(url, kind)
    got = receive_all(queue, 15, visibility_timeout=30)
    refused = got[3]

    failed = queue.delete([*got[:3], bogus(refused), *got[4:]])

    assert failed == [refused.message_id]
    depth = queue.depth()
    assert depth["visible"] + depth["in_flight"] == 1  # only the one with the bad handle is left


def test_visibility_changes_release_messages_and_report_failures(endpoint: str, kind: str) -> None:
    url = new_queue_url()
    sqs.Queue(url).send(["a", "b", "c", "d"])
    queue = queue_for(url, kind)
    got = receive_all(queue, 4, visibility_timeout=60)

    assert queue.change_visibility([*got[:3], bogus(got[3])], 0) == [got[3].message_id]

    again = receive_all(queue, 3, visibility_timeout=60)
    assert sorted(m.message_id for m in again) == sorted(m.message_id for m in got[:3])
    assert all(m.receive_count == 2 for m in again)
    assert queue.change_visibility(again, 120) == []


def test_a_missing_queue_is_a_config_error(endpoint: str, kind: str) -> None:
    url = new_queue_url()
    queue = queue_for(url.rsplit("/", 1)[0] + f"/missing-{uuid.uuid4().hex[:6]}", kind)
    message = sqs.Message("id", "rh", "", 0)
    with pytest.raises(ConfigError, match="does not exist"):
        queue.receive(10)
    with pytest.raises(ConfigError, match="does not exist"):
        queue.delete([message])
    with pytest.raises(ConfigError, match="does not exist"):
        queue.change_visibility([message], 0)


# ---- faults: retries and error codes, through a real HTTP server in front ----------------------


@pytest.fixture
def front(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FrontServer]:
    server = FrontServer(endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", server.endpoint)
    yield server
    server.stop()


def hot_calls(front: FrontServer, target: str) -> int:
    return sum(1 for t, _ in front.calls if t == f"AmazonSQS.{target}")


@pytest.mark.parametrize(
    ("status", "code", "query_error"),
    [
        (400, "ThrottlingException", "Throttling;Sender"),
        (400, "RequestThrottled", "RequestThrottled;Sender"),
        (503, "ServiceUnavailable", ""),
        (500, "InternalError", ""),
    ],
)
def test_throttling_and_5xx_are_retried(
    front: FrontServer, kind: str, status: int, code: str, query_error: str
) -> None:
    url = new_queue_url()
    sqs.Queue(url).send(["one"])
    queue = queue_for(url, kind)
    front.status, front.code, front.query_error, front.fail = status, code, query_error, 2

    got = queue.receive(10, wait_seconds=1)

    assert [m.body for m in got] == ["one"]
    assert hot_calls(front, "ReceiveMessage") == 3  # two refused, the third answered
    front.fail = 2
    assert queue.delete(got) == []
    assert hot_calls(front, "DeleteMessageBatch") == 3


def test_concurrent_batches_retry_each_failed_call(front: FrontServer, kind: str) -> None:
    """Three delete batches sent at once (threads or one multiplexing thread): the two refused are
    retried, each on its own, and every message ends deleted."""
    url = new_queue_url()
    sqs.Queue(url).send([f"m{i}" for i in range(30)])
    queue = queue_for(url, kind)
    got = receive_all(queue, 30, visibility_timeout=30)
    front.calls.clear()
    front.status, front.code, front.query_error, front.fail = 400, "ThrottlingException", "Throttling;Sender", 2

    assert queue.delete(got) == []

    assert hot_calls(front, "DeleteMessageBatch") == 5
    depth = queue.depth()
    assert depth["visible"] + depth["in_flight"] == 0


def test_a_lasting_5xx_is_transient_after_four_attempts(front: FrontServer, kind: str) -> None:
    queue = queue_for(new_queue_url(), kind)
    front.status, front.code, front.fail = 500, "InternalError", 10
    with pytest.raises(TransientError, match="SQS ReceiveMessage failed: InternalError"):
        queue.receive(10)
    assert hot_calls(front, "ReceiveMessage") == 4  # botocore's standard mode: 3 retries


def test_one_failed_receive_of_several_keeps_what_the_others_received(front: FrontServer, kind: str) -> None:
    """Concurrent ReceiveMessage calls, one refused for good: the messages the others took (now
    invisible) are handed on, not held back for the whole visibility timeout."""
    url = new_queue_url()
    sqs.Queue(url).send([f"m{i}" for i in range(30)])
    queue = queue_for(url, kind)
    front.status, front.code, front.query_error, front.fail = 403, "AccessDenied", "AccessDenied;Sender", 1

    got = queue.receive(30, visibility_timeout=60)

    assert hot_calls(front, "ReceiveMessage") == 3 and got
    in_flight = wait_until(lambda: queue.depth()["in_flight"] or None, 10, "SQS to count what it handed out")
    # Distinct messages: concurrent receives on moto, which takes no lock between finding a visible
    # message and marking it received, can hand one message to two calls under load (a CI run:
    # 20 returned, 19 in flight); SQS itself delivers at least once, and the write stores one row.
    assert len({m.message_id for m in got}) == in_flight, "every message SQS handed out was returned"
    front.fail = 3
    with pytest.raises(ConfigError, match="refused: AccessDenied"):  # all refused: the error itself
        queue.receive(30)


@pytest.mark.parametrize("stall_after", [0, 2], ids=["first-to-arrive", "last-to-arrive"])
def test_a_stalled_call_times_out_alone_within_one_read_timeout(front: FrontServer, stall_after: int) -> None:
    """The lean client sends a round's calls at once and reads the answers last-sent first. One
    call stalling past the read timeout (the first of the round to reach the server, or the last,
    which is read first) must neither hold back the answers of the others nor stretch the wait
    beyond one read timeout: it alone is retried."""
    url = new_queue_url()
    sqs.Queue(url).send([f"m{i}" for i in range(30)])
    stock = aws.sqs(6, 3)
    client = sqs_lean.LeanClient(dataclasses.replace(stock.wire, read_timeout=1.0), stock, max_pool=6)
    queue = sqs.Queue(url, client, threads=3)
    front.stall, front.stall_seconds, front.stall_after = 1, 6.0, stall_after

    started = time.monotonic()
    got = queue.receive(30, visibility_timeout=60)
    took = time.monotonic() - started

    assert hot_calls(front, "ReceiveMessage") == 4, "three at once, the stalled one retried once"
    assert took < 4.0, f"one read timeout (1 s) and a retry, not the stall (6 s): took {took:.1f} s"
    # distinct ids: moto, like SQS (at least once), may hand one message to two concurrent calls
    assert len({m.message_id for m in got}) >= 20, "the two calls answered in time kept theirs, the retry got more"


@pytest.mark.parametrize(
    ("status", "code", "query_error", "kind_of_error", "says"),
    [
        (400, "QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue;Sender", ConfigError, "does not exist"),
        (403, "AccessDenied", "AccessDenied;Sender", ConfigError, "refused: AccessDenied"),
        (400, "InvalidParameterValue", "", ConfigError, "refused: InvalidParameterValue"),
        (400, "KmsThrottled", "KMS.ThrottlingException;Sender", TransientError, "KMS.ThrottlingException"),
    ],
)
def test_error_codes_map_to_our_kinds_without_retrying_client_faults(
    front: FrontServer,
    kind: str,
    status: int,
    code: str,
    query_error: str,
    kind_of_error: type[Exception],
    says: str,
) -> None:
    queue = queue_for(new_queue_url(), kind)
    front.status, front.code, front.query_error, front.fail = status, code, query_error, 1
    with pytest.raises(kind_of_error, match=says):
        queue.change_visibility([sqs.Message("id", "rh", "", 0)], 0)
    assert hot_calls(front, "ChangeMessageVisibilityBatch") == 1


@pytest.mark.long(14)
def test_an_unreachable_endpoint_is_transient(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**AWS_ENV, "AWS_ENDPOINT_URL_SQS": f"http://127.0.0.1:{free_port()}"}.items():
        monkeypatch.setenv(name, value)
    queue = queue_for("http://127.0.0.1/000000000000/nowhere", kind)
    with pytest.raises(TransientError, match=r"SQS ReceiveMessage failed at http://127\.0\.0\.1:\d+: cannot connect "):
        queue.receive(10)
    with pytest.raises(TransientError, match="SQS DeleteMessageBatch failed"):
        queue.delete([sqs.Message("id", "rh", "", 0)])
    with pytest.raises(TransientError, match="SQS ChangeMessageVisibilityBatch failed"):
        queue.change_visibility([sqs.Message(f"id{i}", "rh", "", 0) for i in range(25)], 0)  # 3 batches at once


# ---- credentials, endpoint, TLS -------------------------------------------------------------------


def test_missing_credentials_are_a_config_error(
    endpoint: str, kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = new_queue_url()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE", raising=False)
    with pytest.raises(ConfigError, match="set AWS credentials"):
        queue_for(url, kind).receive(10)


def test_expiring_credentials_from_the_chain_are_refreshed(
    front: FrontServer, kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A credential_process profile whose credentials expire within botocore's mandatory refresh
    window: every call must fetch fresh ones (a new access key each time)."""
    url = new_queue_url()
    counter = tmp_path / "count"
    script = tmp_path / "creds.py"
    script.write_text(
        "import datetime, json, pathlib\n"
        f"p = pathlib.Path({str(counter)!r}); n = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(n))\n"
        "exp = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)\n"
        "print(json.dumps({'Version': 1, 'AccessKeyId': f'AKREFRESH{n}', 'SecretAccessKey': 's', "
        "'SessionToken': 't', 'Expiration': exp.isoformat()}))\n"
    )
    config = tmp_path / "config"
    config.write_text(f"[profile refresh]\ncredential_process = {sys.executable} {script}\nregion = us-east-1\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_PROFILE", "refresh")
    queue = queue_for(url, kind)

    for _ in range(3):
        queue.receive(10)

    keys = [key for target, key in front.calls if target == "AmazonSQS.ReceiveMessage"]
    assert len(keys) == 3 and all(k.startswith("AKREFRESH") for k in keys)
    assert len(set(keys)) == 3, f"credentials were not refreshed: {keys}"


def test_endpoint_and_tls_are_resolved_as_botocore_does(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**AWS_ENV, "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_SQS", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    lean = sqs.make_client(4, "lean")
    assert isinstance(lean, sqs_lean.LeanClient)
    assert lean.endpoint_url == sqs.make_client(4, "boto3").endpoint_url == "https://sqs.eu-west-1.amazonaws.com"
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert not isinstance(sqs.make_client(4, "lean"), sqs_lean.LeanClient), "a proxied endpoint stays on boto3"


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


def test_tls_is_verified_and_aws_ca_bundle_is_honoured(
    sqs_endpoint: str, kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in {**AWS_ENV, "AWS_ENDPOINT_URL_SQS": sqs_endpoint}.items():
        monkeypatch.setenv(name, value)
    url = new_queue_url()
    sqs.Queue(url).send(["over tls"])
    context, cert = _self_signed(tmp_path)
    server = FrontServer(sqs_endpoint, tls=context)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", server.endpoint)
        with pytest.raises(TransientError, match="SSLError"):  # a certificate nobody vouches for
            queue_for(url, kind).receive(10)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
        got = queue_for(url, kind).receive(10, wait_seconds=1)
        assert [m.body for m in got] == ["over tls"]
    finally:
        server.stop()
