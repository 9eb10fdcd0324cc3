"""``POST /ingest/{pipeline}``: records streamed in over HTTP (CSV records in the pipeline's
dialect, or NDJSON lines), bearer token required. The answer (200, ``{"accepted": N}``) comes
only once the records are durable in the gateway's ingest spool (:mod:`mrbatch.access.ingest`);
a thread of the gateway seals them into input files every ``ingest.seal_records`` records or
``ingest.seal_interval``, and at start-up seals what a crash left in the spool."""

from __future__ import annotations

import logging
import threading

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..access.accesspoint import AccessPoint
from ..access.ingest import Ingestor, split_records
from ..config.workspace import Workspace
from ..errors import MrbatchError, UsageError
from .objects import bearer_ok

__all__ = ["IngestService", "ingest_router"]

log = logging.getLogger("mrbatch.gateway")


class IngestService:
    """The gateway's ingestors, one per pipeline, and the thread that seals for them."""

    def __init__(self, ws: Workspace, access: AccessPoint) -> None:
        self.ws, self.access = ws, access
        self.node = ws.config.ingest.node
        self.ingestors: dict[str, Ingestor] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a segment is full, or we are stopping: seal now
        self._thread: threading.Thread | None = None

    def ingestor(self, name: str) -> Ingestor:
        with self._lock:
            if name not in self.ingestors:
                if name not in self.ws.config.pipelines:
                    raise UsageError(f"no pipeline named {name!r} is declared")
                spec = self.ws.config.spec(name)
                self.ingestors[name] = Ingestor(
                    self.ws, spec, self.node, self.access, on_full=self._wake.set
                )
            return self.ingestors[name]

    def reconfigure(self, ws: Workspace) -> None:
        """Follow an edit of mrbatch.toml: pipelines declared since can be ingested; a spool
        already open keeps the declaration it was opened with until the gateway restarts (its
        records are sealed as they were written), and so does the node (its lock)."""
        with self._lock:
            self.ws = ws

    def start(self) -> None:
        # What a crash left in the spool is sealed first, then new records as they come.
        spool = self.ws.data_dir / "ingest" / self.node
        for name in self.ws.config.pipelines:
            if (spool / name).is_dir():
                try:
                    self.ingestor(name)
                except MrbatchError as exc:
                    log.warning("ingest spool of %s not recovered: %s", name, exc)
        self._thread = threading.Thread(target=self._run, name="ingest-sealer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Seal when a segment fills (woken by its ingestor) or when the oldest open segment
        # comes of age; a pass at least every second also retries a seal that had to wait.
        while not self._stop.is_set():
            self._wake.clear()  # before the pass: a segment filling during it wakes the next
            self.seal_once()
            dues = [d for i in list(self.ingestors.values()) if (d := i.due_in()) is not None]
            self._wake.wait(min([1.0, *dues]))

    def seal_once(self) -> None:
        for name, ingestor in list(self.ingestors.items()):
            try:
                for sealed in ingestor.seal_due():
                    log.info("ingest %s: sealed %d records as %s", name, sealed.records, sealed.key)
            except MrbatchError as exc:  # an unavailable bucket: the spool keeps them
                log.warning("ingest %s: sealing waits: %s", name, exc)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for ingestor in self.ingestors.values():
            ingestor.close()


def ingest_router(ws: Workspace, service: IngestService) -> APIRouter:
    router = APIRouter()
    token = ws.token
    limit = ws.config.ingest.max_request_bytes

    @router.post("/ingest/{pipeline}")
    async def ingest(pipeline: str, request: Request) -> JSONResponse:
        verdict = bearer_ok(request.headers.get("authorization"), token)
        if verdict is None:
            raise HTTPException(401, "this needs the bearer token (`mrbatch gateway token`)")
        if not verdict:
            raise HTTPException(403, "token refused")
        try:
            ingestor = service.ingestor(pipeline)
        except UsageError as exc:
            raise HTTPException(404, str(exc)) from exc
        body = bytearray()
        async for block in request.stream():
            body += block
            if len(body) > limit:
                raise HTTPException(413, f"more than {limit} bytes (ingest.max_request_bytes)")
        quote = None if ingestor.format == "jsonl" else ingestor.spec.quote
        try:
            records = split_records(bytes(body), quote=quote)
        except UsageError as exc:
            raise HTTPException(400, str(exc)) from exc
        segment = await run_in_threadpool(ingestor.append, records)
        return JSONResponse({"pipeline": pipeline, "accepted": len(records), "segment": segment})

    return router
