"""A backup target under an S3 prefix, ``s3://bucket/prefix``: the layout of
:mod:`mrbatch.maintain.target` with one object per file (``prefix/index/<id>.json``...).

Reached like the S3 object store (:mod:`mrbatch.backends.aws`: shared clients, path-style
addressing on a custom endpoint, credentials only from boto3's standard chain), with the
``[s3]`` section's ``endpoint_url``, ``aws_region`` and ``profile`` (not a region's override).
Where ``[s3]`` names no endpoint, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` does (an
S3-compatible store); else AWS itself. The signing region is ``[s3].aws_region``, else
``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else us-east-1 (S3 redirects to the bucket's own).

The guarantees of the directory target hold by S3's own: an object appears whole or not at all
(a PUT, or a multipart upload once completed), so there are no temporary names and an
interrupted backup leaves only complete objects no index entry names. Bytes are spooled to a
temporary file while they are hashed (a blob whose bytes do not hash to its name is never
uploaded), then uploaded as one PUT carrying their SHA-256, which S3 checks, or above
``[s3].multipart_threshold`` in parts of ``[s3].part_size``, each with its SHA-256; a failed
multipart upload is aborted, and ones a killed backup left behind are aborted by the next
backup a day later. Blobs are read back as a stream of ranged GETs. The bucket is never
created: it is the operator's, with its own region, versioning, lifecycle and access.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import botocore.exceptions as bx

from ..config.aws import AwsTarget, S3Config
from ..errors import MrbatchError, NotFoundError, UnavailableError, UsageError
from ..maintain.target import FORMAT, MARKER, BackupError, blob_name
from . import s3io
from .aws import client, code, guard, status

if TYPE_CHECKING:
    from ..config.workspace import Workspace

__all__ = ["S3Target", "open_target", "parse"]

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
STALE_UPLOAD = dt.timedelta(days=1)  # an unfinished multipart upload older than this is dead


def parse(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix``; the prefix is '' or ends with '/'."""
    rest = url[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise UsageError(
            f"backup target {url}: {bucket!r} is not a bucket name",
            hint="give s3://BUCKET/PREFIX (3-63 lowercase letters, digits, '-', '.')",
        )
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise UsageError(f"backup target {url}: '.' and '..' are not prefix parts")
    return bucket, "".join(f"{p}/" for p in parts)


def _aws_target(bucket: str, settings: S3Config) -> AwsTarget:
    endpoint = settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
    region = settings.aws_region or os.environ.get("AWS_REGION")
    return AwsTarget(
        name=bucket,
        endpoint_url=endpoint.rstrip("/") if endpoint else None,
        aws_region=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        profile=settings.profile,
    )


def open_target(url: str, ws: Workspace | None, create: bool) -> S3Target:
    """The target at ``url``; ``create``: write the marker if needed (a backup), otherwise it
    must be there (a restore). A missing bucket is a UsageError naming it."""
    bucket, prefix = parse(url)
    settings = ws.config.s3 if ws is not None else S3Config()
    spool = None
    if ws is not None:
        spool = ws.data_dir / "spool"
        spool.mkdir(parents=True, exist_ok=True)
    target = S3Target(
        client("s3", _aws_target(bucket, settings)),
        bucket,
        prefix,
        threshold=settings.multipart_threshold,
        part_size=settings.part_size,
        spool_dir=str(spool) if spool else None,
    )
    target.check_bucket()
    if create:
        target.initialize()
        target.abort_stale_uploads()
    elif not target.initialized():
        raise UsageError(
            f"backup target {target.location}: not an mrbatch backup (no {MARKER})",
            hint="give the S3 prefix `mrbatch backup --to` wrote",
        )
    return target


class _BlobReader(s3io.Reader):
    """A blob as a stream of GETs of its current version (any version holds the same bytes)."""

    def _get(self) -> Any:
        with guard(self._where, f"object {self._key!r}"):
            return self._client.get_object(
                Bucket=self._bucket, Key=self._key, Range=f"bytes={self._pos}-"
            )["Body"]


class S3Target:
    """A backup target under one S3 prefix (see the module's docstring)."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        prefix: str,
        *,
        threshold: int,
        part_size: int,
        spool_dir: str | None,
    ) -> None:
        self.bucket, self.prefix = bucket, prefix
        self.location = f"s3://{bucket}/{prefix}".rstrip("/")
        self.b = s3io.Bucket(s3, bucket, self.location, threshold, part_size, spool_dir)
        self._s3 = s3

    # ------------------------------------------------------------------ names and errors
    def _key(self, name: str) -> str:
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"bad name in a backup target: {name!r}")
        return self.prefix + name

    def _no_bucket(self) -> UsageError:
        return UsageError(
            f"backup target {self.location}: bucket {self.bucket!r} does not exist",
            hint=f"create it first (e.g. `aws s3 mb s3://{self.bucket}`); mrbatch does not"
            " create a backup bucket: its region, versioning, lifecycle and access are yours",
        )

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """aws.guard, but a missing bucket is the operator's to fix (UsageError) and any other
        refusal of the service is a BackupError naming it (never a traceback)."""
        try:
            with guard(self.location, what):
                yield
        except UnavailableError as exc:
            if code(exc.__cause__ or exc) == "NoSuchBucket":
                raise self._no_bucket() from exc
            raise
        except bx.ClientError as exc:
            if code(exc) == "NoSuchBucket":
                raise self._no_bucket() from exc
            raise BackupError(
                f"backup target {self.location}: {what}: {code(exc) or status(exc)}"
            ) from exc

    def check_bucket(self) -> None:
        """UsageError naming the bucket when it is missing or its access is refused."""
        try:
            with self._guard(f"bucket {self.bucket}"):
                self._s3.head_bucket(Bucket=self.bucket)
        except NotFoundError:
            raise self._no_bucket() from None
        except BackupError as exc:
            if status(exc.__cause__ or exc) != 403:
                raise
            raise UsageError(
                f"backup target {self.location}: access to bucket {self.bucket!r} is denied",
                hint="check the credentials of the standard AWS chain and the bucket's policy",
            ) from exc

    def _head(self, name: str) -> dict[str, Any] | None:
        try:
            with self._guard(name):
                return cast("dict[str, Any]", self._s3.head_object(Bucket=self.bucket, Key=name))
        except NotFoundError:
            return None

    # ------------------------------------------------------------------ the protocol
    def initialized(self) -> bool:
        return self._head(self._key(MARKER)) is not None

    def initialize(self) -> None:
        if self.initialized():
            return
        with self._guard("the prefix"):
            listed = self._s3.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        if listed.get("KeyCount", 0):
            raise UsageError(
                f"backup target {self.location}: the prefix holds other objects and no {MARKER}",
                hint="give an empty or new prefix, or one `mrbatch backup` wrote",
            )
        marker = {"format": FORMAT, "created": time.time(), "kind": "mrbatch backup"}
        self.write(MARKER, [json.dumps(marker).encode()])

    def _upload(self, name: str, data: BinaryIO | Iterable[bytes], sha256: str | None) -> int:
        key = self._key(name)
        with s3io.Spool(data, self.b.spool_dir) as spool:
            if sha256 is not None and spool.sha256 != sha256:
                raise BackupError(
                    f"the bytes read for blob {sha256[:12]} hash to {spool.sha256[:12]}",
                    hint="the source object changed or is damaged; run the backup again",
                )
            with self._guard(name):
                s3io.upload(self.b, key, spool, {}, {})
            return spool.size

    def write(self, name: str, chunks: Iterable[bytes]) -> int:
        return self._upload(name, chunks, None)

    def read(self, name: str) -> bytes:
        try:
            with self._guard(name):
                body = self._s3.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
                with contextlib.closing(body):
                    return cast("bytes", body.read())
        except NotFoundError:
            raise NotFoundError(f"backup target {self.location}: no {name}") from None

    def _objects(self, prefix: str) -> Iterator[tuple[str, int]]:
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        with self._guard(f"listing {prefix or '/'}"):
            for page in pages:
                for entry in page.get("Contents", []):
                    if not entry["Key"].endswith("/"):  # a console's "folder" is not a file
                        yield entry["Key"][len(self.prefix) :], int(entry["Size"])

    def list(self, prefix: str) -> list[str]:
        return sorted(name for name, _ in self._objects(prefix))

    def has_blob(self, sha256: str) -> bool:
        return self._head(self._key(blob_name(sha256))) is not None

    def put_blob(self, sha256: str, stream: BinaryIO) -> int:
        return self._upload(blob_name(sha256), stream, sha256)

    def open_blob(self, sha256: str) -> BinaryIO:
        name = blob_name(sha256)
        head = self._head(self._key(name))
        if head is None:
            raise NotFoundError(
                f"backup target {self.location}: blob {sha256[:12]} is missing",
                hint="the backup is damaged; restore from another copy of it",
            )
        size = int(head["ContentLength"])
        return cast("BinaryIO", _BlobReader(self.b, self._key(name), "", size))

    def blobs(self) -> Iterator[tuple[str, int]]:
        """Every blob and its size (for reports and tests)."""
        for name, size in self._objects("blobs/"):
            yield name.rpartition("/")[2], size

    def abort_stale_uploads(self) -> int:
        """Abort the multipart uploads under the prefix started more than a day ago (a backup
        killed mid-upload leaves its parts stored and billed, though never visible)."""
        cutoff = dt.datetime.now(dt.UTC) - STALE_UPLOAD
        aborted = 0
        try:
            with self._guard("multipart uploads"):
                pages = self._s3.get_paginator("list_multipart_uploads").paginate(
                    Bucket=self.bucket, Prefix=self.prefix
                )
                for page in pages:
                    for upload in page.get("Uploads", []):
                        if upload["Initiated"] < cutoff:
                            self._s3.abort_multipart_upload(
                                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                            )
                            aborted += 1
        except MrbatchError:
            pass  # housekeeping only (the store may not list uploads): the backup goes on
        return aborted
