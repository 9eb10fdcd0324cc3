"""Bytes as the embedded object store writes them: a content-addressed file each, written in
pieces of at most 1 MiB."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from ..durable import fsync_dir, fsync_file, start_writeback

__all__ = ["COPY_BLOCK", "blob_file", "blocks", "write_blob"]

COPY_BLOCK = 1 << 20

# A durable blob's writeback is started every this many bytes, as it is written: its fsync at
# the end then waits for the last few MiB, not the whole file (durable.start_writeback).
WRITEBACK_AHEAD = 8 << 20

# ... and that of any blob past this size: one so large is an upload or a merged output, which
# publish makes durable right after (a 480 MB output's fsync took 0.2 s of a 4M-row run's
# critical path). Chunk outputs stay below it: read back at once, deleted later, they need no
# writes to storage during the run.
WRITEBACK_ANY_FROM = 64 << 20


def blocks(data: bytes | BinaryIO | Iterable[bytes]) -> Iterator[bytes | bytearray | memoryview]:
    """``data`` (bytes, a binary stream or an iterable of byte blocks) in blocks of at most
    COPY_BLOCK bytes, as they are to be written to a file."""
    if isinstance(data, bytes | bytearray | memoryview):
        yield from _pieces(data)
    elif hasattr(data, "read"):
        while block := data.read(COPY_BLOCK):
            yield block
    else:
        for block in data:
            yield from _pieces(block)


def _pieces(block: bytes | bytearray | memoryview) -> Iterator[bytes | bytearray | memoryview]:
    # Written to a file in pieces of at most 1 MiB: one write() of a chunk's 7 MB output took
    # 9-16 ms of system time here, eight writes of 1 MiB 2 ms (a new file each time).
    if len(block) <= COPY_BLOCK:
        yield block
        return
    view = memoryview(block)
    for start in range(0, len(view), COPY_BLOCK):
        yield view[start : start + COPY_BLOCK]


def blob_file(blobs: str, sha256: str) -> str:
    """Where the blob of ``sha256`` is under ``blobs``."""
    return f"{blobs}/{sha256[:2]}/{sha256}"


def write_blob(
    blobs: str, tmp_dir: str, data: bytes | BinaryIO | Iterable[bytes], *, durable: bool = True
) -> tuple[str, int]:
    """Store bytes as a blob named by their SHA-256 under ``blobs`` (``blobs/ab/abcdef…``),
    written under a temporary name in ``tmp_dir`` first; returns (sha256, size). Idempotent by
    content. ``durable``: fsynced (file, then its directory) before an index may point at it."""
    # Bytes already held are hashed first: when the blob exists (an empty or header-only
    # output, the same output under two keys) no file is created and deleted for nothing.
    # On an ext4 without a journal, as on this machine, each new file then scans past the
    # inodes freed in the last minutes: 19% of the machine's CPU with many small files.
    known = None
    if isinstance(data, bytes | bytearray | memoryview):
        known = hashlib.sha256(data).hexdigest()
        if _reuse(blob_file(blobs, known), durable=durable):
            return known, len(data)
    digest = hashlib.sha256()
    size = started = 0
    tmp = f"{tmp_dir}/{uuid.uuid4().hex}.part"
    try:
        with open(tmp, "wb") as out:
            for block in blocks(data):
                if known is None:
                    digest.update(block)
                out.write(block)
                size += len(block)
                ahead = durable or size >= WRITEBACK_ANY_FROM
                if ahead and size - started >= WRITEBACK_AHEAD:
                    out.flush()
                    start_writeback(out.fileno(), started, size - started)
                    started = size
            if durable:  # on stable storage before the index points at it
                out.flush()
                os.fsync(out.fileno())
        sha = known or digest.hexdigest()
        target = blob_file(blobs, sha)
        if _reuse(target, durable=durable):
            os.unlink(tmp)
        else:
            parent = os.path.dirname(target)
            if not os.path.exists(parent):
                os.makedirs(parent, exist_ok=True)
                if durable:
                    fsync_dir(blobs)
            os.replace(tmp, target)
            if durable:
                fsync_dir(parent)  # the rename itself
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return sha, size


def _reuse(target: str, *, durable: bool) -> bool:
    """True when the blob file ``target`` exists; it is then marked in use again (not a
    superseded version for purge) and, for a ``durable`` write, synced (written before, perhaps
    not synced then)."""
    try:
        os.utime(target)
    except FileNotFoundError:
        return False
    if durable:
        fsync_file(target)
    return True
