"""What a plan execution keeps for its recovery report, and the writing of the report: the
snapshot taken right after the fence (what the target lacks, the runs in flight), the settling
afterwards (the runs in flight followed until terminal, the items at risk closed as their files
arrive), then the report itself — built by :mod:`.report`, chained by :mod:`.chain`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..config.workspace import Workspace
from ..errors import MrbatchError
from .answers import approved_keys
from .chain import append_report
from .parity import parity
from .plan import Execution, PlanContext
from .report import drill_report, plan_report, render_markdown
from .rpo import close_arrived, snapshot
from .timeline import first_claim, in_flight, settle

__all__ = ["fence_snapshot", "quick_verify", "write_drill_report", "write_plan_report"]

log = logging.getLogger("mrbatch.report")


def fence_snapshot(ctx: PlanContext) -> None:
    """Right after the fence: the definitive list of inputs the target lacks (the fenced region
    accepts nothing more) and the runs in flight."""
    execution = ctx.execution
    regions = [ctx.target] + ([ctx.source] if ctx.source and ctx.source != ctx.target else [])
    execution.in_flight = in_flight(ctx.ws, regions)
    try:
        found = snapshot(ctx.ws, ctx.source, ctx.target)
    except MrbatchError as exc:
        execution.rpo = {"error": f"cannot list what {ctx.target} lacks: {exc}"}
        return
    approved = approved_keys(ctx)
    for item in found["items"]:
        granted = approved.get(item["key"]) or approved.get(item["run_id"])
        if granted:
            item["state"], item["approved"] = "approved", granted
    found["epoch"] = ctx.epoch
    found["taken"] = "at the fence"
    execution.rpo = found


def quick_verify(ws: Workspace, wait: float) -> dict[str, Any] | None:
    """``verify`` without recounting (what a report carries), once nothing is pending and the
    regions converged or ``wait`` passed."""
    # Imported here: verify's recount imports polars, which the plan's own steps (and the time
    # to the first claim in the new region) do without.
    from ..proof.verify import verify

    try:
        result = verify(ws, deep=False, wait=wait, poll=0.2).to_dict()
    except MrbatchError as exc:
        return {"ok": False, "error": str(exc)}
    return {
        "ok": result["ok"],
        "counts": result["counts"],
        "violations": result["violations"][:50],
        "notes": result.get("notes", []),
    }


def write_plan_report(
    ws: Workspace,
    execution: Execution,
    *,
    settle_for: float,
    echo: Callable[[str], None],
) -> dict[str, Any] | None:
    """Follow the runs in flight at the fence (bounded), close the items that arrived, and
    write the execution's report into the chain. Returns the stored report."""
    finished = None
    if execution.fenced_at is not None:
        close_arrived(ws, execution)
        missing = {
            i["run_id"]
            for i in (execution.rpo or {}).get("items", [])
            if i.get("state") in ("open", "approved")
        } | {i.get("run_id", "") for i in execution.at_risk}
        finished = settle(
            ws, execution.in_flight, bound=settle_for, skip=frozenset(missing), echo=echo
        )
        close_arrived(ws, execution)
    claim = None
    if execution.activated_at is not None and execution.epoch_after is not None:
        claim = first_claim(ws, execution.target, execution.epoch_after, execution.fenced_at or 0)
    body = plan_report(
        execution,
        first_claim=claim,
        in_flight_terminal=finished if execution.in_flight else execution.activated_at,
        # a short wait for the regions to converge (under a steady load they never quite do)
        verify=quick_verify(ws, min(settle_for, 3.0) if execution.fenced_at else 0.0),
        parity=parity(ws),
    )
    try:
        stored = append_report(ws, body, render_markdown)
    except OSError as exc:
        log.warning("could not write the recovery report: %s", exc)
        return None
    execution.report = {
        "seq": stored["seq"],
        "hash": stored["hash"],
        "files": stored["files"],
    }
    echo(f"  recovery report {stored['seq']}: {stored['files']['markdown']}")
    return stored


def write_drill_report(ws: Workspace, drill: dict[str, Any]) -> dict[str, Any]:
    return append_report(ws, drill_report(drill), render_markdown)
