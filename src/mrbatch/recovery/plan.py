"""What a recovery plan execution is made of: the context a step sees, the log of each step and
of the whole execution (kept in the control plane as ``plan/<id>`` documents), and the error a
step raises when it cannot do its job. The steps are in :mod:`.steps`, the engine that runs
them in :mod:`.runbook`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import backends
from ..config.workspace import Workspace
from ..errors import MrbatchError
from ..ports import Routing

__all__ = [
    "ANSWER_PREFIX",
    "DRILL_PREFIX",
    "MODES",
    "MODE_PREFIX",
    "PLAN_PREFIX",
    "Execution",
    "PlanContext",
    "Result",
    "StepFailed",
    "StepLog",
    "history",
    "too_soon",
]

PLAN_PREFIX = "plan/"
DRILL_PREFIX = "drill/"
# Answers to a waiting plan (`approve`, `deny`, per-key approvals) and switches of its mode:
# one document each, ``<prefix><execution id>/<time>-<random>``, never overwritten.
ANSWER_PREFIX = "answer/"
MODE_PREFIX = "mode/"
MODES = ("graceful", "ungraceful")


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
    # graceful: wait for replication without a bound; ungraceful: the bounded wait, and what
    # is left behind is named. ``mode_changes`` logs every switch made while it ran.
    mode: str = "ungraceful"
    mode_changes: list[dict[str, Any]] = field(default_factory=list)
    trigger: str = "command"  # command | watch | drill
    drill: str | None = None  # the drill this execution belongs to
    # The timeline: when the failure was detected (and by what), decided, fenced, activated.
    detected_at: float | None = None
    detected_by: str | None = None
    decided_at: float | None = None
    fenced_at: float | None = None
    activated_at: float | None = None
    # What the plan is waiting for right now (an approval, per-key approvals, replication).
    waiting: dict[str, Any] | None = None
    approvals: list[dict[str, Any]] = field(default_factory=list)
    # The RPO gate's list at fence time (items closed as their files arrive) and the runs that
    # were in flight then.
    rpo: dict[str, Any] = field(default_factory=dict)
    in_flight: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] | None = None  # seq, hash and files of its recovery report

    @property
    def kind(self) -> str:
        """``drill`` for an execution a drill ran, else ``recovery``."""
        return "drill" if self.drill else "recovery"

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
    interactive: bool = False  # ``confirm`` asks a person at a terminal
    accept_loss: tuple[str, ...] = ()  # keys (or run ids) whose loss the operator accepted
    save: Callable[[], None] = lambda: None  # store the execution's log now

    def mode(self) -> str:
        """The execution's mode now: a switch to ungraceful made meanwhile (`mrbatch plan
        ungraceful`, the gateway) is taken and logged."""
        execution = self.execution
        try:
            switches = self.control.documents(f"{MODE_PREFIX}{execution.id}/")
        except MrbatchError:
            return execution.mode  # the control plane is out of reach: keep the mode
        seen = {change.get("name") for change in execution.mode_changes}
        for name, body in sorted(switches.items()):
            if name in seen or body.get("mode") == execution.mode:
                continue
            execution.mode_changes.append(
                {"name": name, "from": execution.mode, **body, "seen_at": time.time()}
            )
            execution.mode = str(body.get("mode"))
            self.echo(f"  mode switched to {execution.mode} by {body.get('by')}")
            self.save()
        return execution.mode

    def wait_for(self, what: dict[str, Any] | None) -> None:
        """Say (in the stored log) what the plan waits for now; None when it stopped waiting."""
        self.execution.waiting = what
        self.save()

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


def history(ws: Workspace) -> list[Execution]:
    docs = backends.open_control_plane(ws).documents(PLAN_PREFIX)
    return sorted((Execution.from_dict(d) for d in docs.values()), key=lambda e: e.started)


def too_soon(ctx: PlanContext) -> str | None:
    """Why the anti-flap rule would refuse a switch now (and when it will not), or None. Checked
    before the approval, so nobody approves a switch the fence then refuses."""
    if ctx.force:
        return None
    routing = ctx.control.routing()
    rule = ctx.ws.config.failover.min_switch_interval
    since = time.time() - routing.switched_at
    if since >= rule:
        return None
    left = rule - since
    at = time.strftime("%H:%M:%S", time.localtime(time.time() + left))
    return (
        f"rule 'min-switch-interval': the last switch was {since:.0f}s ago and"
        f" failover.min_switch_interval is {rule:.0f}s: try again in {left:.0f}s (at {at}),"
        " or pass --force"
    )
