"""Answers to a running plan: approve or deny it at its approval step, approve the loss of
single inputs at its RPO gate, or switch it to ungraceful — from ``mrbatch plan approve|deny|
ungraceful`` or the gateway. Each answer is one control-plane document of its own, never
overwritten (``answer/<execution>/<time>-<random>``), so two people answering at once both
leave a trace and the plan takes the first; the plan polls for them while it waits.

The approval step itself is here too: ``--yes`` approves, a terminal prompts, and otherwise the
plan waits up to ``approval.timeout`` for an answer; the wait, who answered, how and when are
kept in the execution's log and its recovery report.
"""

from __future__ import annotations

import getpass
import time
import uuid
from typing import Any

from .. import backends
from ..config.workspace import Workspace
from ..errors import MrbatchError, NotFoundError, UsageError
from ..ports import ControlPlane
from .plan import (
    ANSWER_PREFIX,
    MODE_PREFIX,
    MODES,
    PLAN_PREFIX,
    Execution,
    PlanContext,
    Result,
    StepFailed,
    too_soon,
)

__all__ = [
    "DECISIONS",
    "answer",
    "approval",
    "approved_keys",
    "find_execution",
    "operator",
    "read_answers",
    "switch_mode",
]

DECISIONS = ("approve", "deny")


def operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def _name(prefix: str, execution_id: str) -> str:
    return f"{prefix}{execution_id}/{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def find_execution(ws: Workspace, ref: str | None) -> Execution:
    """The execution ``ref`` names (its id, or a unique prefix of it); without ``ref``, the one
    execution that is running now. Raises NotFoundError / UsageError naming the candidates."""
    control = backends.open_control_plane(ws)
    executions = [Execution.from_dict(d) for d in control.documents(PLAN_PREFIX).values()]
    if ref:
        found = [e for e in executions if e.id == ref] or [
            e for e in executions if e.id.startswith(ref)
        ]
        if not found:
            raise NotFoundError(
                f"no plan execution {ref}", hint="`mrbatch plan history` lists them"
            )
        if len(found) > 1:
            raise UsageError(f"{ref} names {len(found)} executions: give more of the id")
        return found[0]
    running = [e for e in executions if e.outcome == "running"]
    if len(running) != 1:
        raise UsageError(
            f"{len(running)} plan executions are running; name one"
            + (f" ({', '.join(e.id for e in running)})" if running else ""),
            hint="`mrbatch plan history` lists them",
        )
    return running[0]


def _running(execution: Execution) -> None:
    if execution.outcome != "running":
        raise UsageError(
            f"plan {execution.id} is not running ({execution.outcome}); nothing waits for an"
            " answer",
            hint="`mrbatch plan history` shows how it ended",
        )


def answer(
    ws: Workspace,
    ref: str | None,
    decision: str,
    *,
    by: str | None = None,
    via: str = "cli",
    keys: list[str] | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """Record ``decision`` (approve or deny) for a running execution; with ``keys``, approve
    the loss of those inputs (input keys or run ids) at its RPO gate."""
    if decision not in DECISIONS:
        raise UsageError(f"unknown decision {decision!r} ({', '.join(DECISIONS)})")
    if keys and decision != "approve":
        raise UsageError("keys are approved one by one; a denial takes no keys")
    execution = find_execution(ws, ref)
    _running(execution)
    body = {
        "execution": execution.id,
        "decision": decision,
        "keys": [_input_key(k) for k in keys or []],
        "by": by or operator(),
        "via": via,
        "note": note,
        "at": time.time(),
    }
    backends.open_control_plane(ws).put_document(_name(ANSWER_PREFIX, execution.id), body)
    return body


def _input_key(key: str) -> str:
    """A run id (hex) or ``input/…`` stays as it is; a bare path is an input key."""
    is_run_id = "/" not in key and len(key) >= 16 and all(c in "0123456789abcdef" for c in key)
    return key if is_run_id or key.startswith("input/") else "input/" + key


def switch_mode(
    ws: Workspace, ref: str | None, mode: str, *, by: str | None = None, via: str = "cli"
) -> dict[str, Any]:
    """Ask a running execution to continue in ``mode`` (taken at its next check)."""
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r} ({', '.join(MODES)})")
    execution = find_execution(ws, ref)
    _running(execution)
    body: dict[str, Any] = {"execution": execution.id, "mode": mode, "by": by or operator()}
    body.update(via=via, at=time.time())
    backends.open_control_plane(ws).put_document(_name(MODE_PREFIX, execution.id), body)
    return body


