"""Retention and garbage collection: what finished runs leave behind is removed, in every
region, with deletions that replicate; what no key needs any more is freed in each bucket.

The active region decides (one decider, its deletions fenced by the control plane like a
publish), in three steps:

1. **Intermediates.** Every run registers, when it is claimed, the prefix of its intermediates
   (``runs/<run-id>/``: chunk outputs, merged files, reference snapshots). They are deleted
   once the run is COMPLETED and its terminal record is in every region's state table (a
   FAILED run keeps them for the retention window, so a redrive can reuse its chunks).
2. **Versions and records.** Past the window (``retention.age``, never shorter than
   ``gateway.max_link_lifetime``), a finished run's own objects (``versions/<run-id>/…``: the
   accepted bytes and its results) and its records (chunks, run, ledger entry) are deleted —
   objects first, so no record ever names bytes that are gone — unless the run is still live:
   its version is the one at ``input/<p>``, or ``output/<p>`` / ``rejected/<p>`` show its
   result, or it is among the newest ``retention.versions`` finished versions of its key.
3. **Purge**, in every reachable region: tombstones older than the window are forgotten (their
   deletion has replicated by then), and the bytes of versions superseded before it are freed.

Nothing that is not terminal is touched: a pending run, an accepted version waiting for its
bytes, a run at risk. ``dry_run`` reports what would go and changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import backends
from ..config.workspace import Workspace
from ..errors import MrbatchError
from ..model.keys import INPUT, OUTPUT, REJECTED, VERSIONS, run_id_for, run_key
from ..model.records import (
    ANSWER,
    CHUNK,
    RUN,
    FileRun,
    RunStatus,
    accepted_pk,
    failure_message_id,
)
from ..ports import ObjectStore, StateTable

__all__ = ["GcReport", "collect_garbage", "purge_region", "retention_window"]

log = logging.getLogger("mrbatch.gc")


@dataclass
class GcReport:
    region: str | None
    epoch: int | None
    dry_run: bool
    window_seconds: float
    intermediates: int = 0  # objects under runs/<id>/
    version_objects: int = 0  # objects under versions/<id>/
    records: int = 0
    runs_collected: list[str] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)  # reason -> runs
    purged: dict[str, dict[str, int]] = field(default_factory=dict)  # region -> counts
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def keep(self, reason: str) -> None:
        self.kept[reason] = self.kept.get(reason, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def retention_window(ws: Workspace) -> float:
    """How long a finished run's objects and records, and any tombstone, are kept."""
    return max(ws.config.retention.age, ws.config.gateway.max_link_lifetime)


def _live_runs(store: ObjectStore) -> set[str]:
    """Runs whose version or result a live key shows: input/<p>, output/<p>, rejected/<p>."""
    live = {run_id_for(info.key, info.sha256) for info in store.list(INPUT)}
    for prefix in (OUTPUT, REJECTED):
        live.update(info.meta.get("run_id", "") for info in store.list(prefix))
    return live


def _everywhere(tables: dict[str, StateTable] | None, run: FileRun) -> bool:
    """Is ``run``'s terminal record in every region's replica?"""
    if tables is None:
        return False
    for table in tables.values():
        record = table.get(f"run/{run.run_id}")
        if record is None or not FileRun.from_record(record).status.terminal:
            return False
    return True


def _newest_per_key(runs: list[FileRun], keep: int) -> set[str]:
    by_key: dict[str, list[FileRun]] = defaultdict(list)
    for run in runs:
        by_key[run.input_key].append(run)
    newest: set[str] = set()
    for versions in by_key.values():
        versions.sort(key=lambda r: r.order, reverse=True)
        newest.update(r.run_id for r in versions[:keep])
    return newest


def _delete_prefix(store: ObjectStore, prefix: str, dry_run: bool) -> int:
    keys = [info.key for info in store.list(prefix)]
    if not dry_run:
        for key in keys:
            store.delete(key)
    return len(keys)


