"""Uploads spooled to disk before they reach the access point: bounded per upload
(``gateway.max_upload_bytes``, 413 beyond it) and all together (``gateway.spool_quota_bytes``,
503 while it is full), so no client can fill the disk."""

from __future__ import annotations

import hashlib
import threading
from typing import BinaryIO

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

__all__ = ["SpoolFull", "SpoolQuota", "TooLarge", "spool_body", "too_large"]

_BLOCK = 1 << 20


class TooLarge(Exception):
    pass


class SpoolFull(Exception):
    pass


def too_large(limit: int) -> HTTPException:
    return HTTPException(
        status_code=413,
        detail=f"the upload is larger than {limit} bytes (gateway.max_upload_bytes)",
    )


class SpoolQuota:
    """The bytes of every upload being spooled at this moment, held under one limit (so many
    concurrent uploads cannot fill the disk)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, amount: int) -> bool:
        with self._lock:
            if self.used + amount > self.limit:
                return False
            self.used += amount
            return True

    def give(self, amount: int) -> None:
        with self._lock:
            self.used -= amount


async def spool_body(
    request: Request, spool: BinaryIO, *, limit: int, quota: SpoolQuota, taken: list[int]
) -> tuple[str, int]:
    """Copy the request body to ``spool`` a block at a time; returns its sha256 and size.
    Stops with TooLarge past ``limit`` bytes, with SpoolFull when ``quota`` has no room
    (``taken[0]`` counts what was taken from it, for the caller to give back)."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray()
    async for block in request.stream():
        size += len(block)
        if size > limit:
            raise TooLarge
        if not quota.take(len(block)):
            raise SpoolFull
        taken[0] += len(block)
        digest.update(block)
        buffer += block
        if len(buffer) >= _BLOCK:
            # File writes block; keep them off the event loop, a megabyte at a time.
            await run_in_threadpool(spool.write, bytes(buffer))
            buffer.clear()
    if buffer:
        await run_in_threadpool(spool.write, bytes(buffer))
    return digest.hexdigest(), size
