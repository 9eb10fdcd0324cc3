"""``mrbatch restore``: rebuild a region whose data is gone from a backup target, at a time.

1. Refuse a region whose process or replicator is running, or that still holds data (unless
   ``force``: then the backup is *merged* into what it holds, by the merge rule; a restore
   never deletes or downgrades anything). A bucket or table that a service keeps (S3,
   DynamoDB) and that is gone is created again first, empty.
2. Read every backup's change files and keep, for each key, the version the merge rule picks
   (higher epoch, then the later write, then the writer's name) among the versions written at
   or before ``at`` (by the writer's clock: ``modified`` for objects, ``updated`` for records).
   Check that every blob they need is in the target before anything is written.
3. Mark the region's feeds as a new *generation* and raise its *reclaim* flags (see
   :mod:`mrbatch.runtime.replication`); reset the other regions' cursors on its feeds.
4. Apply the objects (deletions as tombstones), then the records, with ``apply_replica``:
   epoch, writer or origin, the writer's clock and version are kept, so the merge rules hold
   when replication resumes and the region catches up with what was written since.
5. Rebuild the control plane from the newest snapshot only if it is not initialized.

The RPO reported is the newest change captured at or before ``at``: anything written after it
into the lost region alone (not yet replicated, not yet backed up) is not in the restore.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import backends
from ..config.workspace import Workspace
from ..errors import UnavailableError, UsageError
from ..ports import ObjectInfo, Record, StateTable
from ..runtime import supervisor
from ..runtime.replication import (
    GENERATION_CURSOR,
    KINDS,
    cursor_name,
    generation_name,
    reclaim_name,
)
from .catalog import (
    BackupEntry,
    catalog,
    iso,
    object_from,
    read_json,
    read_lines,
    record_from,
)
from .controlplane import restore_control
from .target import BackupError, BackupTarget, open_target

__all__ = ["RestoreReport", "restore"]

_COUNT_CAP = 100_000


@dataclass
class RestoreReport:
    region: str
    target: str
    at: float | None  # the restore point asked for (None: the newest)
    backups: int = 0  # backups that contributed a change
    objects: int = 0
    deletions: int = 0
    records: int = 0
    bytes_restored: int = 0  # bytes of the distinct contents written (a blob counts once)
    rpo: float | None = None  # the newest change captured at or before `at`
    rpo_age_seconds: float | None = None  # how much older than `at` (or now) it is
    seconds: float = 0.0
    control_plane: str = ""
    generation: int = 0
    peers_reset: list[str] = field(default_factory=list)
    peers_unreachable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["at_iso"] = iso(self.at) if self.at is not None else None
        data["rpo_iso"] = iso(self.rpo) if self.rpo is not None else None
        return data


# --------------------------------------------------------------------------- refusals
def _refuse_running(ws: Workspace, region: str) -> None:
    for kind in ("region", "replicator"):
        pid = supervisor.pid_of(ws, supervisor.Proc(kind, region))
        if pid is not None:
            raise BackupError(
                f"{region}: its {kind} process is running (pid {pid}); a restore rebuilds a"
                " region whose processes are stopped",
                hint="stop the deployment (`mrbatch down`), restore, then `mrbatch up`",
            )


def _refuse_data(region: str, store: Any, table: StateTable) -> None:
    objects = len(store.changes(0, limit=_COUNT_CAP))
    records = len(table.changes(0, limit=_COUNT_CAP))
    if objects or records:
        capped = " (at least)" if _COUNT_CAP in (objects, records) else ""
        raise BackupError(
            f"{region} still holds data: {_count(objects, 'object')} (versions and deletions)"
            f" and {_count(records, 'state record')}{capped}; a restore refills a region whose"
            " data is gone",
            hint="--force merges the backup into what it holds (newer versions win, nothing"
            " is deleted; use it to finish an interrupted restore). To roll it back, delete"
            " its data first",
        )


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


# --------------------------------------------------------------------------- selection
@dataclass
class _Selection:
    objects: dict[str, ObjectInfo] = field(default_factory=dict)
    records: dict[str, Record] = field(default_factory=dict)
    newest: float | None = None
    backups: int = 0
    snapshot: dict[str, Any] | None = None

    def seen(self, when: float) -> None:
        self.newest = when if self.newest is None else max(self.newest, when)


def _select(target: BackupTarget, entries: list[BackupEntry], at: float | None) -> _Selection:
    """Per key, the version the merge rule picks among those written at or before ``at``."""
    chosen = _Selection()
    for entry in entries:
        used = False
        for line in read_lines(target, entry.records):
            record = record_from(line)
            if at is not None and record.updated > at:
                continue
            used = True
            chosen.seen(record.updated)
            held = chosen.records.get(record.pk)
            if held is None or record.rank > held.rank:
                chosen.records[record.pk] = record
        for line in read_lines(target, entry.objects):
            info = object_from(line)
            if at is not None and info.modified > at:
                continue
            used = True
            chosen.seen(info.modified)
            kept = chosen.objects.get(info.key)
            if kept is None or info.rank > kept.rank:
                chosen.objects[info.key] = info
        chosen.backups += int(used)
    # The newest snapshot whatever `at` is: epochs only grow, and must not go back below any
    # epoch the data carries.
    newest = next((e.control for e in reversed(entries) if e.control is not None), None)
    chosen.snapshot = read_json(target, newest) if newest is not None else None
    return chosen


# --------------------------------------------------------------------------- cursors
def _new_generation(ws: Workspace, region: str, table: StateTable, report: RestoreReport) -> int:
    """Start a new life of ``region``'s feeds: a generation no region has followed yet, its
    cursors on the others at 0 with the reclaim flags up, their cursors on it at 0."""
    peers: dict[str, StateTable] = {}
    seen = [table.get_cursor(GENERATION_CURSOR)]
    for peer in ws.regions:
        if peer == region:
            continue
        for kind in KINDS:
            table.set_cursor(cursor_name(kind, peer), 0)
            table.set_cursor(reclaim_name(kind, peer), 1)
        try:
            peer_table = backends.open_state_table(ws, peer)
            seen.append(peer_table.get_cursor(generation_name(region)))
        except UnavailableError as exc:
            report.peers_unreachable.append(peer)
            report.notes.append(
                f"{peer}: cursors on {region} not reset ({exc}); its"
                " replicator resets them when it sees the new generation"
            )
        else:
            peers[peer] = peer_table
    generation = max(int(time.time() * 1000), max(seen) + 1)
    # The generation first: a replicator of another region that reads this region's feed
    # while it is being refilled starts over from 0 as soon as it sees it.
    table.set_cursor(GENERATION_CURSOR, generation)
    for peer, peer_table in peers.items():
        try:
            for kind in KINDS:
                peer_table.set_cursor(cursor_name(kind, region), 0)
        except UnavailableError as exc:
            report.peers_unreachable.append(peer)
            report.notes.append(
                f"{peer}: cursors on {region} not reset ({exc}); its"
                " replicator resets them when it sees the new generation"
            )
        else:
            report.peers_reset.append(peer)
    return generation


# --------------------------------------------------------------------------- restore
def restore(
    ws: Workspace,
    source: str,
    *,
    region: str,
    at: float | None = None,
    force: bool = False,
    echo: Callable[[str], None] | None = None,
) -> RestoreReport:
    """Rebuild ``region`` from the backups in ``source`` as of ``at`` (default: the newest)."""
    started = time.monotonic()
    say = echo or (lambda _text: None)
    ws.check_region(region)
    target = open_target(source, ws=ws)
    entries = catalog(target)
    if not entries:
        raise UsageError(
            f"backup target {target.location}: no complete backup in it",
            hint="`mrbatch backup --to DEST` makes one",
        )
    if at is not None and at < entries[0].taken_at - 0.001:
        raise UsageError(
            f"--at {iso(at)} is before the first backup in {target.location}"
            f" ({iso(entries[0].taken_at)}); nothing earlier can be restored",
            hint="`mrbatch backups --from DEST` lists the backups and their times",
        )
    _refuse_running(ws, region)
    backends.provision(ws)  # a lost bucket or table (S3, DynamoDB) is made again, empty
    store = backends.open_object_store(ws, region)
    table = backends.open_state_table(ws, region)
    if not force:
        _refuse_data(region, store, table)
    report = RestoreReport(region=region, target=target.location, at=at)
    running = [p.label for p, pid in supervisor.running(ws).items() if pid is not None]
    if running:
        report.notes.append(
            f"running: {', '.join(running)}; a process that opened {region}'s files before"
            " they were deleted may still read the deleted ones (embedded backends): restart"
            " it once the restore is done"
        )
    chosen = _select(target, entries, at)
    missing = [
        i.key for i in chosen.objects.values() if not i.deleted and not target.has_blob(i.sha256)
    ]
    if missing:
        raise BackupError(
            f"backup target {target.location}: the bytes of {len(missing)} object(s) are"
            f" missing, e.g. {missing[0]}; nothing was restored",
            hint="the backup is damaged; restore from another copy of it",
        )
    say(f"restoring {len(chosen.objects)} objects and {len(chosen.records)} records into {region}")
    report.generation = _new_generation(ws, region, table, report)
    # Objects first, then records, each in the order they were written: a record's objects
    # are there before it, for the region's process and for replicators following the feed.
    contents: set[str] = set()
    for info in sorted(chosen.objects.values(), key=lambda i: (i.modified, i.key)):
        if info.deleted:
            store.apply_replica(info, None)
            report.deletions += 1
            continue
        with target.open_blob(info.sha256) as stream:
            store.apply_replica(info, stream)
        report.objects += 1
        if info.sha256 not in contents:
            contents.add(info.sha256)
            report.bytes_restored += info.size
    store.sync()  # on disk before the records that name them, whatever a power loss takes
    for record in sorted(chosen.records.values(), key=lambda r: (r.updated, r.pk)):
        table.apply_replica(record)
        report.records += 1
    table.sync()  # the restore is reported done: what it wrote survives a power loss
    report.backups = chosen.backups
    report.rpo = chosen.newest
    if chosen.newest is not None:
        report.rpo_age_seconds = max(0.0, (at if at is not None else time.time()) - chosen.newest)
    report.control_plane, epoch = restore_control(
        ws, backends.open_control_plane(ws), chosen.snapshot
    )
    written = max(
        [i.epoch for i in chosen.objects.values()] + [r.epoch for r in chosen.records.values()],
        default=0,
    )
    if epoch is not None and epoch < written:
        report.notes.append(
            f"the control plane is at epoch {epoch}, but the restored data was written up to"
            f" epoch {written}: writes at epoch {epoch} would be refused as stale; fail over"
            " (`mrbatch failover --force`) until the epoch is past it"
        )
    report.seconds = time.monotonic() - started
    return report
