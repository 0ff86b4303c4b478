"""Anchors of the PII audit chain, stored outside Postgres: write one, read them all, check them.

pii_audit is hash-chained, but whoever owns the table can rewrite every row and recompute every
hash: the chain alone then still verifies. An anchor (the chain head's row id and hash, and when
it was taken) copied to a place the table owner cannot rewrite makes that detectable: a rewritten
or deleted row no longer matches the anchor that covered it.

Two kinds of place (ETL_AUDIT_ANCHOR):

- ``file:///some/dir``: one read-only file per anchor, for a mount another party controls
  (a WORM share, a different host's export). Weak by itself: anyone who can write the
  directory can delete a file.
- ``s3://bucket/prefix``: one object per anchor, under Object Lock in COMPLIANCE mode when the
  bucket has Object Lock enabled, so that no one, the account root included, can delete or
  replace it before the retention ends.

Anchors are never overwritten: each has a name of its own (row id and time, zero-padded so names
sort), and a name that exists already is refused. The body holds the row id, the hash and the
time only, never PII.

Driver errors leave this module as etl.errors kinds (ConfigError for a setting or a place that
cannot work, TransientError for what may heal), with messages that name the operation and the
error code only; the S3 client and its error table are etl.aws's.
"""

import json
import os
import re
import tempfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from etl import aws
from etl.errors import ConfigError, TransientError

FORMS = "set ETL_AUDIT_ANCHOR=file:///path or s3://bucket/prefix"
RETENTION_DAYS = 365
_ID_DIGITS = 20  # a bigserial has at most 19 digits: every id fits, and names sort as numbers
_HASH = re.compile(r"[0-9a-f]{1,128}")  # hex only: nothing that could carry PII fits in an anchor
_KEYS = {"id", "hash", "at"}
_NO_LOCK_CONFIG = {"ObjectLockConfigurationNotFoundError"}


@dataclass(frozen=True)
class Anchor:
    """The audit chain's head (row ``id`` and its ``hash``) as it was at time ``at``.

    ``at`` is ISO-8601 in UTC, the moment the anchor was taken: it orders anchors of the same row
    and names the stored copy. Construction validates all three, so a malformed anchor can be
    neither written nor read.
    """

    id: int
    hash: str
    at: str

    def __post_init__(self) -> None:
        if type(self.id) is not int or self.id < 0:
            raise ValueError("anchor id must be a non-negative integer")
        if not isinstance(self.hash, str) or not _HASH.fullmatch(self.hash):
            raise ValueError("anchor hash must be lowercase hex")
        _utc(self.at)

    @classmethod
    def now(cls, id: int, hash: str) -> "Anchor":
        """An anchor of row ``id`` taken now."""
        return cls(id, hash, datetime.now(UTC).isoformat(timespec="microseconds"))

    @property
    def name(self) -> str:
        """The stored copy's file or object name: id, then time, both fixed-width."""
        return f"{self.id:0{_ID_DIGITS}d}-{_utc(self.at):%Y%m%dT%H%M%S%fZ}.json"

    def body(self) -> bytes:
        return json.dumps({"id": self.id, "hash": self.hash, "at": self.at}).encode() + b"\n"


def _utc(at: str) -> datetime:
    if not isinstance(at, str):
        raise ValueError("anchor time must be an ISO-8601 string")
    parsed = datetime.fromisoformat(at)  # ValueError when it is not ISO-8601
    if parsed.utcoffset() != timedelta(0):
        raise ValueError("anchor time must be UTC")
    return parsed


def write(url: str, anchor: Anchor, retention_days: int = RETENTION_DAYS) -> str:
    """Store ``anchor`` at ``url`` without overwriting any earlier one; return where it went.

    For S3 the return value also says whether Object Lock was applied, e.g.
    ``s3://bucket/prefix/<name> (Object Lock COMPLIANCE until 2027-01-02T03:04:05Z)`` or
    ``... (no Object Lock: the bucket has none)``. An anchor of the same row taken at the same
    time is refused (ConfigError), never replaced.
    """
    if retention_days < 1:
        raise ConfigError(f"anchor retention must be at least 1 day, got {retention_days}")
    scheme, where, prefix = _parse(url)
    if scheme == "file":
        return _write_file(Path(where), anchor)
    return _write_s3(where, prefix, anchor, retention_days)


