"""Recovery plans as configuration: each plan a list of steps — a built-in action, a shell
command, a Python ``module:function`` or a parallel group — inline in ``mrbatch.toml`` or in
the file named by ``plans.file``."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from .values import Duration, Section

__all__ = ["BUILTIN_STEPS", "DEFAULT_PLANS", "PlanConfig", "PlansConfig", "StepConfig"]

BUILTIN_STEPS = (
    "readiness",
    "approval",
    "rpo-gate",
    "fence",
    "wait-replication",
    "activate",
    "reconcile",
    "catch-up",
    "standby-previous",
)
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class StepConfig(Section):
    """One step of a recovery plan: a built-in ``action``, a shell command (``run``), a Python
    ``module:function`` (``call``), or a group of steps run in ``parallel``."""

    name: str = Field(min_length=1)
    action: str | None = None
    run: str | None = None
    call: str | None = None
    parallel: list[StepConfig] | None = None
    timeout: Duration | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> StepConfig:
        kinds = [k for k in ("action", "run", "call", "parallel") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"step {self.name!r} needs exactly one of action, run, call, parallel"
                f" (has {', '.join(kinds) or 'none'})"
            )
        if self.action is not None and self.action not in BUILTIN_STEPS:
            raise ValueError(
                f"step {self.name!r}: unknown action {self.action!r}"
                f" (built-in: {', '.join(BUILTIN_STEPS)})"
            )
        if self.call is not None and not _CALLABLE.match(self.call):
            raise ValueError(f"step {self.name!r}: call {self.call!r} is not 'module:function'")
        return self


def _step(value: Any) -> Any:
    # A bare string is a built-in step named after its action.
    return {"name": value, "action": value} if isinstance(value, str) else value


class PlanConfig(Section):
    steps: list[Annotated[StepConfig, BeforeValidator(_step)]] = Field(min_length=1)


DEFAULT_PLANS: dict[str, list[str]] = {
    "failover": [
        "readiness",
        "approval",
        "rpo-gate",
        "fence",
        "wait-replication",
        "activate",
        "reconcile",
    ],
    "failback": [
        "readiness",
        "catch-up",
        "approval",
        "rpo-gate",
        "fence",
        "wait-replication",
        "activate",
        "reconcile",
        "standby-previous",
    ],
}


class PlansConfig(Section):
    """Recovery plans as data: inline here, or in a TOML ``file`` with [failover]/[failback]."""

    file: str | None = None
    failover: PlanConfig = Field(
        default_factory=lambda: PlanConfig.model_validate({"steps": DEFAULT_PLANS["failover"]})
    )
    failback: PlanConfig = Field(
        default_factory=lambda: PlanConfig.model_validate({"steps": DEFAULT_PLANS["failback"]})
    )
