"""The gateway: mrbatch's HTTP face (FastAPI, served by uvicorn).

- ``GET``/``HEAD /objects/{key}`` with a presigned link (or the bearer token), from any region
  that holds the object, with byte ranges: a link mailed before a failover works after it;
- ``PUT /objects/{key}`` with the bearer token: an upload through the access point;
- ``POST /ingest/{pipeline}`` with the bearer token: records sealed into input files;
- ``/api/status``, ``/api/runs``, ``/api/runs/{id}``, ``/api/plans``, ``/healthz``;
- ``POST /api/plans/{id}/approve|deny|mode`` with the bearer token: answers to a waiting plan;
- ``/metrics`` in Prometheus format, and the dashboard at ``/``.

``mrbatch up`` starts it as a process; ``mrbatch gateway`` runs it alone. It binds to
``gateway.host`` (127.0.0.1 unless configured otherwise). Every request passes the guard of
:mod:`.guard` first (valid UTF-8 path, an allowed Host, the token for reads off loopback).
Every error is a JSON body ``{"error": ..., "hint"?: ...}`` with a fitting status code; no
traceback leaves the process.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__, backends
from ..access.accesspoint import AccessPoint
from ..config.reload import ConfigWatcher
from ..config.workspace import Workspace
from ..errors import (
    ConflictError,
    FencedError,
    MrbatchError,
    NotFoundError,
    UnavailableError,
    UsageError,
)
from ..observe.metrics import DeploymentCollector, Sampler
from ..observe.recovery_metrics import RecoveryCollector
from .api import DASHBOARD_DIR, api_router
from .guard import RequestGuard
from .ingest import IngestService, ingest_router
from .objects import ObjectMetrics, objects_router
from .plans import plans_router

__all__ = ["LiveGateway", "Metrics", "create_app", "serve", "status_for"]

log = logging.getLogger("mrbatch.gateway")

_STATUS: tuple[tuple[type[MrbatchError], int], ...] = (
    (UsageError, 400),
    (NotFoundError, 404),
    (ConflictError, 409),
    (FencedError, 409),
    (UnavailableError, 503),
)


def status_for(exc: MrbatchError) -> int:
    """The HTTP status that reports ``exc``."""
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return 500


class _SecurityHeaders:
    """Adds headers every answer should carry: no MIME sniffing, and no Referer (a presigned
    link's query must not leak to another site through it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class Metrics:
    """The gateway's metrics registry and its own counters, kept across configuration reloads
    so its counters stay monotonic."""

    registry: CollectorRegistry
    objects: ObjectMetrics

    @classmethod
    def create(cls, ws: Workspace, sampler: Sampler) -> Metrics:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DeploymentCollector(ws, sampler))
        registry.register(RecoveryCollector(ws))
        return cls(registry, ObjectMetrics(registry))


def create_app(
    ws: Workspace,
    *,
    sampler: Sampler | None = None,
    metrics: Metrics | None = None,
    ingest: IngestService | None = None,
) -> FastAPI:
    """The gateway application for ``ws``. While it runs (its lifespan), ``sampler`` (one is
    made when None) samples the deployment every second for the dashboard's history, and the
    ingest spool is sealed — by the app's own :class:`IngestService` unless ``ingest`` is
    given, which its owner starts and stops (it outlives a reload: it holds the spool)."""
    sampler = sampler or Sampler(ws)
    metrics = metrics or Metrics.create(ws, sampler)
    registry, object_metrics = metrics.registry, metrics.objects
    access = AccessPoint(ws)
    owned = ingest is None
    service = IngestService(ws, access) if ingest is None else ingest

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        sampler.start()
        if owned:
            service.start()
        try:
            yield
        finally:
            if owned:
                service.stop()
            sampler.stop()

    app = FastAPI(title="mrbatch gateway", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.sampler = sampler
    app.state.registry = registry
    app.include_router(objects_router(ws, access, object_metrics))
    app.include_router(ingest_router(ws, service))
    app.include_router(api_router(ws, sampler, registry))
    app.include_router(plans_router(ws))
    app.mount("/static", StaticFiles(directory=DASHBOARD_DIR), name="static")
    app.add_middleware(RequestGuard, ws=ws)  # inside the headers: refusals carry them too
    app.add_middleware(_SecurityHeaders)

    @app.exception_handler(HTTPException)
    def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    def _bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=400)

    @app.exception_handler(MrbatchError)
    def _mrbatch_error(_request: Request, exc: MrbatchError) -> JSONResponse:
        body: dict[str, Any] = {"error": exc.message, "code": exc.code}
        if exc.hint:
            body["hint"] = exc.hint
        return JSONResponse(body, status_code=status_for(exc))

    @app.exception_handler(Exception)
    def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc)
        return JSONResponse({"error": "internal error; see the gateway's log"}, status_code=500)

    return app


class LiveGateway:
    """The gateway as ``serve`` runs it: the application of :func:`create_app`, built again
    when ``mrbatch.toml`` is edited (links, upload limits, allowed hosts... apply to the
    requests that arrive afterwards; the address it listens on needs a restart), and a
    heartbeat with its version and the digest of the configuration it runs with."""

    def __init__(self, ws: Workspace) -> None:
        self.watcher = ConfigWatcher(ws, "gateway")
        self.sampler = Sampler(ws)
        self.metrics = Metrics.create(ws, self.sampler)
        self.ingest = IngestService(ws, AccessPoint(ws))
        self.app = self._build(ws)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _build(self, ws: Workspace) -> FastAPI:
        return create_app(ws, sampler=self.sampler, metrics=self.metrics, ingest=self.ingest)

    def start(self) -> None:
        self.sampler.start()
        self.ingest.start()
        self._thread = threading.Thread(target=self._follow, name="config", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.ingest.stop()
        self.sampler.stop()

    def _follow(self) -> None:
        while True:
            try:
                edited = self.watcher.poll()
                if edited is not None:
                    self.sampler.ws = edited
                    self.ingest.reconfigure(edited)
                    self.app = self._build(edited)
                self.heartbeat()
            except Exception:  # a bad moment must not end the gateway's reloads
                log.exception("following the configuration failed")
            if self._stop.wait(1.0):
                return

    def heartbeat(self) -> None:
        ws = self.watcher.ws
        try:
            backends.open_control_plane(ws).heartbeat(
                "gateway",
                os.getpid(),
                {"version": __version__, "config": self.watcher.report(), "url": ws.gateway_url},
            )
        except MrbatchError as exc:
            log.warning("gateway heartbeat failed: %s", exc)


def serve(ws: Workspace, *, host: str | None = None, port: int | None = None) -> None:
    """Run the gateway until SIGINT/SIGTERM, on ``gateway.host``/``gateway.port`` from the
    config unless ``host``/``port`` say otherwise."""
    import uvicorn

    gateway = ws.config.gateway
    uvicorn.run(
        LiveGateway(ws),
        host=host or gateway.host,
        port=gateway.port if port is None else port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )
