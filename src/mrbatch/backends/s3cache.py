"""What a process knows of the versions in its S3 buckets, shared by every store opened on a
bucket: (bucket, key, SHA-256) -> the VersionId holding those bytes, and (bucket, key,
VersionId) -> its description. A version never changes, so a description stays true until
``purge`` deletes the version; ``forget`` drops what it deleted (another process finds out
when its GET answers NoSuchVersion, and looks again)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..ports import ObjectInfo

__all__ = ["IDS", "VERSIONS", "Version", "forget", "holds", "remember"]

_CACHE = 20_000
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Version:
    info: ObjectInfo  # seq 0: the position is read from the tag only when needed
    version_id: str
    etag: str
    tagged: bool


IDS: OrderedDict[tuple[str, str, str], str] = OrderedDict()
VERSIONS: OrderedDict[tuple[str, str, str], Version] = OrderedDict()


def remember(cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    with _LOCK:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > _CACHE:
            cache.popitem(last=False)


def holds(found: Version | None, sha: str) -> bool:
    return found is not None and not found.info.deleted and found.info.sha256 == sha


def forget(bucket: str, gone: Iterable[tuple[str, str]]) -> None:
    """Drop what is known of the versions ``gone`` ((key, VersionId) pairs) of ``bucket``."""
    doomed = {(bucket, key, version_id) for key, version_id in gone}
    if not doomed:
        return
    with _LOCK:
        for ident in doomed:
            VERSIONS.pop(ident, None)
        for ident in [i for i, v in IDS.items() if (i[0], i[1], v) in doomed]:
            del IDS[ident]
