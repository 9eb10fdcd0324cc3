"""The RPO gate: exactly which accepted inputs the target region lacks, from the ledger of
accepted uploads — the target's own replica of it and, where it can be read, the source's — and
the target's bucket; a switch that would leave more than the loss budget behind
(``[rpo] max_files`` / ``max_bytes``) without a per-key approval is refused before the fence.

An input is at risk when an accepted version has no COMPLETED run in the target's replica and
its bytes (``versions/<run-id>/input/<p>``) are not in the target's bucket (a FAILED run
counts: a redrive needs the bytes). The list does not
need the source: when the source cannot be read it holds what the target knows it lacks (its
ledger names versions whose bytes have not arrived) and says that the source could not be read,
so versions whose ledger entry has not replicated either are unknown.

The runbook takes the list again right after the fence (the definitive list: nothing new is
accepted by the fenced region), keeps it with the execution, and closes each item when its file
arrives in the active region (with the time its run was claimed or taken over there).
"""

from __future__ import annotations

import time
from typing import Any

from .. import backends
from ..access.ledger import accepted_in
from ..config.workspace import Workspace
from ..engine.takeover import present
from ..errors import MrbatchError, UnavailableError
from ..model.records import RUN, FileRun, RunStatus
from ..runtime.replication import backlog
from .answers import approved_keys
from .plan import PlanContext, Result, StepFailed

__all__ = ["budget_problem", "close_arrived", "rpo_gate", "snapshot"]


def snapshot(ws: Workspace, source: str | None, target: str) -> dict[str, Any]:
    """The inputs ``target`` lacks now (see the module doc). Raises UnavailableError when the
    target's own bucket or state cannot be read."""
    store = backends.open_object_store(ws, target)
    table = backends.open_state_table(ws, target)
    runs = {FileRun.from_record(r).run_id: FileRun.from_record(r) for r in table.scan(RUN)}
    entries = {entry.run_id: (entry, True) for entry in accepted_in(table)}
    result: dict[str, Any] = {"at": time.time(), "source": source, "target": target}
    if source and source != target:
        try:
            source_table = backends.open_state_table(ws, source)
            for entry in accepted_in(source_table):
                entries.setdefault(entry.run_id, (entry, False))
            pending = backlog(ws, source, target)
            result["source_readable"] = True
            result["backlog"] = {"objects": pending.objects, "records": pending.records}
        except MrbatchError as exc:
            result["source_readable"] = False
            result["source_error"] = (
                f"{source} could not be read ({exc}): versions it accepted whose ledger entry"
                f" has not reached {target} either are not listed"
            )
    items: list[dict[str, Any]] = []
    for run_id, (entry, known) in sorted(entries.items(), key=lambda kv: kv[1][0].order):
        run = runs.get(run_id)
        if run is not None and run.status is RunStatus.COMPLETED:
            continue  # its result is recorded: the input is no longer needed
        if present(store, entry.object_key):
            continue
        items.append(
            {
                "run_id": run_id,
                "key": entry.key,
                "sha256": entry.sha256,
                "size": entry.size,
                "accepted_at": entry.at,
                "accepted_region": entry.region,
                "object_key": entry.object_key,
                "known_to_target": known,
                "run_status": None if run is None else str(run.status),
                "state": "open",
            }
        )
    result["items"] = items
    result["files"] = len(items)
    result["bytes"] = sum(int(i["size"]) for i in items)
    return result


