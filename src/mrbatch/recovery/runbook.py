"""The engine that executes a recovery plan (failover, failback) step by step, each step logged
with its start, end, outcome and evidence, and the execution's RTO reported against the desired
RTO.

A plan runs from the region being activated and never needs the region it leaves: everything
it reads comes from the target's bucket and state replica and from the control plane. Before
the fence, a failing step aborts the plan and nothing has changed. After the fence a failing
step is logged and the plan goes on to activation: a plan must never leave the deployment with
no region doing the work.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .. import backends
from ..config.plans import StepConfig
from ..config.workspace import Workspace
from ..errors import ConflictError, MrbatchError, SafetyRuleError, UnavailableError, UsageError
from ..observe.tracing import trace_plan
from .audit import fence_snapshot, write_plan_report
from .plan import MODES, PLAN_PREFIX, Execution, PlanContext, Result, StepFailed, StepLog
from .rpo import close_arrived
from .steps import BUILTIN, python_step, shell_step
from .timeline import detection

__all__ = ["Runbook"]

log = logging.getLogger("mrbatch.runbook")


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
        interactive: bool = False,
        mode: str = "ungraceful",
        trigger: str = "command",
        drill: str | None = None,
        detected: tuple[float | None, str | None] | None = None,
        accept_loss: tuple[str, ...] = (),
        report: bool = True,
        settle: float | None = None,
    ) -> None:
        if plan not in ("failover", "failback"):
            raise UsageError(f"unknown plan {plan!r} (failover, failback)")
        if mode not in MODES:
            raise UsageError(f"unknown mode {mode!r} ({', '.join(MODES)})")
        ws.check_region(target)
        self.ws = ws
        self.plan = plan
        self.steps: list[StepConfig] = list(getattr(ws.config.plans, plan).steps)
        control = backends.open_control_plane(ws, caller=target)
        routing = control.routing()
        now = time.time()
        detected_at, detected_by = detected or detection(ws, routing, now)
        execution = Execution(
            id=time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6],
            plan=plan,
            target=target,
            source=routing.active_region,
            started=now,
            desired_rto=ws.config.failover.desired_rto,
            epoch_before=routing.epoch,
            mode=mode,
            trigger=trigger,
            drill=drill,
            detected_at=detected_at,
            detected_by=detected_by,
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
            interactive=interactive,
            accept_loss=tuple(accept_loss),
            save=self._save,
        )
        self._saved_lock = threading.Lock()
        self.write_report = report
        self.settle = ws.config.reports.settle if settle is None else settle

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
            f" {execution.epoch_before}), plan {execution.id}, {execution.mode}"
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
                if step.action == "fence" and entry.outcome == "ok":
                    execution.fenced_at = entry.ended
                    fence_snapshot(self.ctx)
                    self._save()
                if step.action == "activate" and entry.outcome in ("ok", "warning"):
                    # the routing control's switch to ACTIVE (the step then waits for the
                    # region's acknowledgement, which the first claim shows)
                    execution.activated_at = execution.activated_at or time.time()
                    execution.rto_seconds = round(execution.activated_at - execution.started, 3)
                if step.action == "reconcile":
                    execution.at_risk = list(entry.evidence.get("at_risk", []))
                if step.action in ("wait-replication", "reconcile") and close_arrived(
                    self.ws, execution
                ):
                    self._save()
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
            execution.waiting = None
            self._save()
        if self.write_report:
            try:
                write_plan_report(self.ws, execution, settle_for=self.settle, echo=self.ctx.echo)
            except Exception:  # the plan's outcome stands; the report's failure is logged
                log.exception("could not write the recovery report of %s", execution.id)
            self._save()
        trace_plan(self.ws, execution)
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
                outcome, message, evidence = shell_step(self.ctx, step)
            elif step.call is not None:
                outcome, message, evidence = python_step(self.ctx, step)
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
