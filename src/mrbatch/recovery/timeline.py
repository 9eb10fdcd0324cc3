"""The facts a recovery report's timeline is made of, read from what the deployment recorded:
when the failure was detected (by a watcher's log, else by the source's silent heartbeat),
which runs were in flight at the fence and when each became terminal, and when the new region
made its first claim (or takeover) in the new epoch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from .. import backends
from ..config.workspace import Workspace
from ..errors import MrbatchError
from ..model.records import RUN, FileRun, newest_runs
from ..observe import views
from ..ports import Record, Routing

__all__ = ["detection", "first_claim", "in_flight", "settle"]

_WATCH_TAIL = 256 * 1024  # the end of watch.jsonl is enough to find the latest streak


def _watch_streak(ws: Workspace, active: str, now: float) -> float | None:
    """When the watcher's latest unbroken streak of unhealthy checks of ``active`` began, if
    that streak is still going (its last check is recent)."""
    path = ws.log_dir / "watch.jsonl"
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - _WATCH_TAIL))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    decisions = []
    for line in lines:
        try:
            decisions.append(json.loads(line))
        except ValueError:
            continue
    start = None
    for decision in reversed(decisions):
        if decision.get("active_region") != active or decision.get("healthy"):
            break
        start = decision.get("at")
    if start is None or not decisions:
        return None
    latest = decisions[-1].get("at") or 0.0
    fresh = now - latest <= 3 * ws.config.watch.interval + ws.config.watch.heartbeat_timeout
    return float(start) if fresh else None


def detection(ws: Workspace, routing: Routing, now: float) -> tuple[float | None, str | None]:
    """When the failure of the active region was detected, and by what: the watcher's first
    unhealthy check of the streak that is going on, else the moment its heartbeat went stale
    (last beat + watch.heartbeat_timeout) when it is stale now; (None, None) when nothing
    failed (a planned switch: counted from the command)."""
    streak = _watch_streak(ws, routing.active_region, now)
    if streak is not None:
        return streak, "watch"
    try:
        beat = backends.open_control_plane(ws).heartbeats().get(routing.active_region)
    except MrbatchError:
        return None, None
    timeout = ws.config.watch.heartbeat_timeout
    if beat is not None and now - beat.at > timeout:
        return beat.at + timeout, "heartbeat"
    return None, None


def in_flight(ws: Workspace, regions: list[str]) -> list[dict[str, Any]]:
    """The unfinished runs that the readable ones of ``regions`` hold now (the best record of
    each, as replication will converge to it)."""
    records: list[Record] = []
    for region in regions:
        try:
            records += list(backends.open_state_table(ws, region).scan(RUN))
        except MrbatchError:
            continue
    return [
        {
            "run_id": run.run_id,
            "key": run.input_key,
            "status_at_fence": str(run.status),
            "region_at_fence": run.region,
            "epoch_at_fence": run.epoch,
        }
        for run in sorted(newest_runs(records).values(), key=lambda r: r.claimed_at)
        if not run.status.terminal
    ]


def _terminal_at(run: FileRun) -> float | None:
    if not run.status.terminal:
        return None
    at = [h["at"] for h in run.history if h.get("status") == str(run.status)]
    return max(at) if at else run.updated_at


def settle(
    ws: Workspace,
    items: list[dict[str, Any]],
    *,
    bound: float,
    skip: frozenset[str] = frozenset(),
    echo: Callable[[str], None] | None = None,
) -> float | None:
    """Follow the runs of ``items`` (from :func:`in_flight`) until each is terminal or
    ``bound`` passes — not waiting for those in ``skip`` (run ids whose input has not arrived:
    they cannot finish now); fill in each one's ``status``, ``terminal_at`` and ``region``.
    Returns when the last became terminal, or None when some are not yet."""
    deadline = time.monotonic() + bound
    told = False
    while True:
        try:
            runs = {run.run_id: run for run in views.all_runs(ws)}
        except MrbatchError:
            runs = {}
        for item in items:
            run = runs.get(item["run_id"])
            if run is not None:
                item.update(status=str(run.status), region=run.region, epoch=run.epoch)
                item["terminal_at"] = _terminal_at(run)
        unfinished = [i for i in items if not i.get("terminal_at")]
        if not unfinished:
            return max((i["terminal_at"] for i in items), default=None)
        if time.monotonic() >= deadline or all(i["run_id"] in skip for i in unfinished):
            return None
        if echo is not None and not told:
            told = True
            echo(
                f"  waiting up to {bound:.0f}s for {len(unfinished)} run(s) in flight at the fence"
            )
        time.sleep(0.2)


def first_claim(ws: Workspace, region: str, epoch: int, since: float) -> dict[str, Any] | None:
    """The first run ``region`` claimed or took over in ``epoch`` at or after ``since``."""
    try:
        records = list(backends.open_state_table(ws, region).scan(RUN))
    except MrbatchError:
        return None
    first: dict[str, Any] | None = None
    for record in records:
        run = FileRun.from_record(record)
        for entry in run.history:
            if entry.get("region") != region or entry.get("epoch") != epoch:
                continue
            if entry.get("at", 0) < since:
                continue
            note = str(entry.get("note", ""))
            claimed = entry.get("status") == "CLAIMED" or note.startswith("taken over")
            if claimed and (first is None or entry["at"] < first["at"]):
                first = {
                    "at": entry["at"],
                    "run_id": run.run_id,
                    "key": run.input_key,
                    "how": "taken over" if note.startswith("taken over") else "claimed",
                }
            break  # the run's first entry in this epoch and region is the one that counts
    return first