def read_answers(control: ControlPlane, execution_id: str) -> list[dict[str, Any]]:
    """Every answer given to the execution, oldest first."""
    docs = control.documents(f"{ANSWER_PREFIX}{execution_id}/")
    return [dict(body, name=name) for name, body in sorted(docs.items())]


def approved_keys(ctx: PlanContext) -> dict[str, dict[str, Any]]:
    """Keys (and run ids) whose loss is approved for this execution: ``--accept-loss`` and the
    per-key approvals given while it ran; each with who approved it, how and when."""
    approved: dict[str, dict[str, Any]] = {
        _input_key(key): {"by": operator(), "via": "--accept-loss", "at": ctx.execution.started}
        for key in ctx.accept_loss
    }
    try:
        answers = read_answers(ctx.control, ctx.execution.id)
    except MrbatchError:
        answers = []
    for item in answers:
        if item.get("decision") == "approve":
            for key in item.get("keys") or []:
                approved.setdefault(key, {k: item.get(k) for k in ("by", "via", "at")})
    return approved


# --------------------------------------------------------------------------- the step


def _record(ctx: PlanContext, entry: dict[str, Any]) -> None:
    ctx.execution.approvals.append(entry)
    ctx.execution.decided_at = entry["at"] if entry.get("decision") == "approve" else None


def approval(ctx: PlanContext) -> Result:
    # The anti-flap rule first: nobody is asked (or waited for) to approve a switch the fence
    # would then refuse.
    refused = too_soon(ctx)
    if refused:
        raise StepFailed(refused)
    started = time.time()
    if ctx.yes:
        entry: dict[str, Any] = {
            "step": "approval",
            "decision": "approve",
            "by": "--yes",
            "via": ctx.execution.trigger,
        }
        _record(ctx, {**entry, "at": started, "waited_seconds": 0.0})
        return "ok", "approved with --yes", {"approved_by": "--yes"}
    prompt = (
        f"{ctx.plan}: make {ctx.target} the active region and fence {ctx.source}"
        f" (epoch {ctx.epoch} -> {(ctx.epoch or 0) + 1})?"
    )
    if ctx.interactive:
        agreed = ctx.confirm(prompt)
        entry = {
            "step": "approval",
            "decision": "approve" if agreed else "deny",
            "by": operator(),
            "via": "prompt",
            "at": time.time(),
            "waited_seconds": round(time.time() - started, 3),
        }
        _record(ctx, entry)
        if not agreed:
            raise StepFailed("denied at the prompt")
        return "ok", "approved at the prompt", {"approved_by": entry["by"]}
    settings = ctx.ws.config.approval
    if settings.timeout <= 0:
        raise StepFailed(
            "not approved (pass --yes to approve without a prompt, or set approval.timeout to"
            " wait for `mrbatch plan approve`)"
        )
    ctx.echo(
        f"  waiting up to {settings.timeout:.0f}s for an approval: `mrbatch plan approve"
        f" {ctx.execution.id}` (or deny), or POST /api/plans/{ctx.execution.id}/approve"
    )
    ctx.wait_for({"step": "approval", "since": started, "prompt": prompt})
    deadline = time.monotonic() + settings.timeout
    try:
        while True:
            try:
                answers = [a for a in read_answers(ctx.control, ctx.execution.id) if not a["keys"]]
            except MrbatchError:
                answers = []
            if answers:
                first = answers[0]
                entry = {
                    "step": "approval",
                    **{k: first.get(k) for k in ("decision", "by", "via", "note", "at")},
                    "waited_seconds": round(float(first["at"]) - started, 3),
                }
                _record(ctx, entry)
                if first["decision"] != "approve":
                    raise StepFailed(f"denied by {first['by']} (via {first['via']})")
                return "ok", f"approved by {first['by']} (via {first['via']})", entry
            if time.monotonic() >= deadline:
                _record(
                    ctx,
                    {
                        "step": "approval",
                        "decision": "timeout",
                        "at": time.time(),
                        "waited_seconds": round(time.time() - started, 3),
                    },
                )
                raise StepFailed(f"nobody approved within {settings.timeout:.0f}s")
            time.sleep(settings.poll)
    finally:
        ctx.wait_for(None)
