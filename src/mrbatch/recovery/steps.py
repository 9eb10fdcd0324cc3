"""The steps a recovery plan is made of: the built-in ones (readiness, approval, fence,
wait-replication, catch-up, activate, reconcile, standby-previous), and the custom ones a plan
declares (a shell command or a Python callable, each with a timeout). Every step returns
``(outcome, message, evidence)`` or raises StepFailed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import backends
from ..config.plans import StepConfig
from ..errors import UnavailableError
from ..ports import RegionState
from ..runtime.replication import backlog
from .answers import approval
from .operations import reconcile_now
from .plan import PlanContext, Result, StepFailed, too_soon
from .rpo import close_arrived, rpo_gate

__all__ = ["BUILTIN", "python_step", "resolve_callable", "shell_step"]


# --------------------------------------------------------------------------- custom steps


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:g}s"


def shell_step(ctx: PlanContext, step: StepConfig) -> Result:
    """Run the step's command with ``sh`` in a process group of its own, so that a timeout
    ends everything the command started, not only the shell."""
    timeout = step.timeout or 60.0
    proc = subprocess.Popen(
        step.run or "",
        shell=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ctx.env()},
        cwd=ctx.ws.root,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5)  # a descendant that left the group may hold the pipes
        raise StepFailed(
            f"`{step.run}` did not finish within {_seconds(timeout)}; it was stopped, with"
            " everything it started"
        ) from exc
    finally:
        # A command that exited but left children in its group behind: end them too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    evidence = {
        "exit_code": proc.returncode,
        "stdout": stdout[-2000:],
        "stderr": stderr[-2000:],
    }
    if proc.returncode != 0:
        return "failed", f"`{step.run}` exited with {proc.returncode}", evidence
    return "ok", f"`{step.run}` succeeded", evidence


def resolve_callable(spec: str) -> Callable[[PlanContext], Any]:
    module_name, _, attr = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise StepFailed(f"cannot load {spec}: {exc}") from exc
    if not callable(function):
        raise StepFailed(f"{spec} is not callable")
    return function  # type: ignore[no-any-return]


def python_step(ctx: PlanContext, step: StepConfig) -> Result:
    function = resolve_callable(step.call or "")
    timeout = step.timeout or 60.0
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = function(ctx)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name=f"step-{step.name}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise StepFailed(f"{step.call} did not return within {_seconds(timeout)}")
    if "error" in box:
        error = box["error"]
        raise StepFailed(f"{step.call} raised {type(error).__name__}: {error}")
    value = box.get("value")
    return "ok", f"{step.call} returned", value if isinstance(value, dict) else {"value": value}


# --------------------------------------------------------------------------- built-in steps


def _heartbeat_age(ctx: PlanContext, name: str) -> float | None:
    beat = ctx.control.heartbeats().get(name)
    return None if beat is None else round(time.time() - beat.at, 3)


def readiness(ctx: PlanContext) -> Result:
    """Can the target take over? Its bucket and state replica answer, its process and its
    replicator are alive, and how much of the source region has not replicated yet."""
    evidence: dict[str, Any] = {}
    problems: list[str] = []
    routing = ctx.control.routing()
    evidence["routing"] = {
        "active": routing.active_region,
        "epoch": routing.epoch,
        "phase": routing.phase,
    }
    if routing.active_region == ctx.target and routing.phase == "ACTIVE":
        raise StepFailed(f"{ctx.target} is already the active region (epoch {routing.epoch})")
    store = backends.open_object_store(ctx.ws, ctx.target)
    table = backends.open_state_table(ctx.ws, ctx.target)
    for what, probe in (
        ("bucket", lambda: store.last_seq()),
        ("state", lambda: table.get_cursor("trigger")),
    ):
        try:
            probe()
            evidence[what] = "reachable"
        except UnavailableError as exc:
            evidence[what] = f"unreachable: {exc}"
            problems.append(f"{ctx.target}'s {what} is unreachable")
    timeout = ctx.ws.config.watch.heartbeat_timeout
    for what, name in (("process", ctx.target), ("replicator", f"replicator:{ctx.target}")):
        age = _heartbeat_age(ctx, name)
        evidence[f"{what}_heartbeat_age"] = age
        if age is None or age > timeout:
            problems.append(
                f"{ctx.target}'s {what} is not alive (last heartbeat"
                f" {'never' if age is None else f'{age:.1f}s ago'})"
            )
    if ctx.source and ctx.source != ctx.target:
        try:
            pending = backlog(ctx.ws, ctx.source, ctx.target)
            evidence["backlog_from_source"] = {
                "objects": pending.objects,
                "records": pending.records,
                "lag_seconds": round(pending.lag(time.time()), 3),
            }
        except UnavailableError as exc:
            evidence["backlog_from_source"] = f"unknown: {ctx.source} unreachable ({exc})"
    if problems and not ctx.force:
        raise StepFailed("; ".join(problems) + " (--force to go on anyway)")
    refused = too_soon(ctx)
    if refused:
        raise StepFailed(refused)
    outcome = "warning" if problems else "ok"
    return outcome, "; ".join(problems) or f"{ctx.target} is ready", evidence


def fence(ctx: PlanContext) -> Result:
    control = ctx.control
    current = control.routing()
    routing = control.switch(
        ctx.target,
        expected_epoch=ctx.epoch or current.epoch,
        min_interval=ctx.ws.config.failover.min_switch_interval,
        force=ctx.force,
        phase="FAILOVER",
        plan_id=ctx.execution.id,
    )
    ctx.fenced, ctx.epoch, ctx.routing = True, routing.epoch, routing
    fenced = [name for name, state in routing.regions.items() if state == RegionState.FENCED]
    return (
        "ok",
        f"epoch {routing.epoch}; fenced {', '.join(fenced) or 'none'}",
        {
            "epoch": routing.epoch,
            "regions": dict(routing.regions),
        },
    )


def _drain(ctx: PlanContext, *, bound: float) -> tuple[bool, dict[str, Any]]:
    """Wait until nothing of the source region is left to replicate into the target (True), or
    — ungraceful — the bound passes or the source cannot be read (False). Graceful waits
    without a bound, through an unreadable source too, until the plan is switched to
    ungraceful (then the bound counts from the start of the wait)."""
    assert ctx.source is not None
    started = time.monotonic()
    mode, mode_checked = ctx.mode(), started
    waiting = False
    try:
        while True:
            evidence: dict[str, Any] = {"mode": mode}
            try:
                pending = backlog(ctx.ws, ctx.source, ctx.target)
                evidence.update(objects=pending.objects, records=pending.records)
                if pending.total == 0:
                    evidence["waited_seconds"] = round(time.monotonic() - started, 3)
                    return True, evidence
            except UnavailableError as exc:
                evidence["source"] = f"unreachable: {exc}"
            evidence["waited_seconds"] = round(time.monotonic() - started, 3)
            if mode != "graceful" and ("source" in evidence or evidence["waited_seconds"] >= bound):
                return False, evidence
            if mode == "graceful" and not waiting:
                waiting = True
                ctx.echo(
                    f"  graceful: waiting for replication from {ctx.source} without a bound"
                    f" (`mrbatch plan ungraceful {ctx.execution.id}` takes the bounded wait)"
                )
                ctx.wait_for({"step": "replication", "since": time.time(), "mode": mode})
            time.sleep(0.05 if mode != "graceful" else 0.2)
            if time.monotonic() - mode_checked >= 0.5:
                mode, mode_checked = ctx.mode(), time.monotonic()
    finally:
        if waiting:
            ctx.wait_for(None)


def _left_behind(ctx: PlanContext) -> list[dict[str, Any]]:
    """The fence-time RPO items whose files have not arrived yet."""
    close_arrived(ctx.ws, ctx.execution)
    items = (ctx.execution.rpo or {}).get("items") or []
    return [
        {k: i.get(k) for k in ("key", "run_id", "size", "accepted_region", "state")}
        for i in items
        if i.get("state") in ("open", "approved")
    ]


def wait_replication(ctx: PlanContext) -> Result:
    if not ctx.source or ctx.source == ctx.target:
        return "ok", "no other region to wait for", {}
    drained, evidence = _drain(ctx, bound=ctx.max_wait)
    if drained:
        return "ok", f"backlog from {ctx.source} is empty", evidence
    left = evidence["left_behind"] = _left_behind(ctx)
    named = (
        f"; left behind: {', '.join(i['key'] for i in left)}"
        if left
        else "; no accepted input is missing"
    )
    if "source" in evidence:
        return (
            "warning",
            (
                f"{ctx.source} cannot be read, so nothing more can arrive now{named};"
                " reconcile watches for late inputs"
            ),
            evidence,
        )
    return (
        "warning",
        (
            f"backlog from {ctx.source} not empty after {ctx.max_wait:.0f}s"
            f" ({evidence['objects']} objects, {evidence['records']} records){named};"
            " reconcile watches for late inputs"
        ),
        evidence,
    )


def catch_up(ctx: PlanContext) -> Result:
    if not ctx.source or ctx.source == ctx.target:
        return "ok", "nothing to catch up", {}
    drained, evidence = _drain(ctx, bound=ctx.max_wait)
    if not drained:
        raise StepFailed(
            f"{ctx.target} is not up to date with {ctx.source}"
            f" after {evidence['waited_seconds']:.0f}s"
            f" ({evidence}); nothing was changed"
        )
    return "ok", f"{ctx.target}'s bucket and state are up to date with {ctx.source}", evidence


def activate(ctx: PlanContext) -> Result:
    control = ctx.control
    routing = control.set_phase("ACTIVE", expected_epoch=ctx.epoch or 0)
    ctx.execution.activated_at = time.time()
    ctx.routing = routing
    deadline = time.monotonic() + ctx.ws.config.watch.heartbeat_timeout
    seen = None
    while time.monotonic() < deadline:
        beat = control.heartbeats().get(ctx.target)
        if beat and beat.info.get("state") == "active" and beat.info.get("epoch") == routing.epoch:
            seen = beat
            break
        time.sleep(0.02)
    evidence = {
        "epoch": routing.epoch,
        "phase": routing.phase,
        "process_acknowledged": seen is not None,
    }
    if seen is None:
        return (
            "warning",
            (
                f"{ctx.target} is ACTIVE in epoch {routing.epoch}, but its process"
                " has not acknowledged yet"
            ),
            evidence,
        )
    return "ok", f"{ctx.target} is ACTIVE in epoch {routing.epoch} and claiming", evidence


def reconcile_step(ctx: PlanContext) -> Result:
    report = reconcile_now(ctx.ws, ctx.target, max_wait=ctx.max_wait, echo=ctx.echo)
    outcome = "warning" if report["at_risk"] else "ok"
    message = (
        f"{len(report['redriven'])} run(s) re-driven, {len(report['at_risk'])} at risk"
        f", {len(report['in_progress'])} already running here"
    )
    return outcome, message, report


def standby_previous(ctx: PlanContext) -> Result:
    if not ctx.source or ctx.source == ctx.target:
        return "ok", "no previous region", {}
    routing = ctx.control.set_region_state(
        ctx.source, RegionState.STANDBY, expected_epoch=ctx.epoch or 0
    )
    return "ok", f"{ctx.source} is STANDBY again", {"regions": dict(routing.regions)}


BUILTIN: dict[str, Callable[[PlanContext], Result]] = {
    "readiness": readiness,
    "approval": approval,
    "rpo-gate": rpo_gate,
    "fence": fence,
    "wait-replication": wait_replication,
    "catch-up": catch_up,
    "activate": activate,
    "reconcile": reconcile_step,
    "standby-previous": standby_previous,
}