def read_all(url: str) -> list[Anchor]:
    """Every anchor stored at ``url``, sorted by row id, then time.

    A location that does not exist yet, or holds nothing, has no anchors. Anything there that is
    not a well-formed anchor raises ConfigError naming it: the verify step must not skip a
    damaged anchor silently. In S3 every version of every object counts, so neither a newer
    version nor a delete marker can hide an anchor.
    """
    scheme, where, prefix = _parse(url)
    anchors = _read_file(Path(where)) if scheme == "file" else _read_s3(where, prefix)
    return sorted(anchors, key=lambda a: (a.id, _utc(a.at)))


def check(chain_heads: Mapping[int, str], max_id: int | None, anchors: Sequence[Anchor]) -> list[str]:
    """Problems of the audit log against its anchors, as sentences; empty when consistent.

    ``chain_heads`` maps the id of every audit row that exists (at least every anchored one) to
    its stored hash; ``max_id`` is the newest row's id (None: the table is empty). An anchored
    row that is gone was deleted, one whose hash differs was rewritten, and anchors beyond the
    newest row mean the newest rows were deleted (all of them: truncated).
    """
    problems: list[str] = []
    beyond = [a for a in anchors if max_id is None or a.id > max_id]
    for a in anchors:
        if max_id is None or a.id > max_id:
            continue
        stored = chain_heads.get(a.id)
        if stored is None:
            problems.append(f"audit row {a.id}, anchored at {a.at}, is missing: it was deleted")
        elif stored != a.hash:
            problems.append(
                f"audit row {a.id} has hash {stored[:16]}..., but was anchored at {a.at} with"
                f" {a.hash[:16]}...: it was rewritten"
            )
    if beyond:
        newest = max(beyond, key=lambda a: (a.id, _utc(a.at)))
        where = "the audit log has no rows" if max_id is None else f"the newest audit row is {max_id}"
        what = "it was truncated" if max_id is None else "its newest rows were deleted"
        problems.append(
            f"{len(beyond)} anchor(s) reach beyond the log, up to row {newest.id} anchored at {newest.at},"
            f" but {where}: {what}"
        )
    return problems


def _parse(url: str) -> tuple[str, str, str]:
    """(scheme, directory or bucket, key prefix ending in "/" or empty) of an anchor URL."""
    parts = urlsplit(url or "")
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path.startswith("/"):
        if parts.query or parts.fragment:
            raise ConfigError(f"audit anchor URL: a file:// URL takes a path only; {FORMS}")
        return "file", unquote(parts.path), ""
    if parts.scheme == "s3" and parts.netloc:
        if parts.query or parts.fragment:
            raise ConfigError(f"audit anchor URL: an s3:// URL takes a bucket and a prefix only; {FORMS}")
        prefix = parts.path.strip("/")
        return "s3", parts.netloc, f"{prefix}/" if prefix else ""
    scheme = f"{parts.scheme}://" if parts.scheme else "a URL without a scheme"
    raise ConfigError(f"audit anchor URL: {scheme} is not accepted (or the path is not absolute); {FORMS}")


def _from_body(where: str, name: str, raw: bytes) -> Anchor:
    """The anchor stored as ``name`` (shown as ``where``), or ConfigError naming it when it is not one.

    The name must be the one its content gives: an anchor copied or renamed to another row or
    time is as suspect as a garbled one.
    """
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or set(data) != _KEYS:
            raise ValueError("not an object with exactly id, hash and at")
        anchor = Anchor(data["id"], data["hash"], data["at"])
        if anchor.name != name:
            raise ValueError("the name does not match the content")
    except (ValueError, TypeError, UnicodeDecodeError):
        raise ConfigError(
            f"audit anchor {where} is malformed: it is not an anchor, or not the one its name says"
        ) from None
    return anchor


# file://


@contextmanager
def _file_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
        raise ConfigError(f"audit anchor {operation} refused: {type(exc).__name__}") from None
    except OSError as exc:  # disk full, I/O errors, a network mount gone away
        raise TransientError(f"audit anchor {operation} failed: {type(exc).__name__}") from None