def _approval_for(item: dict[str, Any], approved: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return approved.get(item["key"]) or approved.get(item["run_id"]) or {}


def budget_problem(ws: Workspace, items: list[dict[str, Any]]) -> str | None:
    """Why ``items`` (those not approved) exceed the loss budget, or None."""
    budget = ws.config.rpo
    files = len(items)
    size = sum(int(i["size"]) for i in items)
    if budget.max_files is not None and files > budget.max_files:
        return f"{files} input(s) would be left behind (budget {budget.max_files})"
    if budget.max_bytes is not None and size > budget.max_bytes:
        return f"{size} bytes would be left behind (budget {budget.max_bytes})"
    return None


def _mark(items: list[dict[str, Any]], approved: dict[str, dict[str, Any]]) -> None:
    for item in items:
        granted = _approval_for(item, approved)
        if granted and item["state"] == "open":
            item["state"], item["approved"] = "approved", granted


def rpo_gate(ctx: PlanContext) -> Result:
    """List what the target lacks; refuse (before the fence) above the loss budget unless the
    loss of each item over it is approved — waiting up to ``approval.timeout`` for the files to
    arrive or for per-key approvals."""
    settings = ctx.ws.config.approval
    deadline = time.monotonic() + settings.timeout
    waiting = False
    try:
        while True:
            try:
                found = snapshot(ctx.ws, ctx.source, ctx.target)
            except UnavailableError as exc:
                raise StepFailed(f"cannot list what {ctx.target} lacks: {exc}") from exc
            _mark(found["items"], approved_keys(ctx))
            unapproved = [i for i in found["items"] if i["state"] == "open"]
            problem = None if ctx.mode() == "graceful" else budget_problem(ctx.ws, unapproved)
            if problem is None or time.monotonic() >= deadline:
                break
            if not waiting:
                waiting = True
                keys = [i["key"] for i in unapproved]
                ctx.echo(
                    f"  {problem}: waiting up to {settings.timeout:.0f}s for them to arrive or"
                    f" for `mrbatch plan approve {ctx.execution.id} --key KEY` ({', '.join(keys)})"
                )
                ctx.wait_for({"step": "rpo-gate", "since": time.time(), "keys": keys})
            time.sleep(settings.poll)
    finally:
        if waiting:
            ctx.wait_for(None)
    evidence = dict(found)
    if problem is not None:
        named = ", ".join(i["key"] for i in unapproved)
        raise StepFailed(
            f"{problem}: {named}; nothing was changed (approve the loss key by key with"
            f" `mrbatch plan approve ID --key KEY` while the gate waits, or `--accept-loss KEY`;"
            f" or fail over with --mode graceful)"
        )
    note = "" if found.get("source_readable", True) else f"; {found['source_error']}"
    if not found["items"]:
        return "ok", f"{ctx.target} lacks no accepted input{note}", evidence
    if ctx.execution.mode == "graceful":
        message = f"{found['files']} input(s) not in {ctx.target} yet: graceful waits for them"
    else:
        approved = len(found["items"]) - len(unapproved)
        message = (
            f"{found['files']} input(s) ({found['bytes']} bytes) not in {ctx.target} yet,"
            f" within the budget" + (f"; {approved} approved to be left behind" if approved else "")
        )
    return "warning", message + note, evidence


def close_arrived(ws: Workspace, execution: Any) -> list[dict[str, Any]]:
    """Close every open or approved item of ``execution.rpo`` whose file is now in the active
    region's bucket, with the time its run was claimed or taken over there (else now). Returns
    the items closed by this call; the caller stores the execution."""
    items = (execution.rpo or {}).get("items") or []
    if not any(i.get("state") in ("open", "approved") for i in items):
        return []
    try:
        control = backends.open_control_plane(ws)
        region = control.routing().active_region
        store = backends.open_object_store(ws, region)
        table = backends.open_state_table(ws, region)
    except MrbatchError:
        return []
    epoch = execution.rpo.get("epoch") or execution.epoch_after or 0
    closed = []
    for item in items:
        if item.get("state") not in ("open", "approved"):
            continue
        try:
            if not present(store, item["object_key"]):
                continue
            record = table.get(f"run/{item['run_id']}")
        except MrbatchError:
            continue
        arrived = time.time()
        if record is not None:
            run = FileRun.from_record(record)
            mine = [h["at"] for h in run.history if (h.get("epoch") or 0) >= epoch]
            arrived = min(mine, default=arrived)
            item["run_status"] = str(run.status)
        item["previous_state"] = item["state"]
        item["state"], item["closed_at"], item["closed_in"] = "closed", arrived, region
        closed.append(item)
    return closed
