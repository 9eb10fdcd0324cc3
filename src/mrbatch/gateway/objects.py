"""Objects over HTTP, the access point's face: ``GET``/``HEAD /objects/{key}`` with a presigned
link (or the bearer token) from any region that holds the object, with byte ranges; and
``PUT /objects/{key}`` with the bearer token, routed like ``mrbatch put``.

Credentials are compared in constant time (``hmac.compare_digest``). Uploads are streamed to a
spool file (never held in memory) and only handed to the access point once the whole body has
arrived, so a client that disconnects half-way leaves nothing behind, and the spooled copy lets
the access point retry another region when the preferred one refuses the write.
"""

from __future__ import annotations

import functools
import hmac
import io
import logging
import mimetypes
import tempfile
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter
from starlette.concurrency import run_in_threadpool
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import ClientDisconnect

from ..access.accesspoint import AccessPoint, Located
from ..access.links import SigningKeys, verify
from ..config.workspace import Workspace
from ..errors import NotFoundError, UnavailableError, UsageError
from ..model.keys import INPUT, check_key
from .spool import SpoolFull, SpoolQuota, TooLarge, spool_body, too_large

__all__ = [
    "WRITABLE_PREFIXES",
    "ObjectMetrics",
    "Unsatisfiable",
    "bearer_ok",
    "objects_router",
    "parse_range",
]

log = logging.getLogger("mrbatch.gateway")

# Writes over HTTP may create inputs and replace reference data; output/, rejected/ and runs/
# are written by the pipeline alone, so a leaked token cannot forge a published result.
WRITABLE_PREFIXES = (INPUT, "reference/")
_BLOCK = 1 << 20
_SHA_HEADER = "x-mrbatch-sha256"


class _AnyPath(PathConvertor):
    """Like ``path``, but also matches keys holding a newline (``.`` does not), so that such a
    key reaches ``check_key`` and is refused with a reason instead of a bare 404."""

    regex = r"[\s\S]*"


register_url_convertor("anypath", _AnyPath())


class Unsatisfiable(Exception):
    """A Range header none of whose ranges overlaps the object (answered with 416)."""


def bearer_ok(authorization: str | None, token: str) -> bool | None:
    """None when ``authorization`` carries no bearer credentials, else whether they equal
    ``token``. The comparison takes the same time wherever the first difference is."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range ``(first, last)`` one ``Range: bytes=...`` header asks for.

    None means "send the whole object": no header, a unit other than bytes, a malformed
    header, or several ranges (RFC 9110 lets a server ignore Range). Raises Unsatisfiable when
    the range starts past the end (or the object is empty)."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first_text == "":  # a suffix: the last N bytes
            suffix = int(last_text)
            if suffix < 0:
                return None
            if suffix == 0 or size == 0:
                raise Unsatisfiable(header)
            return max(0, size - suffix), size - 1
        first = int(first_text)
        last = int(last_text) if last_text else size - 1
    except ValueError:
        return None
    if first < 0 or (last_text and last < first):
        return None
    if first >= size:
        raise Unsatisfiable(header)
    return first, min(last, size - 1)


class ObjectMetrics:
    """The gateway's own counters (uploads, downloads, refusals), in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.uploads = Counter(
            "mrbatch_gateway_uploads",
            "Objects uploaded through the gateway, by the region that took them",
            ["region"],
            registry=registry,
        )
        self.upload_bytes = Counter(
            "mrbatch_gateway_upload_bytes",
            "Bytes uploaded through the gateway",
            ["region"],
            registry=registry,
        )
        self.downloads = Counter(
            "mrbatch_gateway_downloads",
            "Object downloads (GET) served, by the region that served them",
            ["region"],
            registry=registry,
        )
        self.refused = Counter(
            "mrbatch_gateway_refused",
            "Requests refused for want of valid credentials",
            ["reason"],
            registry=registry,
        )


