"""Watching the active region: health from its heartbeat and its error rate, a recommendation
with the evidence, and — only when asked to and the standby is ready — the failover plan (which
waits at its approval step for a person when ``watch.require_approval``). Every decision is
appended to ``<data_dir>/logs/watch.jsonl`` with its evidence.

On the side, every ``watch.evaluate_interval`` the watcher runs ``plan evaluate`` and the
standby parity checks and stores the outcome in the control plane (``evaluation/latest``: the
gateway's metrics and ``mrbatch status`` show it), closes the RPO items of past plans whose
files have arrived, and starts a drill when ``[drill] every`` says one is due."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import backends
from ..config.workspace import Workspace
from ..errors import MrbatchError
from ..observe.evaluation import EVALUATION_DOC
from .drill import DrillBlocked, blocked, due, run_drill
from .evaluate import evaluate_plans
from .operations import failover_target
from .parity import parity
from .plan import PLAN_PREFIX, Execution
from .rpo import close_arrived
from .runbook import Runbook

__all__ = ["EVALUATION_DOC", "Decision", "Watcher", "evaluate_now"]


def evaluate_now(ws: Workspace) -> dict[str, Any]:
    """``plan evaluate`` plus standby parity, stored as ``evaluation/latest``."""
    checks = evaluate_plans(ws)
    same = parity(ws)
    result = {
        "at": time.time(),
        "ok": not any(c["status"] == "failed" for c in checks) and same["ok"],
        "failed": sum(c["status"] == "failed" for c in checks),
        "warnings": sum(c["status"] == "warning" for c in checks),
        "checks": checks,
        "parity": same,
    }
    backends.open_control_plane(ws).put_document(EVALUATION_DOC, result)
    return result


@dataclass
class Decision:
    at: float
    active_region: str | None
    healthy: bool
    recommendation: str
    action: str = "none"
    evidence: dict[str, Any] = field(default_factory=dict)


class Watcher:
    def __init__(
        self,
        ws: Workspace,
        *,
        auto_failover: bool = False,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.ws = ws
        self.auto_failover = auto_failover
        self.echo = echo or (lambda _line: None)
        self.settings = ws.config.watch
        self._previous: dict[str, Any] | None = None
        self._unhealthy_streak = 0
        self._streak_started: float | None = None
        self._last_evaluation = 0.0
        self._drill_blocked: str | None = None
        self.log_path = ws.log_dir / "watch.jsonl"

    def _rates(self, region: str, info: dict[str, Any]) -> dict[str, float | None]:
        stats = info.get("stats", {}) or {}
        sample = {
            "region": region,
            "ticks": info.get("ticks", 0) or 0,
            "loop_errors": info.get("loop_errors", 0) or 0,
            "chunks_started": stats.get("chunk_executions_started", 0),
            "chunks_failed": stats.get("chunk_executions_failed", 0),
        }
        previous, self._previous = self._previous, sample
        if previous is None or previous["region"] != region:
            return {"loop_error_rate": None, "chunk_failure_rate": None}
        ticks = sample["ticks"] - previous["ticks"]
        chunks = sample["chunks_started"] - previous["chunks_started"]
        return {
            "loop_error_rate": (sample["loop_errors"] - previous["loop_errors"]) / ticks
            if ticks > 0
            else None,
            "chunk_failure_rate": (sample["chunks_failed"] - previous["chunks_failed"]) / chunks
            if chunks > 0
            else None,
        }

    def evaluate(self) -> Decision:
        now = time.time()
        control = backends.open_control_plane(self.ws)
        routing = control.routing()
        beats = control.heartbeats()
        active = routing.active_region
        evidence: dict[str, Any] = {"epoch": routing.epoch, "phase": routing.phase}
        problems: list[str] = []
        beat = beats.get(active)
        age = None if beat is None else now - beat.at
        evidence["heartbeat_age"] = None if age is None else round(age, 3)
        if age is None or age > self.settings.heartbeat_timeout:
            problems.append(
                f"no heartbeat from {active} for "
                + ("ever" if age is None else f"{age:.1f}s")
                + f" (timeout {self.settings.heartbeat_timeout:.0f}s)"
            )
        info = dict(beat.info) if beat else {}
        rates = self._rates(active, info)
        evidence.update(rates)
        evidence["process_state"] = info.get("state")
        evidence["last_error"] = info.get("last_error")
        limit = self.settings.max_error_rate
        for name, rate in rates.items():
            if rate is not None and rate > limit:
                problems.append(f"{name.replace('_', ' ')} {rate:.0%} above {limit:.0%}")
        if routing.phase != "ACTIVE":
            return Decision(
                now, active, True, "a recovery plan is in progress; waiting", evidence=evidence
            )
        healthy = not problems
        self._unhealthy_streak = 0 if healthy else self._unhealthy_streak + 1
        if healthy or self._streak_started is None:
            self._streak_started = None if healthy else now
        if healthy:
            return Decision(now, active, True, f"{active} is healthy", evidence=evidence)
        target = failover_target(self.ws, None)
        ready, why = self._standby_ready(target, beats, now)
        evidence["standby"] = {"region": target, "ready": ready, "why": why}
        recommendation = f"fail over from {active} to {target}: " + "; ".join(problems)
        if not ready:
            recommendation += f" (but {target} is not ready: {why})"
        return Decision(now, active, False, recommendation, evidence=evidence)

    def _standby_ready(self, target: str, beats: dict[str, Any], now: float) -> tuple[bool, str]:
        beat = beats.get(target)
        if beat is None or now - beat.at > self.settings.heartbeat_timeout:
            return False, f"no recent heartbeat from {target}"
        try:
            backends.open_object_store(self.ws, target).last_seq()
            backends.open_state_table(self.ws, target).get_cursor("trigger")
        except MrbatchError as exc:
            return False, str(exc)
        return True, "heartbeat fresh, bucket and state reachable"

    def _log(self, decision: Decision) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(decision), default=str) + "\n")

    def step(self) -> Decision:
        try:
            decision = self.evaluate()
        except MrbatchError as exc:
            decision = Decision(time.time(), None, False, f"cannot evaluate: {exc}")
        if (
            not decision.healthy
            and self.auto_failover
            and decision.evidence.get("standby", {}).get("ready")
            and self._unhealthy_streak >= self.settings.unhealthy_checks
        ):
            target = decision.evidence["standby"]["region"]
            decision.action = f"failover to {target}"
            self._log(decision)
            self.echo(
                f"{time.strftime('%H:%M:%S')} {decision.recommendation} -> running the"
                " failover plan"
            )
            execution = Runbook(
                self.ws,
                "failover",
                target,
                yes=not self.settings.require_approval,
                echo=self.echo,
                trigger="watch",
                detected=(self._streak_started, "watch"),
            ).execute()
            decision = Decision(
                time.time(),
                target,
                execution.outcome == "succeeded",
                f"failover {execution.outcome} (RTO {execution.rto_seconds}s)",
                action="failover-done",
                evidence={"execution": execution.id, "reason": execution.reason},
            )
            self._previous = None
            self._unhealthy_streak = 0
            self._streak_started = None
        elif decision.healthy:
            self._side_work()
        self._log(decision)
        self.echo(
            f"{time.strftime('%H:%M:%S')} {'OK  ' if decision.healthy else 'BAD '}"
            f"{decision.recommendation}"
        )
        return decision

    def _side_work(self) -> None:
        """Evaluation, closing RPO items and scheduled drills, while all is well."""
        now = time.time()
        every = self.settings.evaluate_interval
        if every > 0 and now - self._last_evaluation >= every:
            self._last_evaluation = now
            try:
                result = evaluate_now(self.ws)
                self._close_items()
            except MrbatchError as exc:
                self.echo(f"{time.strftime('%H:%M:%S')} evaluation failed: {exc}")
            else:
                if not result["ok"]:
                    problems = [c["check"] for c in result["checks"] if c["status"] == "failed"]
                    problems += [f"parity: {d['what']}" for d in result["parity"]["differences"]]
                    self.echo(
                        f"{time.strftime('%H:%M:%S')} plan evaluation FAILED: "
                        + ", ".join(problems)
                    )
        try:
            if not due(self.ws, now):
                return
            why = blocked(self.ws, scheduled=True, now=now)
        except MrbatchError as exc:
            why = str(exc)
        if why is not None:
            if why != self._drill_blocked:
                self.echo(f"{time.strftime('%H:%M:%S')} a drill is due but blocked: {why}")
                self._log(Decision(now, None, True, f"drill blocked: {why}", "drill-blocked"))
            self._drill_blocked = why
            return
        self._drill_blocked = None
        self._log(Decision(now, None, True, "a drill is due", "drill"))
        try:
            result = run_drill(self.ws, trigger="watch", echo=self.echo)
        except DrillBlocked as exc:
            self.echo(f"{time.strftime('%H:%M:%S')} {exc}")
            return
        self._previous = None
        self._log(
            Decision(
                time.time(),
                None,
                bool(result.get("passed")),
                f"drill {result['drill']} {'passed' if result.get('passed') else 'FAILED'}",
                "drill-done",
                {"failures": result.get("failures"), "report": result.get("seq")},
            )
        )

    def _close_items(self) -> None:
        control = backends.open_control_plane(self.ws)
        for name, body in control.documents(PLAN_PREFIX).items():
            execution = Execution.from_dict(body)
            if execution.outcome != "running" and close_arrived(self.ws, execution):
                control.put_document(name, execution.to_dict())

    def run(self, iterations: int | None = None) -> list[Decision]:
        decisions: list[Decision] = []
        while iterations is None or len(decisions) < iterations:
            decisions.append(self.step())
            if iterations is None or len(decisions) < iterations:
                time.sleep(self.settings.interval)
        return decisions