def _write_file(directory: Path, anchor: Anchor) -> str:
    """Write to a hidden temp file, fsync, make it read-only, then hard-link it to its name.

    A link, unlike rename, fails when the name exists, so an earlier anchor is never replaced;
    and a reader sees either no file or a complete one.
    """
    final = directory / anchor.name
    with _file_errors("write"):
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".anchor-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(anchor.body())
                f.flush()
                os.fsync(f.fileno())
                os.fchmod(f.fileno(), 0o444)
            try:
                os.link(tmp, final)
            except FileExistsError:
                raise ConfigError(f"audit anchor write refused: {anchor.name} exists already") from None
        finally:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new name survives a crash
        finally:
            os.close(dir_fd)
    return final.as_uri()


def _read_file(directory: Path) -> list[Anchor]:
    """Every regular file in ``directory`` but hidden ones (writes in progress, or crashed)."""
    anchors: list[Anchor] = []
    with _file_errors("read"):
        if not directory.exists():
            return []
        for path in sorted(directory.iterdir()):
            if path.name.startswith(".") or path.is_dir():
                continue
            anchors.append(_from_body(str(path), path.name, path.read_bytes()))
    return anchors


# s3://


def _s3_errors(operation: str, expected: Collection[str] = ()) -> AbstractContextManager[aws.Refusal]:
    return aws.translated("S3", operation, expected)


def _lock_days(client: Any, bucket: str) -> int | None:
    """Days of the bucket's default retention, 0 without one; None when Object Lock is off."""
    with _s3_errors("GetObjectLockConfiguration", expected=_NO_LOCK_CONFIG) as missing:
        config = client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    if missing.code is not None:
        return None  # never configured: not an error, the bucket just cannot lock
    if config.get("ObjectLockEnabled") != "Enabled":
        return None
    default = config.get("Rule", {}).get("DefaultRetention", {})
    return int(default.get("Days") or 0) + 366 * int(default.get("Years") or 0)


def _write_s3(bucket: str, prefix: str, anchor: Anchor, retention_days: int) -> str:
    """PutObject that creates only (If-None-Match: *), locked when the bucket can lock.

    The retention is never shorter than the bucket's default: an explicit date overrides it.
    """
    client = aws.client("s3")
    key = prefix + anchor.name
    params: dict[str, Any] = {
        "Bucket": bucket,
        "Key": key,
        "Body": anchor.body(),
        "ContentType": "application/json",
        # S3 refuses Object Lock parameters without a checksum; botocore sends one by default, but
        # not under AWS_REQUEST_CHECKSUM_CALCULATION=when_required unless asked to.
        "ChecksumAlgorithm": "SHA256",
    }
    if "IfNoneMatch" in client.meta.service_model.operation_model("PutObject").input_shape.members:
        params["IfNoneMatch"] = "*"  # in botocore since S3 conditional writes (2024); 412 if the key exists
    default_days = _lock_days(client, bucket)
    until: datetime | None = None
    if default_days is not None:
        until = (datetime.now(UTC) + timedelta(days=max(retention_days, default_days))).replace(microsecond=0)
        params.update(ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until)
    with _s3_errors("PutObject"):
        client.put_object(**params)
    location = f"s3://{bucket}/{key}"
    if until is None:
        return f"{location} (no Object Lock: the bucket has none)"
    return f"{location} (Object Lock COMPLIANCE until {until:%Y-%m-%dT%H:%M:%SZ})"


def _read_s3(bucket: str, prefix: str) -> list[Anchor]:
    """Every version of every object directly under the prefix (deeper "directories" are not ours)."""
    client = aws.client("s3")
    anchors: list[Anchor] = []
    with _s3_errors("ListObjectVersions"):
        pages = list(client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"))
    for page in pages:
        for version in page.get("Versions", []):
            key = version["Key"]
            if key == prefix:  # a "directory" marker some tools create
                continue
            where, extra = f"s3://{bucket}/{key}", {}
            if version.get("VersionId") not in (None, "null"):  # "null": the bucket is not versioned
                where, extra = f"{where} (version {version['VersionId']})", {"VersionId": version["VersionId"]}
            with _s3_errors("GetObject"):
                raw = client.get_object(Bucket=bucket, Key=key, **extra)["Body"].read()
            anchors.append(_from_body(where, key[len(prefix) :], raw))
    return anchors