def _stream(handle: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    with handle:
        if start:
            try:
                handle.seek(start)
            except (AttributeError, OSError, io.UnsupportedOperation):
                skip = start  # not seekable (a network stream): read past the start
                while skip and (block := handle.read(min(skip, _BLOCK))):
                    skip -= len(block)
        while length > 0 and (block := handle.read(min(length, _BLOCK))):
            length -= len(block)
            yield block


def objects_router(ws: Workspace, access: AccessPoint, metrics: ObjectMetrics) -> APIRouter:
    """The ``/objects`` routes over ``access``; credentials from ``ws`` (read once)."""
    router = APIRouter()
    gateway = ws.config.gateway
    ws.signing_key  # noqa: B018 -- created now if missing, refused now if empty
    keys = SigningKeys(ws.data_dir, gateway.max_link_lifetime)
    keys.honoured()
    token = ws.token
    spool_dir = ws.data_dir / "gateway" / "spool"
    quota = SpoolQuota(gateway.spool_quota_bytes)

    def refuse(status: int, reason: str, detail: str) -> HTTPException:
        metrics.refused.labels(reason).inc()
        headers = {"www-authenticate": 'Bearer realm="mrbatch"'} if status == 401 else None
        return HTTPException(status_code=status, detail=detail, headers=headers)

    def require_token(request: Request) -> None:
        verdict = bearer_ok(request.headers.get("authorization"), token)
        if verdict is None:
            raise refuse(401, "no-token", "this needs the bearer token (`mrbatch gateway token`)")
        if not verdict:
            raise refuse(403, "bad-token", "token refused")

    def checked(key: str) -> str:
        try:
            return check_key(key)
        except UsageError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc

    @router.api_route("/objects/{key:anypath}", methods=["GET", "HEAD"])
    def get_object(
        key: str,
        request: Request,
        expires: str | None = Query(default=None),
        signature: str | None = Query(default=None),
    ) -> Response:
        """Serve ``key`` from the first region (active first) that holds it. Needs a valid
        presigned query (``expires`` + ``signature``) or the bearer token: 401 without either,
        403 when wrong or expired, 404 when no reachable region has the key, 503 when none
        can be read."""
        checked(key)
        if expires is not None or signature is not None:
            problem = verify(
                keys.honoured(),
                key,
                expires or "",
                signature or "",
                max_lifetime=gateway.max_link_lifetime,
            )
            if problem is not None:
                raise refuse(403, problem.replace(" ", "-"), f"link refused: {problem}")
        else:
            require_token(request)
        try:
            located = access.locate(key)
            handle = (
                None
                if request.method == "HEAD"
                else access.store(located.region).open(key, version=located.info.version)
            )
        except NotFoundError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        except UnavailableError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        return _respond(request, key, located, handle, metrics)

    @router.put("/objects/{key:anypath}")
    async def put_object(
        key: str,
        request: Request,
        region: str | None = Query(default=None, description="Exactly this region"),
    ) -> JSONResponse:
        """Upload the body to ``key`` through the access point (the preferred healthy region,
        or exactly ``region``). Needs the bearer token (401/403), a valid key under input/ or
        reference/ (400/403). An ``x-mrbatch-sha256`` header, when given, must match the body
        (400, nothing stored). Answers like ``mrbatch put --json``."""
        require_token(request)
        checked(key)
        if not key.startswith(WRITABLE_PREFIXES):
            raise HTTPException(
                status_code=403,
                detail=f"{key!r}: uploads go under {' or '.join(WRITABLE_PREFIXES)}",
            )
        try:
            target = ws.check_region(region) if region else None
        except UsageError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > gateway.max_upload_bytes:
            raise too_large(gateway.max_upload_bytes)
        spool_dir.mkdir(parents=True, exist_ok=True)
        # An anonymous temporary file: the kernel frees it when closed, even after a crash.
        with tempfile.TemporaryFile(dir=spool_dir) as spool:
            taken = [0]
            try:
                digest, size = await spool_body(
                    request, spool, limit=gateway.max_upload_bytes, quota=quota, taken=taken
                )
            except ClientDisconnect:
                log.warning("upload of %s abandoned by the client; nothing stored", key)
                raise HTTPException(status_code=400, detail="the upload was interrupted") from None
            except TooLarge:
                raise too_large(gateway.max_upload_bytes) from None
            except SpoolFull:
                raise HTTPException(
                    status_code=503,
                    detail="the gateway's spool is full (gateway.spool_quota_bytes); try again"
                    " in a moment",
                    headers={"retry-after": "5"},
                ) from None
            finally:
                quota.give(taken[0])
            wanted = request.headers.get(_SHA_HEADER)
            if wanted is not None and not hmac.compare_digest(
                wanted.strip().lower().encode(), digest.encode()
            ):
                raise HTTPException(
                    status_code=400,
                    detail=f"body sha256 {digest} does not match {_SHA_HEADER} {wanted}",
                )
            spool.seek(0)
            try:
                located = await run_in_threadpool(
                    functools.partial(access.put, key, spool, region=target, source="gateway")
                )
            except UnavailableError as exc:
                raise HTTPException(status_code=503, detail=str(exc)) from exc
        metrics.uploads.labels(located.region).inc()
        metrics.upload_bytes.labels(located.region).inc(size)
        log.info("uploaded %s (%d bytes) to %s", key, size, located.region)
        answer = {
            "region": located.region,
            "key": located.info.key,
            "sha256": located.info.sha256,
            "size": located.info.size,
        }
        if located.accepted is not None:
            answer["run_id"] = located.accepted.run_id
        return JSONResponse(
            answer,
            headers={"etag": f'"{located.info.sha256}"'},
        )

    return router


def _respond(
    request: Request,
    key: str,
    located: Located,
    handle: BinaryIO | None,
    metrics: ObjectMetrics,
) -> Response:
    """The response for one object version: conditional (ETag), ranged, HEAD without a body."""
    info = located.info
    etag = f'"{info.sha256}"'
    name = Path(key).name
    headers = {
        "etag": etag,
        "accept-ranges": "bytes",
        "last-modified": formatdate(info.modified, usegmt=True),
        "content-disposition": f"attachment; filename*=UTF-8''{quote(name)}",
        "cache-control": "private, no-store",
        "x-mrbatch-region": located.region,
        "x-mrbatch-sha256": info.sha256,
    }
    media = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if request.headers.get("if-none-match") in (etag, "*"):
        if handle is not None:
            handle.close()
        return Response(status_code=304, headers=headers)
    span: tuple[int, int] | None = None
    if_range = request.headers.get("if-range")
    if if_range is None or if_range == etag:  # a stale If-Range gets the whole new object
        try:
            span = parse_range(request.headers.get("range"), info.size)
        except Unsatisfiable:
            if handle is not None:
                handle.close()
            headers["content-range"] = f"bytes */{info.size}"
            return Response(status_code=416, headers=headers)
    start, length, status = 0, info.size, 200
    if span is not None:
        start, length, status = span[0], span[1] - span[0] + 1, 206
        headers["content-range"] = f"bytes {span[0]}-{span[1]}/{info.size}"
    headers["content-length"] = str(length)
    if handle is None:  # HEAD
        return Response(status_code=status, headers=headers, media_type=media)
    metrics.downloads.labels(located.region).inc()
    return StreamingResponse(
        _stream(handle, start, length), status_code=status, headers=headers, media_type=media
    )
