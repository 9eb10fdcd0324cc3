"""The change feed of the S3 object store, kept in the bucket itself.

``_mrbatch/feed/<seq, 20 digits>`` holds one small JSON object per change (key, SHA-256, size,
S3 VersionId, writer's clock, origin, epoch, deleted, meta). A writer creates the entry at the
position after the last one it knows with ``If-None-Match: *``; when S3 refuses (another
writer took it) it looks for the end again and tries the next. So positions are gap-free and
appear in order: position n + 1 is taken only after n exists, and S3's listings are strongly
consistent, so a reader that has seen n + 1 will never find n appearing later.

The feed costs, per change, one PUT of about 300 bytes and the tag PUT that records the position
on the version; each reader pays one LIST per 1,000 positions and one GET per change.

``purge`` frees versions nobody needs any more; their entries are then *blanked*, never removed:
an empty entry keeps its position taken (a writer guessing the end from a position it saw long
ago would otherwise create an entry behind every reader) and costs readers nothing but its line
in a listing (an empty entry is skipped without a GET).
"""

from __future__ import annotations

import json
from typing import Any

import botocore.exceptions as bx

from ..errors import UnavailableError
from ..ports import ObjectInfo
from .aws import code, guard

__all__ = ["FEED", "RESERVED", "SEQ_TAG", "Feed", "feed_key"]

RESERVED = "_mrbatch/"  # mrbatch's own keys in the bucket: no user key may start so
FEED = f"{RESERVED}feed/"
SEQ_TAG = "mrbatch-seq"
_ATTEMPTS = 200
_REFUSED = ("PreconditionFailed", "412", "ConditionalRequestConflict")


def feed_key(seq: int) -> str:
    return f"{FEED}{seq:020d}"


_key = feed_key


class Feed:
    def __init__(self, s3: Any, bucket: str, where: str) -> None:
        self._s3, self._bucket, self._where = s3, bucket, where
        self.tail = 0  # the last position this process knows of

    def append(self, info: ObjectInfo, version_id: str) -> int:
        """Feed ``info`` (held by ``version_id``) at the next position, tag the version with
        it, and return it."""
        entry = json.dumps(
            {
                "key": info.key,
                "size": info.size,
                "sha256": info.sha256,
                "version_id": version_id,
                "modified": repr(info.modified),
                "origin": info.origin,
                "epoch": info.epoch,
                "deleted": info.deleted,
                "meta": dict(info.meta),
            },
            separators=(",", ":"),
        ).encode()
        seq = self.tail + 1
        with guard(self._where, "the change feed"):
            for _ in range(_ATTEMPTS):
                try:
                    self._s3.put_object(
                        Bucket=self._bucket, Key=_key(seq), Body=entry, IfNoneMatch="*"
                    )
                    break
                except bx.ClientError as exc:
                    if code(exc) not in _REFUSED:
                        raise
                    seq = self.last(seq) + 1  # taken: find the end again
            else:
                raise UnavailableError(f"{self._where}: the change feed is too contended")
            self.tail = max(self.tail, seq)
            self._s3.put_object_tagging(
                Bucket=self._bucket,
                Key=info.key,
                VersionId=version_id,
                Tagging={"TagSet": [{"Key": SEQ_TAG, "Value": str(seq)}]},
            )
        return seq

    def position(self, key: str, version_id: str) -> int | None:
        """The position recorded on a version (None when its write was never fed)."""
        with guard(self._where, f"tags of {key!r}"):
            tags = self._s3.get_object_tagging(Bucket=self._bucket, Key=key, VersionId=version_id)[
                "TagSet"
            ]
        return next((int(t["Value"]) for t in tags if t["Key"] == SEQ_TAG), None)

    def blank(self, seq: int) -> None:
        """Empty the entry at ``seq`` (its version is being purged): the position stays taken,
        readers skip it, and the entry's old bytes leave the bucket. Idempotent."""
        key = _key(seq)
        with guard(self._where, "the change feed"):
            pages = self._s3.get_paginator("list_object_versions").paginate(
                Bucket=self._bucket, Prefix=key
            )
            old = [v for page in pages for v in page.get("Versions", []) if v["Key"] == key]
            if not any(v["Size"] == 0 and v["IsLatest"] for v in old):
                self._s3.put_object(Bucket=self._bucket, Key=key, Body=b"")
            for version in old:
                if version["Size"] > 0:
                    self._s3.delete_object(
                        Bucket=self._bucket, Key=key, VersionId=version["VersionId"]
                    )

    def last(self, known: int | None = None) -> int:
        """The last position, searching from ``known`` (a position that exists, or 0)."""
        known = self.tail if known is None else known
        with guard(self._where, "the change feed"):
            while True:
                page = self._s3.list_objects_v2(
                    Bucket=self._bucket, Prefix=FEED, StartAfter=_key(known), MaxKeys=1000
                )
                keys = [o["Key"] for o in page.get("Contents", [])]
                if keys:
                    known = int(keys[-1][len(FEED) :])
                if not page.get("IsTruncated"):
                    self.tail = max(self.tail, known)
                    return known

    def read(self, after: int, prefix: str, limit: int) -> list[tuple[ObjectInfo, str]]:
        """Changes after position ``after`` whose key starts with ``prefix``, in order, with
        the VersionId holding each."""
        found: list[tuple[ObjectInfo, str]] = []
        start = _key(after)
        with guard(self._where, "the change feed"):
            while len(found) < limit:
                page = self._s3.list_objects_v2(
                    Bucket=self._bucket, Prefix=FEED, StartAfter=start, MaxKeys=1000
                )
                for obj in page.get("Contents", []):
                    start = obj["Key"]
                    seq = int(start[len(FEED) :])
                    self.tail = max(self.tail, seq)
                    if obj.get("Size") == 0:
                        continue  # blanked: its version was purged
                    body = self._s3.get_object(Bucket=self._bucket, Key=start)["Body"].read()
                    if not body:
                        continue  # blanked since it was listed
                    entry = json.loads(body)
                    if not entry["key"].startswith(prefix):
                        continue
                    info = ObjectInfo(
                        key=entry["key"],
                        size=int(entry["size"]),
                        sha256=entry["sha256"],
                        version=entry["sha256"],
                        modified=float(entry["modified"]),
                        origin=entry["origin"],
                        epoch=int(entry["epoch"]),
                        seq=seq,
                        deleted=bool(entry["deleted"]),
                        meta=entry.get("meta", {}),
                    )
                    found.append((info, entry["version_id"]))
                    if len(found) >= limit:
                        break
                if not page.get("IsTruncated"):
                    break
        return found
