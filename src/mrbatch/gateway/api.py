"""The gateway's read-only face: the status API, the runs, the plan log, Prometheus metrics and
the web dashboard (its page, script and style ship in ``mrbatch/dashboard/``; nothing is
fetched from elsewhere, and the Content-Security-Policy forbids it).

``/api/status`` and ``/api/runs`` answer exactly what ``mrbatch status --json`` and ``mrbatch
runs --json`` print (same functions); ``/api/dashboard`` is what the page polls.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..config.workspace import Workspace
from ..errors import MrbatchError
from ..model.records import RunStatus
from ..observe import views
from ..observe.metrics import Sampler, plan_summaries

__all__ = ["DASHBOARD_CSP", "DASHBOARD_DIR", "api_router"]

DASHBOARD_DIR = Path(__file__).with_name("dashboard")
# Everything from this origin only: no CDN, no inline script, no framing.
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_RECENT_RUNS = 20
_RECENT_PLANS = 10


def api_router(ws: Workspace, sampler: Sampler, registry: CollectorRegistry) -> APIRouter:
    """Routes: ``/``, ``/healthz``, ``/api/status``, ``/api/runs``, ``/api/runs/{id-or-key}``,
    ``/api/plans``, ``/api/dashboard`` and ``/metrics``."""
    router = APIRouter()

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness of the gateway itself (not of the regions: see /api/status)."""
        return {"status": "ok"}

    @router.get("/api/status")
    def api_status() -> dict[str, Any]:
        """The ``mrbatch status --json`` document."""
        return views.status(ws)

    @router.get("/api/runs")
    def api_runs(
        status: str | None = Query(default=None, description="Only runs in this state"),
        limit: int | None = Query(default=None, ge=1, description="Only the newest N"),
    ) -> list[dict[str, Any]]:
        """The ``mrbatch runs --json`` list (oldest first; ``limit`` keeps the newest)."""
        if status is not None and status.upper() not in RunStatus.__members__:
            raise HTTPException(
                status_code=400,
                detail=f"unknown status {status!r} (one of {', '.join(RunStatus.__members__)})",
            )
        runs = views.all_runs(ws, status_filter=status)
        if limit is not None:
            runs = runs[-limit:]
        return [run.summary() for run in runs]

    @router.get("/api/runs/{ref:path}")
    def api_run(ref: str) -> dict[str, Any]:
        """One run, by run id or input key (``input/x.csv`` or ``x.csv``): its summary and its
        state history. 404 when there is no such run."""
        try:
            run = views.find_run(ws, ref)
        except MrbatchError as exc:
            if exc.code in ("usage", "not_found"):
                raise HTTPException(status_code=404, detail=str(exc)) from exc
            raise
        return {**run.summary(), "history": run.history}

    @router.get("/api/plans")
    def api_plans(limit: int | None = Query(default=None, ge=1)) -> list[dict[str, Any]]:
        """Recovery plan executions, newest first, with their steps."""
        return plan_summaries(ws, limit)

    @router.get("/api/dashboard")
    def api_dashboard(
        since: float | None = Query(default=None, description="Only samples after this time"),
    ) -> dict[str, Any]:
        """What the dashboard polls: the newest sample, the samples after ``since`` (the whole
        history when absent), recent runs and plan executions. Parts that cannot be read now
        are reported in ``errors`` rather than failing the whole answer."""
        latest = sampler.latest()
        errors: list[str] = []
        try:
            runs = views.all_runs(ws)
        except MrbatchError as exc:
            runs, errors = [], [*errors, f"runs: {exc}"]
        counts: dict[str, int] = {}
        for run in runs:
            counts[str(run.status)] = counts.get(str(run.status), 0) + 1
        try:
            plans = plan_summaries(ws, _RECENT_PLANS)
        except MrbatchError as exc:
            plans, errors = [], [*errors, f"plans: {exc}"]
        if latest.get("error"):
            errors.append(f"control plane: {latest['error']}")
        return {
            "now": time.time(),
            "interval": sampler.interval,
            "regions": ws.regions,
            "latest": latest,
            "samples": sampler.history(since),
            "runs": [r.summary() for r in reversed(runs[-_RECENT_RUNS:])],
            "runs_by_status": counts,
            "runs_total": len(runs),
            "plans": plans,
            "errors": errors,
        }

    @router.get("/metrics")
    def metrics() -> Response:
        """Prometheus text exposition (see mrbatch.metrics for the names)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(
            DASHBOARD_DIR / "index.html",
            media_type="text/html; charset=utf-8",
            headers={"content-security-policy": DASHBOARD_CSP, "cache-control": "no-cache"},
        )

    return router
