"""Recovery plans (failover, failback) executed step by step, each step logged with its start,
end, outcome and evidence, and the execution's RTO reported against the desired RTO.

A plan runs from the region being activated and never needs the region it leaves: everything
it reads comes from the target's bucket and state replica and from the control plane. Before
the fence, a failing step aborts the plan and nothing has changed. After the fence a failing
step is logged and the plan goes on to activation: a plan must never leave the deployment with
no region doing the work.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from . import backends
from .config import StepConfig
from .errors import ConflictError, MrbatchError, SafetyRuleError, UnavailableError, UsageError
from .ports import RegionState, Routing
from .replication import backlog
from .workspace import Workspace

__all__ = ["Execution", "PlanContext", "Runbook", "StepFailed", "StepLog", "history"]

log = logging.getLogger("mrbatch.runbook")
PLAN_PREFIX = "plan/"


class StepFailed(MrbatchError):
    """A plan step could not do its job; the message says why."""

    code = "step_failed"


@dataclass
class StepLog:
    name: str
    kind: str
    started: float
    ended: float | None = None
    outcome: str = "running"  # ok | warning | failed | skipped | running
    message: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    children: list[StepLog] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        return None if self.ended is None else round(self.ended - self.started, 3)


@dataclass
class Execution:
    id: str
    plan: str
    target: str
    source: str | None
    started: float
    desired_rto: float
    ended: float | None = None
    outcome: str = "running"  # succeeded | failed | aborted | running
    reason: str | None = None
    epoch_before: int | None = None
    epoch_after: int | None = None
    rto_seconds: float | None = None
    at_risk: list[dict[str, Any]] = field(default_factory=list)
    steps: list[StepLog] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["v"] = 1
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Execution:
        def step(raw: dict[str, Any]) -> StepLog:
            raw = dict(raw)
            raw["children"] = [step(c) for c in raw.get("children", [])]
            return StepLog(**raw)

        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["steps"] = [step(s) for s in data.get("steps", [])]
        return cls(**fields)


@dataclass
class PlanContext:
    """What a step sees (custom Python steps get this object)."""

    ws: Workspace
    plan: str
    target: str
    source: str | None
    execution: Execution
    yes: bool
    force: bool
    max_wait: float
    confirm: Callable[[str], bool]
    echo: Callable[[str], None]
    routing: Routing | None = None
    fenced: bool = False
    epoch: int | None = None

    @property
    def control(self) -> Any:
        return backends.open_control_plane(self.ws, caller=self.target)

    def env(self) -> dict[str, str]:
        return {
            "MRBATCH_PLAN": self.plan,
            "MRBATCH_TARGET": self.target,
            "MRBATCH_SOURCE": self.source or "",
            "MRBATCH_EPOCH": str(self.epoch or ""),
            "MRBATCH_CONFIG": str(self.ws.config_path),
            "MRBATCH_EXECUTION": self.execution.id,
        }


Result = tuple[str, str, dict[str, Any]]  # outcome, message, evidence


class Runbook:
    def __init__(
        self,
        ws: Workspace,
        plan: str,
        target: str,
        *,
        yes: bool = False,
        force: bool = False,
        max_wait: float | None = None,
        confirm: Callable[[str], bool] | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        if plan not in ("failover", "failback"):
            raise UsageError(f"unknown plan {plan!r} (failover, failback)")
        ws.check_region(target)
        self.ws = ws
        self.plan = plan
        self.steps: list[StepConfig] = list(getattr(ws.config.plans, plan).steps)
        control = backends.open_control_plane(ws, caller=target)
        routing = control.routing()
        execution = Execution(
            id=time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6],
            plan=plan,
            target=target,
            source=routing.active_region,
            started=time.time(),
            desired_rto=ws.config.failover.desired_rto,
            epoch_before=routing.epoch,
        )
        self.ctx = PlanContext(
            ws=ws,
            plan=plan,
            target=target,
            source=routing.active_region,
            execution=execution,
            yes=yes,
            force=force,
            max_wait=ws.config.failover.max_wait if max_wait is None else max_wait,
            confirm=confirm or (lambda _prompt: False),
            echo=echo or (lambda _line: None),
            routing=routing,
            epoch=routing.epoch,
        )
        self._saved_lock = threading.Lock()

    # ------------------------------------------------------------------ persistence
    def _save(self) -> None:
        execution = self.ctx.execution
        with self._saved_lock:
            try:
                backends.open_control_plane(self.ws, caller=self.ctx.target).put_document(
                    PLAN_PREFIX + execution.id, execution.to_dict()
                )
            except MrbatchError as exc:  # the log is kept in memory and printed anyway
                log.warning("could not store the plan log: %s", exc)

    # ------------------------------------------------------------------ running
    def execute(self) -> Execution:
        execution = self.ctx.execution
        self.ctx.echo(
            f"{self.plan} to {self.ctx.target} (from {self.ctx.source}, epoch"
            f" {execution.epoch_before}), plan {execution.id}"
        )
        self._save()
        try:
            for step in self.steps:
                entry = self._run_step(step)
                execution.steps.append(entry)
                self._save()
                if entry.outcome == "failed" and not self.ctx.fenced:
                    execution.outcome = "aborted"
                    execution.reason = f"step {entry.name} failed: {entry.message}"
                    break
                if step.action == "activate" and entry.outcome in ("ok", "warning"):
                    execution.rto_seconds = round(time.time() - execution.started, 3)
                if step.action == "reconcile":
                    execution.at_risk = list(entry.evidence.get("at_risk", []))
            else:
                failed = [s.name for s in execution.steps if s.outcome == "failed"]
                execution.outcome = "failed" if failed else "succeeded"
                if failed:
                    execution.reason = f"step(s) failed after the fence: {', '.join(failed)}"
        finally:
            if execution.outcome == "running":
                execution.outcome = "failed"
                execution.reason = execution.reason or "interrupted"
            execution.ended = time.time()
            try:
                execution.epoch_after = (
                    backends.open_control_plane(self.ws, caller=self.ctx.target).routing().epoch
                )
            except MrbatchError:
                execution.epoch_after = self.ctx.epoch
            self._save()
        return execution

    def _run_step(self, step: StepConfig) -> StepLog:
        kind = (
            "parallel"
            if step.parallel is not None
            else "shell"
            if step.run is not None
            else "python"
            if step.call is not None
            else step.action or "?"
        )
        entry = StepLog(name=step.name, kind=kind, started=time.time())
        self.ctx.echo(f"  {step.name} ...")
        try:
            if step.parallel is not None:
                outcome, message, evidence = self._parallel(step, entry)
            elif step.run is not None:
                outcome, message, evidence = _shell(self.ctx, step)
            elif step.call is not None:
                outcome, message, evidence = _python(self.ctx, step)
            else:
                outcome, message, evidence = BUILTIN[step.action or ""](self.ctx)
        except StepFailed as exc:
            outcome, message, evidence = "failed", exc.message, {}
        except (ConflictError, SafetyRuleError, UnavailableError, UsageError) as exc:
            hint = f" ({exc.hint})" if exc.hint else ""
            outcome, message, evidence = "failed", exc.message + hint, {"error": exc.code}
        except Exception as exc:  # a custom step's bug is that step's failure
            log.exception("plan step %s failed", step.name)
            outcome, message, evidence = "failed", f"{type(exc).__name__}: {exc}", {}
        entry.outcome, entry.message, entry.evidence = outcome, message, evidence
        entry.ended = time.time()
        self.ctx.echo(f"  {step.name}: {outcome} in {entry.seconds:.2f}s — {message}")
        return entry

    def _parallel(self, step: StepConfig, entry: StepLog) -> Result:
        children = list(step.parallel or [])
        with ThreadPoolExecutor(max_workers=len(children) or 1) as pool:
            entries = list(pool.map(self._run_step, children))
        entry.children = entries
        failed = [e.name for e in entries if e.outcome == "failed"]
        if failed:
            return "failed", f"failed in the group: {', '.join(failed)}", {}
        return "ok", f"{len(entries)} step(s) in parallel", {}


# --------------------------------------------------------------------------- custom steps


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:g}s"


def _shell(ctx: PlanContext, step: StepConfig) -> Result:
    timeout = step.timeout or 60.0
    try:
        done = subprocess.run(
            step.run or "",
            shell=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **ctx.env()},
            cwd=ctx.ws.root,
        )
    except subprocess.TimeoutExpired as exc:
        raise StepFailed(f"`{step.run}` did not finish within {_seconds(timeout)}") from exc
    evidence = {
        "exit_code": done.returncode,
        "stdout": done.stdout[-2000:],
        "stderr": done.stderr[-2000:],
    }
    if done.returncode != 0:
        return "failed", f"`{step.run}` exited with {done.returncode}", evidence
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


def _python(ctx: PlanContext, step: StepConfig) -> Result:
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
    outcome = "warning" if problems else "ok"
    return outcome, "; ".join(problems) or f"{ctx.target} is ready", evidence


def approval(ctx: PlanContext) -> Result:
    if ctx.yes:
        return "ok", "approved with --yes", {"approved_by": "--yes"}
    prompt = (
        f"{ctx.plan}: make {ctx.target} the active region and fence {ctx.source}"
        f" (epoch {ctx.epoch} -> {(ctx.epoch or 0) + 1})?"
    )
    if not ctx.confirm(prompt):
        raise StepFailed("not approved (pass --yes to approve without a prompt)")
    return "ok", "approved at the prompt", {"approved_by": os.environ.get("USER", "operator")}


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
    the bound passes or the source cannot be read (False)."""
    assert ctx.source is not None
    deadline = time.monotonic() + bound
    started = time.monotonic()
    while True:
        try:
            pending = backlog(ctx.ws, ctx.source, ctx.target)
        except UnavailableError as exc:
            return False, {
                "source": f"unreachable: {exc}",
                "waited_seconds": round(time.monotonic() - started, 3),
            }
        evidence = {
            "objects": pending.objects,
            "records": pending.records,
            "waited_seconds": round(time.monotonic() - started, 3),
        }
        if pending.total == 0:
            return True, evidence
        if time.monotonic() >= deadline:
            return False, evidence
        time.sleep(0.05)


