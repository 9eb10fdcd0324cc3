"""``purge`` of the S3 object store: free what no live key needs any more in one bucket.

From one versioned listing of the bucket (mrbatch's own ``_mrbatch/`` prefix left out), key by
key, newest version first:

- a key whose current version is a tombstone (mrbatch's deletion: an empty version marked
  deleted) written before the cutoff, or an S3 delete marker (another tool's deletion) made
  before it, leaves the bucket with every version it has;
- otherwise each older version superseded before the cutoff (its successor was written before
  it, by S3's clock: when it stopped being current here) is deleted.

Their change-feed entries are blanked first (:meth:`Feed.blank`), so a reader never meets an
entry whose version is gone; then the versions are deleted oldest first and the tombstone last,
so the key never shows an older version meanwhile. Multipart uploads started before the cutoff
and never completed (a writer that died mid-upload) are aborted. Cost: one LIST per 1,000
versions, a HEAD per empty current version (is it a tombstone?), and per version freed a tag
read, the entry's blanking (a LIST, a PUT, a DELETE) and the DELETE itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise

from ..ports import ObjectInfo, Purged
from . import s3cache
from .aws import guard
from .s3feed import RESERVED, Feed
from .s3io import Bucket

__all__ = ["purge"]


@dataclass(frozen=True)
class _Entry:
    version_id: str
    modified: float  # S3's LastModified
    size: int
    marker: bool  # an S3 delete marker


def _by_key(b: Bucket) -> Iterator[tuple[str, list[_Entry]]]:
    """Every key's versions and delete markers, newest first. A key whose versions continue on
    the next page is held back until that page is read."""
    pending: dict[str, list[tuple[bool, _Entry]]] = {}
    pages = b.client.get_paginator("list_object_versions").paginate(Bucket=b.name)
    for page in pages:
        last = ""
        for kind, marker in (("Versions", False), ("DeleteMarkers", True)):
            for v in page.get(kind, []):
                last = max(last, v["Key"])
                if v["Key"].startswith(RESERVED):
                    continue
                entry = _Entry(
                    v["VersionId"], v["LastModified"].timestamp(), v.get("Size", 0), marker
                )
                pending.setdefault(v["Key"], []).append((bool(v["IsLatest"]), entry))
        for key in sorted(k for k in pending if k < last or not page.get("IsTruncated")):
            found = pending.pop(key)
            # S3 lists a key's versions newest first; delete markers come apart: merge by time.
            found.sort(key=lambda pair: (not pair[0], -pair[1].modified))
            yield key, [entry for _, entry in found]


def _doomed(
    key: str,
    entries: list[_Entry],
    describe: Callable[[str, str], ObjectInfo | None],
    older_than: float,
) -> tuple[list[_Entry], bool]:
    """The versions of ``key`` to delete, newest first, and whether the key goes whole."""
    latest = entries[0]
    if latest.marker:
        whole = latest.modified < older_than
    elif latest.size == 0:
        info = describe(key, latest.version_id)
        whole = info is not None and info.deleted and info.modified < older_than
    else:
        whole = False
    if whole:
        return entries, True
    return [old for new, old in pairwise(entries) if new.modified < older_than], False


def purge(
    b: Bucket, feed: Feed, describe: Callable[[str, str], ObjectInfo | None], older_than: float
) -> Purged:
    """Free tombstones and superseded versions older than ``older_than`` (see the module doc);
    ``describe(key, version_id)`` tells a tombstone from an empty object."""
    tombstones = versions = freed = 0
    with guard(b.where, "the bucket's versions"):
        for key, entries in _by_key(b):
            doomed, whole = _doomed(key, entries, describe, older_than)
            for entry in doomed:
                position = None if entry.marker else feed.position(key, entry.version_id)
                if position is not None:
                    feed.blank(position)
            for entry in reversed(doomed):  # oldest first: the current one goes last
                b.client.delete_object(Bucket=b.name, Key=key, VersionId=entry.version_id)
            s3cache.forget(b.name, [(key, entry.version_id) for entry in doomed])
            tombstones += int(whole)
            kept_as_tombstone = doomed[:1] if whole else []
            for entry in doomed:
                if entry not in kept_as_tombstone and not entry.marker:
                    versions, freed = versions + 1, freed + entry.size
        uploads = b.client.get_paginator("list_multipart_uploads").paginate(Bucket=b.name)
        for page in uploads:
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < older_than:
                    b.client.abort_multipart_upload(
                        Bucket=b.name, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
    return Purged(tombstones=tombstones, versions=versions, bytes=freed)
