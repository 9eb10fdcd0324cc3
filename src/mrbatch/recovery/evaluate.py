"""``mrbatch plan evaluate``: checks now that every step of every plan could run — regions
reachable, processes alive, commands found, callables importable, the anti-flap rule — as ARC's
continuous plan evaluation does, so a broken plan is found before it is needed."""

from __future__ import annotations

import shlex
import shutil
import time
from typing import Any

from .. import backends
from ..config.plans import StepConfig
from ..config.workspace import Workspace
from ..errors import MrbatchError
from .operations import failback_target, failover_target
from .plan import StepFailed
from .steps import resolve_callable

__all__ = ["evaluate_plans"]


def _walk(steps: list[StepConfig]) -> list[StepConfig]:
    flat: list[StepConfig] = []
    for step in steps:
        flat.append(step)
        if step.parallel:
            flat.extend(_walk(step.parallel))
    return flat


def evaluate_plans(ws: Workspace) -> list[dict[str, Any]]:
    """Check now that every step of every plan could run (ARC's continuous plan evaluation)."""
    checks: list[dict[str, Any]] = []

    def check(plan: str, what: str, ok: bool | None, detail: str) -> None:
        status = "ok" if ok else ("warning" if ok is None else "failed")
        checks.append({"plan": plan, "check": what, "status": status, "detail": detail})

    check("*", "configuration", True, f"{ws.config_path} is valid")
    try:
        control = backends.open_control_plane(ws)
        routing = control.routing()
        beats = control.heartbeats()
        check(
            "*",
            "control plane",
            True,
            f"active {routing.active_region}, epoch {routing.epoch}, phase {routing.phase}",
        )
    except MrbatchError as exc:
        check("*", "control plane", False, str(exc))
        return checks
    timeout = ws.config.watch.heartbeat_timeout
    for region in ws.regions:
        for what, probe in (
            ("bucket", lambda r=region: backends.open_object_store(ws, r).last_seq()),
            ("state", lambda r=region: backends.open_state_table(ws, r).get_cursor("trigger")),
        ):
            try:
                probe()
                check("*", f"{region} {what}", True, "reachable")
            except MrbatchError as exc:
                check("*", f"{region} {what}", False, str(exc))
        for what, name in (("process", region), ("replicator", f"replicator:{region}")):
            beat = beats.get(name)
            age = None if beat is None else time.time() - beat.at
            alive = age is not None and age <= timeout
            check(
                "*",
                f"{region} {what}",
                True if alive else None,
                f"heartbeat {age:.1f}s ago" if age is not None else "no heartbeat (not up?)",
            )
    since = time.time() - routing.switched_at
    rule = ws.config.failover.min_switch_interval
    check(
        "*",
        "min-switch-interval",
        since >= rule or None,
        f"last switch {since:.0f}s ago, rule {rule:.0f}s"
        + ("" if since >= rule else f": a switch now needs --force ({rule - since:.0f}s left)"),
    )
    for plan in ("failover", "failback"):
        steps = _walk(list(getattr(ws.config.plans, plan).steps))
        for step in steps:
            if step.run is not None:
                try:
                    program = shlex.split(step.run)[0]
                except (ValueError, IndexError):
                    check(plan, f"step {step.name}", False, f"cannot parse `{step.run}`")
                    continue
                found = shutil.which(program)
                check(
                    plan,
                    f"step {step.name}",
                    bool(found),
                    f"`{program}` found at {found}" if found else f"`{program}` not found",
                )
            elif step.call is not None:
                try:
                    resolve_callable(step.call)
                    check(plan, f"step {step.name}", True, f"{step.call} importable")
                except StepFailed as exc:
                    check(plan, f"step {step.name}", False, exc.message)
            elif step.action is not None:
                check(plan, f"step {step.name}", True, f"built-in {step.action}")
        target = failover_target(ws, None) if plan == "failover" else failback_target(ws, None)
        check(plan, "target", True, f"would activate {target}")
    return checks