def wait_replication(ctx: PlanContext) -> Result:
    if not ctx.source or ctx.source == ctx.target:
        return "ok", "no other region to wait for", {}
    drained, evidence = _drain(ctx, bound=ctx.max_wait)
    if drained:
        return "ok", f"backlog from {ctx.source} is empty", evidence
    if "source" in evidence:
        return (
            "warning",
            (
                f"{ctx.source} cannot be read, so nothing more can arrive now;"
                " reconcile watches for late inputs"
            ),
            evidence,
        )
    return (
        "warning",
        (
            f"backlog from {ctx.source} not empty after {ctx.max_wait:.0f}s"
            f" ({evidence['objects']} objects, {evidence['records']} records);"
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
            f"{ctx.target} is not up to date with {ctx.source} after {ctx.max_wait:.0f}s"
            f" ({evidence}); nothing was changed"
        )
    return "ok", f"{ctx.target}'s bucket and state are up to date with {ctx.source}", evidence


def activate(ctx: PlanContext) -> Result:
    control = ctx.control
    routing = control.set_phase("ACTIVE", expected_epoch=ctx.epoch or 0)
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
    from .recovery import reconcile_now

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
    "fence": fence,
    "wait-replication": wait_replication,
    "catch-up": catch_up,
    "activate": activate,
    "reconcile": reconcile_step,
    "standby-previous": standby_previous,
}


def history(ws: Workspace) -> list[Execution]:
    docs = backends.open_control_plane(ws).documents(PLAN_PREFIX)
    return sorted((Execution.from_dict(d) for d in docs.values()), key=lambda e: e.started)
