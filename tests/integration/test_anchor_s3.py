"""etl.pii.anchor against S3 as moto's server speaks it (a real HTTP server in this process, no mocks).

What moto 5.2.5 does, and these tests hold: PutObject honours If-None-Match: * (412
PreconditionFailed when the key exists) and stores Object Lock mode and retain-until date per
version, returned by HeadObject; a locked version cannot be deleted. GetObjectRetention is not
implemented (moto answers the plain GetObject, which botocore cannot parse), so the lock is read
back with HeadObject.
"""

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from etl import aws
from etl.demo.processes import LOCAL_AWS, MotoServer
from etl.errors import ConfigError
from etl.pii import anchor
from etl.pii.anchor import Anchor

pytestmark = pytest.mark.integration

H1, H2 = "1" * 64, "2" * 64


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def s3(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An S3 client made exactly as etl.pii.anchor makes its own (etl.aws), pointed at moto by the environment."""
    for name, value in LOCAL_AWS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.endpoint)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return aws.client("s3")


def new_bucket(s3: Any, locked: bool, default: dict[str, Any] | None = None) -> str:
    name = f"anchors-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=locked)
    if default:
        s3.put_object_lock_configuration(
            Bucket=name, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": default}}
        )
    return name


def test_locked_bucket_keeps_every_anchor_under_compliance_lock(s3: Any) -> None:
    bucket = new_bucket(s3, locked=True, default={"Mode": "GOVERNANCE", "Days": 1})
    url = f"s3://{bucket}/audit/anchors"
    first, second = Anchor.now(41, H1), Anchor.now(42, H2)

    before = datetime.now(UTC)
    written = [anchor.write(url, a) for a in (second, first)]
    assert written[0].startswith(f"s3://{bucket}/audit/anchors/{second.name} (Object Lock COMPLIANCE until ")
    assert anchor.read_all(url) == [first, second]

    for a in (first, second):
        head = s3.head_object(Bucket=bucket, Key=f"audit/anchors/{a.name}")
        assert head["ObjectLockMode"] == "COMPLIANCE"  # not the bucket's GOVERNANCE default
        until = head["ObjectLockRetainUntilDate"]
        assert before + timedelta(days=365) - timedelta(seconds=5) <= until <= before + timedelta(days=366)
        body = s3.get_object(Bucket=bucket, Key=f"audit/anchors/{a.name}")["Body"].read()
        assert json.loads(body) == {"id": a.id, "hash": a.hash, "at": a.at}


def test_locked_anchor_cannot_be_overwritten_deleted_or_hidden(s3: Any) -> None:
    bucket = new_bucket(s3, locked=True)  # Object Lock on, no default retention
    url = f"s3://{bucket}/p"
    original = Anchor.now(7, H1)
    assert "(Object Lock COMPLIANCE until " in anchor.write(url, original)
    key = f"p/{original.name}"

    # etl.pii.anchor itself refuses: If-None-Match: * makes S3 answer 412.
    with pytest.raises(ConfigError, match="PutObject refused: PreconditionFailed"):
        anchor.write(url, Anchor(7, H2, original.at))
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=bucket, Key=key, Body=b"{}", IfNoneMatch="*")
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    assert anchor.read_all(url) == [original]

    # A plain PUT (an older client, or someone covering tracks) adds a version; the locked one stays,
    # cannot be deleted, and read_all sees both, so check() flags the forgery.
    forged = Anchor(7, H2, original.at)
    s3.put_object(Bucket=bucket, Key=key, Body=forged.body())
    versions = s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
    locked = next(v["VersionId"] for v in versions if not v["IsLatest"])
    with pytest.raises(ClientError) as denied:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=locked)
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assert sorted(anchor.read_all(url), key=lambda a: a.hash) == [original, forged]
    assert anchor.check({7: H2}, 7, anchor.read_all(url)) != []

    # A delete marker hides the key from ListObjectsV2 but not from read_all.
    s3.delete_object(Bucket=bucket, Key=key)
    assert s3.list_objects_v2(Bucket=bucket, Prefix="p/").get("KeyCount") == 0
    assert original in anchor.read_all(url)

    # A garbled version is reported, with its name and version, never skipped.
    s3.put_object(Bucket=bucket, Key=key, Body=b"garbage")
    with pytest.raises(ConfigError, match=rf"{original.name} \(version .+\) is malformed"):
        anchor.read_all(url)


def test_retention_is_never_shorter_than_the_bucket_default(s3: Any) -> None:
    bucket = new_bucket(s3, locked=True, default={"Mode": "COMPLIANCE", "Years": 2})
    a = Anchor.now(1, H1)
    anchor.write(f"s3://{bucket}", a, retention_days=30)
    until = s3.head_object(Bucket=bucket, Key=a.name)["ObjectLockRetainUntilDate"]
    assert until >= datetime.now(UTC) + timedelta(days=2 * 365)


def test_bucket_without_object_lock_works(s3: Any) -> None:
    bucket = new_bucket(s3, locked=False)
    url = f"s3://{bucket}/anchors/"
    first, second = Anchor.now(1, H1), Anchor.now(2, H2)
    for a in (second, first):
        assert anchor.write(url, a) == f"s3://{bucket}/anchors/{a.name} (no Object Lock: the bucket has none)"
    assert anchor.read_all(url) == [first, second]
    assert "ObjectLockMode" not in s3.head_object(Bucket=bucket, Key=f"anchors/{first.name}")
    with pytest.raises(ConfigError, match="PreconditionFailed"):  # If-None-Match needs no lock
        anchor.write(url, Anchor(1, H2, first.at))

    # Prefixes are separate places: neither a sibling nor a deeper prefix is read.
    elsewhere = Anchor.now(3, H1)
    anchor.write(f"s3://{bucket}/anchors/deeper", elsewhere)
    anchor.write(f"s3://{bucket}/anchors-2", elsewhere)
    assert anchor.read_all(url) == [first, second]
    assert anchor.read_all(f"s3://{bucket}/anchors/deeper") == [elsewhere]
    assert anchor.read_all(f"s3://{bucket}/nothing-here") == []


def test_generic_endpoint_variable_is_honoured(s3: Any, moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = new_bucket(s3, locked=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    a = Anchor.now(1, H1)
    anchor.write(f"s3://{bucket}", a)
    assert anchor.read_all(f"s3://{bucket}") == [a]


def test_missing_bucket_is_a_config_error(s3: Any) -> None:
    missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:12]}/p"
    with pytest.raises(ConfigError, match="bucket does not exist"):
        anchor.read_all(missing)
    with pytest.raises(ConfigError, match="bucket does not exist"):
        anchor.write(missing, Anchor.now(1, H1))