def collect_garbage(
    ws: Workspace, *, dry_run: bool = False, now: float | None = None, purge: bool = True
) -> GcReport:
    """One pass of garbage collection over the deployment (see the module doc)."""
    started = time.monotonic()
    moment = time.time() if now is None else now
    window = retention_window(ws)
    report = GcReport(region=None, epoch=None, dry_run=dry_run, window_seconds=window)
    try:
        control = backends.open_control_plane(ws)
        routing = control.routing()
    except MrbatchError as exc:
        report.notes.append(f"nothing deleted: the control plane cannot be read ({exc})")
    else:
        report.region, report.epoch = routing.active_region, routing.epoch
        if control.confirm(routing.active_region, routing.epoch):
            _collect_runs(ws, report, routing.active_region, routing.epoch, moment, dry_run)
        else:
            report.notes.append(
                f"nothing deleted: {routing.active_region} is not confirmed ACTIVE"
                f" (phase {routing.phase})"
            )
    if purge:
        for region in ws.regions:
            try:
                report.purged[region] = purge_region(ws, region, moment - window, dry_run)
            except MrbatchError as exc:
                report.notes.append(f"{region} not purged: {exc}")
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _collect_runs(
    ws: Workspace, report: GcReport, region: str, epoch: int, moment: float, dry_run: bool
) -> None:
    store = backends.open_object_store(ws, region)
    table = backends.open_state_table(ws, region)
    notifier = backends.open_notifier(ws)
    tables: dict[str, StateTable] | None = {}
    for name in ws.regions:
        try:
            opened = backends.open_state_table(ws, name)
            opened.last_seq()  # reachable?
            tables[name] = opened  # type: ignore[index]
        except MrbatchError:
            tables = None  # one region unreadable: nothing counts as replicated everywhere
            report.notes.append(f"{name} cannot be read: intermediates kept")
            break
    finished = [
        run for run in (FileRun.from_record(r) for r in table.scan(RUN)) if run.status.terminal
    ]
    live = _live_runs(store)
    newest = _newest_per_key(finished, ws.config.retention.versions)
    window = report.window_seconds
    for run in finished:
        everywhere = _everywhere(tables, run)
        aged = moment - run.updated_at > window
        if (run.status is RunStatus.COMPLETED and everywhere) or aged:
            for prefix in run.cleanup or [run_key(run.run_id, "")]:
                report.intermediates += _delete_prefix(store, prefix, dry_run)
        if not aged:
            report.keep("within the retention window")
            continue
        if run.run_id in live:
            report.keep("live: input/, output/ or rejected/ shows it")
            continue
        if run.run_id in newest:
            report.keep("among the newest versions of its key")
            continue
        if not everywhere:
            report.keep("not replicated everywhere yet")
            continue
        # Objects first: a record never names bytes that are gone.
        report.version_objects += _delete_prefix(store, f"{VERSIONS}{run.run_id}/", dry_run)
        pks = [r.pk for r in table.scan(CHUNK, prefix=f"chunk/{run.run_id}/")]
        pks += [r.pk for r in table.scan(ANSWER, prefix=f"answer/{run.run_id}/")]
        pks += [f"run/{run.run_id}", accepted_pk(run.run_id)]
        if not dry_run:
            for pk in pks:
                table.delete(pk, epoch=epoch)
            notifier.forget(f"<{run.run_id}@mrbatch>")  # the outbox's copy of its mail
            for round_ in range(run.redriven + 1):  # and of the mails of its failures
                notifier.forget(failure_message_id(run.run_id, round_))
        report.records += len(pks)
        report.runs_collected.append(run.run_id)
    if report.runs_collected:
        log.info("gc: %d finished run(s) collected in %s", len(report.runs_collected), region)


def purge_region(ws: Workspace, region: str, older_than: float, dry_run: bool) -> dict[str, int]:
    """Forget tombstones and free superseded bytes older than ``older_than`` in one region."""
    if dry_run:
        return {}
    store = backends.open_object_store(ws, region)
    table = backends.open_state_table(ws, region)
    purged = store.purge(older_than)
    records = table.purge(older_than)
    return {
        "object_tombstones": purged.tombstones,
        "versions_freed": purged.versions,
        "bytes_freed": purged.bytes,
        "record_tombstones": records,
    }
