"""The S3 object store: one versioned bucket per region (AWS S3 or an S3-compatible store).

Every object version carries mrbatch's description in one user-metadata field
(``x-amz-meta-mrbatch``: SHA-256, epoch, origin, the writer's clock, meta, deleted). A version
is named by its SHA-256, as in the local store, so a version recorded in one region (a run's
input, its reference snapshot, a chunk's output) opens in every other, whose S3 VersionIds
differ; the store finds the VersionId holding those bytes (the current version first, then the
key's older versions) and remembers it. Deletions are tombstones: an empty version marked
deleted, which keeps its epoch and clock for the merge rule and replicates like any write.

Every write is conditional on what the store read just before it (If-None-Match: * when the
key was absent, If-Match: the ETag otherwise), so two writers of one key never interleave and
the merge rule of ``apply_replica`` holds under concurrency; a refused write is decided again.

The change feed lives in the bucket (:mod:`mrbatch.backends.s3feed`). A change is fed after its
version is written, and its position is then tagged on the version, so a write cut short before
its feed entry is fed by the next identical write (a durable step repeating its effect, a
replicator repeating its batch). ``head`` and ``list`` report position 0 (reading the tag costs
a request per object); ``put``, ``copy`` and ``changes`` report it. ``purge`` is
:mod:`mrbatch.backends.s3purge`.

S3 answers a PUT (or a completed multipart upload, or a copy) only once the object is stored
durably, across devices and availability zones: ``durable=True`` asks for nothing more here.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import botocore.exceptions as bx

from ..config.aws import AwsTarget
from ..errors import ConflictError, NotFoundError, UnavailableError, UsageError
from ..model.keys import check_key
from ..ports import ObjectInfo, Purged
from . import s3cache, s3io, s3purge
from .aws import client, code, create_bucket, guard
from .s3cache import IDS, VERSIONS, holds, remember
from .s3cache import Version as _Version
from .s3feed import RESERVED, Feed

if TYPE_CHECKING:
    from ..config.workspace import Workspace

__all__ = ["S3ObjectStore", "open_store", "provision"]

_ATTEMPTS = 50
_EMPTY = hashlib.sha256(b"").hexdigest()


class S3ObjectStore:
    def __init__(
        self, target: AwsTarget, region: str, threshold: int, part_size: int, spool_dir: str
    ) -> None:
        self.region = region
        self.bucket = target.name
        self._s3 = client("s3", target)
        self._where = f"{region}: bucket {self.bucket}"
        self._spool_dir = spool_dir
        self.b = s3io.Bucket(self._s3, self.bucket, self._where, threshold, part_size, spool_dir)
        self._feed = Feed(self._s3, self.bucket, self._where)

    # ------------------------------------------------------------------ describing versions
    def _remember(self, key: str, sha: str, version_id: str) -> None:
        remember(IDS, (self.bucket, key, sha), version_id)

    def _version(self, key: str, head: Mapping[str, Any]) -> _Version:
        version_id = str(head.get("VersionId") or "null")
        info = s3io.describe(
            key, head, self.region, lambda: self._hash(key, version_id, int(head["ContentLength"]))
        )
        if not info.deleted:
            self._remember(key, info.sha256, version_id)
        tagged = int(head.get("TagCount", 0)) > 0
        found = _Version(info, version_id, str(head.get("ETag", "")), tagged)
        remember(VERSIONS, (self.bucket, key, version_id), found)
        return found

    def _hash(self, key: str, version_id: str, size: int) -> str:
        with s3io.Reader(self.b, key, version_id, size) as stream:
            with s3io.Spool(stream, self._spool_dir) as spool:
                return spool.sha256

    def _head(self, key: str, version_id: str | None = None) -> _Version | None:
        """The version of ``key`` (the current one unless ``version_id``; a version already
        described in this process is not asked for again: versions never change)."""
        if version_id and (known := VERSIONS.get((self.bucket, key, version_id))):
            return known
        args = {"VersionId": version_id} if version_id else {}
        try:
            with guard(self._where, f"object {key!r}"):
                head = self._s3.head_object(Bucket=self.bucket, Key=key, **args)
        except NotFoundError:
            return None
        except bx.ClientError as exc:
            if code(exc) in ("400", "405", "MethodNotAllowed", "InvalidArgument"):
                return None  # a delete marker, or a VersionId this bucket never had
            raise
        return self._version(key, head)

    def _resolve(self, key: str, version: str | None) -> _Version:
        """The live version of ``key`` holding ``version`` (a SHA-256; None: the current one)."""
        cached = IDS.get((self.bucket, key, version)) if version is not None else None
        found = self._head(key, cached)
        if version is not None and not holds(found, version):
            if cached is not None:
                found = self._head(key)  # the remembered VersionId is gone: look again
            if not holds(found, version):
                found = self._search(key, version)
        if found is None or found.info.deleted:
            what = f" version {version[:12]}" if version else ""
            raise NotFoundError(f"{self.region}: no object {key!r}{what}")
        return found

    def _search(self, key: str, sha: str) -> _Version | None:
        pages = self._s3.get_paginator("list_object_versions").paginate(
            Bucket=self.bucket, Prefix=key
        )
        with guard(self._where, f"versions of {key!r}"):
            for page in pages:
                for entry in page.get("Versions", []):
                    if entry["Key"] != key or (entry.get("Size", 1) == 0 and sha != _EMPTY):
                        continue  # another key, or a tombstone
                    found = self._head(key, entry["VersionId"])
                    if holds(found, sha):
                        return found
        return None

    # ------------------------------------------------------------------ writing versions
    def _write(
        self, key: str, info: ObjectInfo, body: s3io.Spool | None, source: dict[str, str] | None,
        current: _Version | None,
    ) -> ObjectInfo:  # fmt: skip
        """Write one version (bytes from ``body``, server-side from ``source``, or a tombstone),
        conditional on ``current``; then feed it. Raises _Refused when the key moved on."""
        conditions = {"IfNoneMatch": "*"} if current is None else {"IfMatch": current.etag}
        metadata = s3io.encode(info)
        try:
            with guard(self._where, f"object {key!r}"):
                if source is not None:
                    answer = s3io.copy_object(self.b, key, source, info.size, metadata, conditions)
                else:
                    with s3io.Spool(b"") if body is None else _kept(body) as spool:
                        answer = s3io.upload(self.b, key, spool, metadata, conditions)
        except NotFoundError as exc:  # If-Match on a key deleted meanwhile
            raise _Refused from exc
        except bx.ClientError as exc:
            if code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise _Refused from exc  # another writer came first: decide again
            raise
        version_id = str(answer.get("VersionId") or "null")
        if not info.deleted:
            self._remember(key, info.sha256, version_id)
        return replace(info, seq=self._feed.append(info, version_id))

    def _fed(self, found: _Version) -> ObjectInfo:
        """``found`` with its feed position; fed now if a crash cut its write short."""
        seq = self._feed.position(found.info.key, found.version_id) if found.tagged else None
        if seq is None:
            seq = self._feed.append(found.info, found.version_id)
        return replace(found.info, seq=seq)

    def _decide(self, key: str, attempt: Any) -> ObjectInfo:
        """Run ``attempt(current)`` until its conditional write is not refused."""
        for _ in range(_ATTEMPTS):
            try:
                result: ObjectInfo = attempt(self._head(key))
                return result
            except _Refused:
                time.sleep(0.01)
        raise UnavailableError(f"{self._where}: {key!r} kept changing under a write")

    # ------------------------------------------------------------------ the port
    def _check(self, key: str) -> str:
        check_key(key)
        if key.startswith(RESERVED):
            raise UsageError(f"{key!r}: keys under {RESERVED} are mrbatch's own")
        return key

    def put(
        self,
        key: str,
        data: bytes | BinaryIO | Iterable[bytes],
        *,
        meta: Mapping[str, str] | None = None,
        epoch: int = 0,
        durable: bool = False,  # every acknowledged write is durable on S3 (module doc)
    ) -> ObjectInfo:
        self._check(key)
        wanted = dict(meta or {})
        with s3io.Spool(data, self._spool_dir) as spool:

            def attempt(current: _Version | None) -> ObjectInfo:
                if current is not None and not current.info.deleted:
                    old = current.info
                    if (old.sha256, dict(old.meta), old.epoch) == (spool.sha256, wanted, epoch):
                        return self._fed(current)  # same bytes, same meta: nothing changes
                info = self._local(key, spool.sha256, spool.size, wanted, epoch, current)
                return self._write(key, info, spool, None, current)

            return self._decide(key, attempt)

    def _local(
        self, key: str, sha: str, size: int, meta: Mapping[str, str], epoch: int,
        current: _Version | None,
    ) -> ObjectInfo:  # fmt: skip
        # This region's clock, never behind the version it replaces (the merge rule's order).
        now = time.time()
        if current is not None and current.info.modified >= now:
            now = current.info.modified + 1e-6
        return ObjectInfo(key, size, sha, sha, now, self.region, epoch, 0, False, dict(meta))

    def open(self, key: str, *, version: str | None = None) -> BinaryIO:
        found = self._resolve(key, version)
        relocate = lambda: self._relocate(key, version, found.version_id)  # noqa: E731
        return cast(
            "BinaryIO", s3io.Reader(self.b, key, found.version_id, found.info.size, relocate)
        )

    def _relocate(self, key: str, version: str | None, gone: str) -> str:
        """The VersionId holding ``version`` of ``key`` now that ``gone`` (found in the cache)
        answered NoSuchVersion: purged, perhaps by another process."""
        s3cache.forget(self.bucket, [(key, gone)])
        return self._resolve(key, version).version_id

    def get(self, key: str, *, version: str | None = None) -> bytes:
        with self.open(key, version=version) as stream:
            return stream.read()

    def get_range(self, key: str, start: int, length: int, *, version: str | None = None) -> bytes:
        found = self._resolve(key, version)
        end = min(start + length, found.info.size) - 1
        if length <= 0 or start > end:
            return b""
        try:
            return self._range(key, found.version_id, start, end)
        except NotFoundError:
            return self._range(key, self._relocate(key, version, found.version_id), start, end)

    def _range(self, key: str, version_id: str, start: int, end: int) -> bytes:
        with guard(self._where, f"object {key!r}"):
            answer = self._s3.get_object(
                Bucket=self.bucket, Key=key, VersionId=version_id, Range=f"bytes={start}-{end}"
            )
            return bytes(answer["Body"].read())

    def head(self, key: str) -> ObjectInfo | None:
        found = self._head(key)
        return None if found is None or found.info.deleted else found.info

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Live objects under ``prefix``: the latest version of each key, described from what
        this process knows (only versions it never saw cost a HEAD)."""
        found = []
        with guard(self._where, f"objects under {prefix!r}"):
            for key, version_id in s3io.latest(self.b, prefix, skip=RESERVED):
                version = self._head(key, version_id)
                if version is not None and not version.info.deleted:
                    found.append(version.info)
        return iter(found)

    def copy(
        self,
        src: str,
        dst: str,
        *,
        version: str | None = None,
        meta: Mapping[str, str] | None = None,
        epoch: int = 0,
        durable: bool = False,  # as for put
    ) -> ObjectInfo:
        self._check(dst)
        try:
            source = self._resolve(src, version)
        except NotFoundError:
            raise NotFoundError(f"{self.region}: no object {src!r} to copy") from None
        wanted = dict(meta or {})

        def attempt(current: _Version | None) -> ObjectInfo:
            if current is not None and not current.info.deleted:
                old = current.info
                if (old.sha256, dict(old.meta), old.epoch) == (source.info.sha256, wanted, epoch):
                    return self._fed(current)
            info = self._local(dst, source.info.sha256, source.info.size, wanted, epoch, current)
            where = {"Bucket": self.bucket, "Key": src, "VersionId": source.version_id}
            return self._write(dst, info, None, where, current)

        return self._decide(dst, attempt)

    def delete(self, key: str) -> bool:
        self._check(key)
        deleted = False

        def attempt(current: _Version | None) -> ObjectInfo:
            nonlocal deleted
            if current is None:
                deleted = False
                return ObjectInfo(key, 0, "", "", 0.0, self.region)
            if current.info.deleted:
                deleted = False
                return self._fed(current)  # feeds a tombstone a crash kept out of the feed
            tomb = self._local(key, "", 0, {}, current.info.epoch, current)
            tomb = replace(tomb, deleted=True, sha256=current.info.sha256, version="")
            deleted = True
            return self._write(key, tomb, None, None, current)

        self._decide(key, attempt)
        return deleted

    def changes(
        self, after: int, *, prefix: str = "", limit: int = 1000
    ) -> builtins.list[ObjectInfo]:
        found = self._feed.read(after, prefix, limit)
        for info, version_id in found:
            if not info.deleted:
                self._remember(info.key, info.sha256, version_id)
        return [info for info, _ in found]

    def last_seq(self) -> int:
        return self._feed.last()

    def sync(self) -> None:
        """Nothing to do: S3 acknowledges a write once it is durable."""

    def apply_replica(self, info: ObjectInfo, data: BinaryIO | None) -> bool:
        self._check(info.key)
        spool: s3io.Spool | None = None
        if not info.deleted:
            if data is None:
                raise ValueError("a replicated write needs its bytes")
            spool = s3io.Spool(data, self._spool_dir)
            if spool.sha256 != info.sha256:
                spool.file.close()
                raise ConflictError(
                    f"{self.region}: replica of {info.key!r} arrived corrupted"
                    f" (sha256 {spool.sha256[:12]} != {info.sha256[:12]})"
                )
        applied = False

        def attempt(current: _Version | None) -> ObjectInfo:
            nonlocal applied
            applied = current is None or info.rank > current.info.rank
            if current is not None and not applied:
                # The same replica, written before a crash kept it out of the feed: feed it.
                same = (info.sha256, info.deleted, *info.rank)
                if same == (current.info.sha256, current.info.deleted, *current.info.rank):
                    return self._fed(current)
                return current.info
            return self._write(info.key, replace(info, seq=0), spool, None, current)

        try:
            self._decide(info.key, attempt)
        finally:
            if spool is not None:
                spool.file.close()
        return applied

    def purge(self, older_than: float) -> Purged:
        return s3purge.purge(self.b, self._feed, lambda k, v: self._describe(k, v), older_than)

    def _describe(self, key: str, version_id: str) -> ObjectInfo | None:
        found = self._head(key, version_id)
        return None if found is None else found.info

    def presigned_url(self, key: str, expires_in: float) -> str:
        """S3's own presigned GET URL of ``key``'s current version in this bucket."""
        found = self._resolve(key, None)
        with guard(self._where, f"object {key!r}"):
            url: str = self._s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key, "VersionId": found.version_id},
                ExpiresIn=int(expires_in),
            )
        return url


class _Refused(Exception):
    """A conditional write lost to another writer of the same key."""


@contextlib.contextmanager
def _kept(spool: s3io.Spool) -> Iterator[s3io.Spool]:
    """A spool lent to one upload attempt and not closed by it: a refused attempt is followed
    by another that reads the same bytes."""
    yield spool


def open_store(ws: Workspace, region: str) -> S3ObjectStore:
    s3, spool = ws.config.s3, ws.data_dir / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    target = s3.for_region(region)
    return S3ObjectStore(target, region, s3.multipart_threshold, s3.part_size, str(spool))


def provision(ws: Workspace, region: str) -> str:
    """Create the region's bucket with versioning on when it is missing; says what it did."""
    return create_bucket(ws.config.s3.for_region(region), region)
