"""etl.wire.sigv4 signs exactly as botocore's own SigV4 signer does, for the requests the lean path sends."""

import json

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from etl.errors import ConfigError
from etl.wire import sigv4

FIXED = [
    ("Content-Type", "application/x-amz-json-1.0"),
    ("X-Amz-Target", "AmazonSQS.ReceiveMessage"),
    ("x-amzn-query-mode", "true"),
]


@pytest.mark.parametrize(
    ("url", "host", "path", "token"),
    [
        ("https://sqs.eu-west-1.amazonaws.com/", "sqs.eu-west-1.amazonaws.com", "/", None),
        ("https://sqs.eu-west-1.amazonaws.com/", "sqs.eu-west-1.amazonaws.com", "/", "session-token/with+odd=chars"),
        ("http://127.0.0.1:4566/", "127.0.0.1:4566", "/", "t"),
        ("http://localhost:9324/sqs", "localhost:9324", "/sqs", None),
    ],
)
def test_the_authorization_header_is_botocores(url: str, host: str, path: str, token: str | None) -> None:
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    body = json.dumps({"QueueUrl": "https://sqs.eu-west-1.amazonaws.com/1/q", "MaxNumberOfMessages": 10}).encode()
    theirs = AWSRequest(method="POST", url=url, data=body, headers=dict(FIXED))
    SigV4Auth(creds.get_frozen_credentials(), "sqs", "eu-west-1").add_auth(theirs)

    signer = sigv4.Signer(host, path, "eu-west-1")
    frozen = sigv4.Frozen(creds.access_key, creds.secret_key, creds.token)
    ours = dict(signer.headers(frozen, body, FIXED, amz_date=theirs.headers["X-Amz-Date"]))

    assert ours["Authorization"] == theirs.headers["Authorization"]
    assert ours["Host"] == host
    assert ours.get("X-Amz-Security-Token") == theirs.headers.get("X-Amz-Security-Token")


def test_the_signing_key_follows_the_secret_and_the_day() -> None:
    signer = sigv4.Signer("h", "/", "us-east-1")
    a = dict(signer.headers(sigv4.Frozen("AK", "one", None), b"{}", FIXED, amz_date="20260101T000000Z"))
    b = dict(signer.headers(sigv4.Frozen("AK", "two", None), b"{}", FIXED, amz_date="20260101T000000Z"))
    c = dict(signer.headers(sigv4.Frozen("AK", "two", None), b"{}", FIXED, amz_date="20260102T000000Z"))
    assert len({a["Authorization"], b["Authorization"], c["Authorization"]}) == 3
    assert "20260102/us-east-1/sqs/aws4_request" in c["Authorization"]


def test_requests_that_share_a_second_each_get_botocores_signature() -> None:
    """What one second shares (_prepare) is reused across bodies, operations and credentials:
    every request still gets botocore's own signature, and header_lines are headers() as HTTP."""
    signer = sigv4.Signer("127.0.0.1:4566", "/", "eu-west-1")
    delete = (FIXED[0], ("X-Amz-Target", "AmazonSQS.DeleteMessageBatch"), FIXED[2])
    people = [Credentials("AKID1", "secret-one", None), Credentials("AKID2", "secret-two", "tok")]
    for creds in people * 2:
        frozen = sigv4.Frozen(creds.access_key, creds.secret_key, creds.token)
        for fixed in (tuple(FIXED), delete):
            for body in (b"{}", json.dumps({"QueueUrl": "q", "Entries": [{"Id": "0"}]}).encode(), b"x" * 5000):
                theirs = AWSRequest(method="POST", url="http://127.0.0.1:4566/", data=body, headers=dict(fixed))
                SigV4Auth(creds.get_frozen_credentials(), "sqs", "eu-west-1").add_auth(theirs)
                ours = signer.headers(frozen, body, fixed, amz_date=theirs.headers["X-Amz-Date"])
                assert dict(ours)["Authorization"] == theirs.headers["Authorization"]

                lines = signer.header_lines(frozen, body, fixed)
                assert lines.endswith("\r\n")
                sent = [tuple(line.split(": ", 1)) for line in lines[:-2].split("\r\n")]
                assert sent == signer.headers(frozen, body, fixed, amz_date=dict(sent)["X-Amz-Date"])


def test_threads_sharing_a_signer_get_each_requests_own_signature() -> None:
    """Threads share one signer (a fetch's round and the visibility keeper): its per-second cache
    is swapped whole, never iterated while another thread fills it (an outside review made the
    earlier dict raise 'changed size during iteration' with 8 threads and 50 credential sets)."""
    import sys
    import threading

    signer = sigv4.Signer("127.0.0.1:4566", "/", "eu-west-1")
    people = [sigv4.Frozen(f"AKID{i}", f"secret-{i}", None if i % 2 else f"tok{i}") for i in range(50)]
    failures: list[BaseException] = []
    wrong: list[str] = []

    def sign(n: int) -> None:
        try:
            for k in range(300):
                who = people[(n * 7 + k) % len(people)]
                body = f'{{"n":{k}}}'.encode()
                sent = dict(
                    line.split(": ", 1) for line in signer.header_lines(who, body, tuple(FIXED))[:-2].split("\r\n")
                )
                alone = sigv4.Signer("127.0.0.1:4566", "/", "eu-west-1")
                if (
                    dict(alone.headers(who, body, FIXED, amz_date=sent["X-Amz-Date"]))["Authorization"]
                    != sent["Authorization"]
                ):
                    wrong.append(who.access_key)
        except BaseException as exc:
            failures.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=sign, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert failures == [] and wrong == []


@pytest.mark.parametrize("token", ["tok\r\nX-Evil: 1", "tok\nX-Evil: 1", "tok\r"])
def test_a_header_value_with_a_line_break_is_refused_not_sent(token: str) -> None:
    signer = sigv4.Signer("h", "/", "us-east-1")
    with pytest.raises(ConfigError, match="line break"):
        signer.header_lines(sigv4.Frozen("AK", "secret", token), b"{}", tuple(FIXED))
