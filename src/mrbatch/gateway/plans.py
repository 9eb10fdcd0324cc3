"""Answers to a running recovery plan over HTTP: ``POST /api/plans/{id}/approve`` (a JSON body
may name ``keys`` whose loss is approved at the RPO gate, a ``note`` and who answers, ``by``),
``POST /api/plans/{id}/deny`` and ``POST /api/plans/{id}/mode`` (``{"mode": "ungraceful"}``),
each with the bearer token (401/403 otherwise; a cookie is not enough for a write); and
``GET /api/plans/{id}``: one execution, with what it is waiting for. The answer is the same
control-plane document ``mrbatch plan approve|deny|ungraceful`` writes."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from ..config.workspace import Workspace
from ..recovery.answers import answer, find_execution, switch_mode
from .objects import bearer_ok

__all__ = ["plans_router"]

_MAX_BODY = 64 * 1024


def plans_router(ws: Workspace) -> APIRouter:
    router = APIRouter()
    token = ws.token

    def require_token(request: Request) -> None:
        verdict = bearer_ok(request.headers.get("authorization"), token)
        if verdict is None:
            raise HTTPException(401, "this needs the bearer token (`mrbatch gateway token`)")
        if not verdict:
            raise HTTPException(403, "token refused")

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > _MAX_BODY:
            raise HTTPException(413, "the body is too large")
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise HTTPException(400, f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise HTTPException(400, "the body must be a JSON object")
        return body

    def who(request: Request, body: dict[str, Any]) -> tuple[str, str]:
        client = request.client.host if request.client else "?"
        by = body.get("by")
        return (str(by) if by else "gateway", f"gateway ({client})")

    @router.get("/api/plans/{execution_id}")
    def api_plan(execution_id: str) -> dict[str, Any]:
        """One plan execution, with what it waits for (``waiting``)."""
        return find_execution(ws, execution_id).to_dict()

    @router.post("/api/plans/{execution_id}/{decision}")
    async def api_answer(execution_id: str, decision: str, request: Request) -> dict[str, Any]:
        """Approve or deny a waiting plan, approve the loss of ``keys``, or switch its mode."""
        require_token(request)
        body = await body_of(request)
        by, via = who(request, body)
        if decision == "mode":
            mode = str(body.get("mode", "ungraceful"))
            return await run_in_threadpool(switch_mode, ws, execution_id, mode, by=by, via=via)
        if decision not in ("approve", "deny"):
            raise HTTPException(404, f"no such answer {decision!r} (approve, deny, mode)")
        keys = body.get("keys") or []
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise HTTPException(400, "keys must be a list of input keys or run ids")
        note = body.get("note")
        return await run_in_threadpool(
            lambda: answer(
                ws, execution_id, decision, by=by, via=via, keys=keys,
                note=str(note) if note is not None else None,
            )
        )  # fmt: skip

    return router
