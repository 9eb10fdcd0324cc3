"""The access point's HTTP gateway (FastAPI): serves presigned links from any region that holds
the object, so a link mailed before a failover still works after it."""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Iterator
from typing import BinaryIO

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from .accesspoint import AccessPoint
from .errors import NotFoundError, UnavailableError, UsageError
from .keys import check_key
from .links import verify
from .workspace import Workspace

__all__ = ["create_app", "serve"]

log = logging.getLogger("mrbatch.gateway")


def _stream(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while block := handle.read(1 << 20):
            yield block


def create_app(ws: Workspace) -> FastAPI:
    app = FastAPI(title="mrbatch gateway", docs_url=None, redoc_url=None)
    access = AccessPoint(ws)
    secret = ws.signing_key

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.api_route("/objects/{key:path}", methods=["GET", "HEAD"])
    def get_object(
        key: str,
        request: Request,
        expires: str = Query(default=""),
        signature: str = Query(default=""),
    ) -> Response:
        try:
            check_key(key)
        except UsageError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        problem = verify(secret, key, expires, signature)
        if problem is not None:
            raise HTTPException(status_code=403, detail=f"link refused: {problem}")
        try:
            located = access.locate(key)
        except NotFoundError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        except UnavailableError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        store = access.store(located.region)
        headers = {
            "x-mrbatch-region": located.region,
            "x-mrbatch-sha256": located.info.sha256,
            "cache-control": "private, no-store",
        }
        media = mimetypes.guess_type(key)[0] or "application/octet-stream"
        blob_path = getattr(store, "blob_path", None)
        if blob_path is not None:
            # A file on disk: Starlette answers HEAD and byte ranges for us.
            return FileResponse(
                blob_path(located.info.version),
                media_type=media,
                headers=headers,
                filename=key.rsplit("/", 1)[-1],
            )
        handle = store.open(key, version=located.info.version)
        headers["content-length"] = str(located.info.size)
        if request.method == "HEAD":
            handle.close()
            return Response(status_code=200, headers=headers, media_type=media)
        return StreamingResponse(_stream(handle), media_type=media, headers=headers)

    @app.exception_handler(HTTPException)
    def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    return app


def serve(ws: Workspace) -> None:
    import uvicorn

    gateway = ws.config.gateway
    uvicorn.run(
        create_app(ws),
        host=gateway.host,
        port=gateway.port,
        log_level="warning",
        access_log=False,
    )
