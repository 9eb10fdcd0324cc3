"""``mrbatch backup``: an incremental, consistent copy of one region's replica.

By replication one region's replica holds every region's data, so a backup reads one region
(the active one unless told otherwise) through its ports, never its files:

1. the state records: the record feed from the previous backup's position to its end;
2. then the objects: the object feed likewise, copying the bytes of every version it names
   into the target's content-addressed blobs (a blob the target holds is not copied again).
   An object a record refers to is written before the record (immutable version keys first,
   the ledger entry or run step after), so every object a record read in step 1 refers to
   is in the object read of step 2, which starts later;
3. a snapshot of the control plane (routing, epoch log, plan log);
4. the index entry, last: the commit point. An interrupted backup leaves change files and
   blobs no entry names (the next backup reuses the blobs).

The feeds give the newest version of each key changed since a position, so a backup holds
each changed key as it was when read; versions overwritten between two backups are not kept.
Positions mean something only within one life of a feed: after a restore rebuilt the region's
feeds (its feed generation changed), or when a feed is shorter than the last backup's position,
the next backup is a full one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import backends
from ..config.workspace import Workspace
from ..errors import MrbatchError, NotFoundError
from ..ports import ObjectStore, StateTable
from ..runtime.replication import GENERATION_CURSOR
from .catalog import (
    BackupEntry,
    ChangeFile,
    backup_id,
    catalog,
    encode_lines,
    index_name,
    iso,
    object_line,
    record_line,
)
from .target import BackupError, BackupTarget, open_target

__all__ = ["BackupReport", "take_backup"]

PAGE = 1000


@dataclass
class BackupReport:
    id: str
    region: str
    target: str
    full: bool
    base: str | None
    taken_at: float
    records: int = 0
    objects: int = 0
    deletions: int = 0
    blobs_copied: int = 0
    blobs_reused: int = 0
    bytes_copied: int = 0
    change_bytes: int = 0
    newest_change: float | None = None
    control: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["taken_at_iso"] = iso(self.taken_at)
        data["newest_change_iso"] = iso(self.newest_change) if self.newest_change else None
        return data


def _base(
    entries: list[BackupEntry], region: str, generation: int, store: ObjectStore, table: StateTable
) -> BackupEntry | None:
    """The backup this one continues: the newest of ``region`` from the same feed life."""
    mine = [e for e in entries if e.region == region]
    if not mine:
        return None
    last = mine[-1]
    if last.generation != generation:
        return None  # the feeds were rebuilt since: old positions mean nothing
    if last.positions["records"]["upto"] > table.last_seq():
        return None
    if last.positions["objects"]["upto"] > store.last_seq():
        return None
    return last


class _Reader:
    """Reads one region's feeds to their end, copying object bytes as it goes."""

    def __init__(self, target: BackupTarget, report: BackupReport) -> None:
        self.target = target
        self.report = report
        self.upto: dict[str, int] = {}

    def _newest(self, when: float) -> None:
        newest = self.report.newest_change
        self.report.newest_change = when if newest is None else max(newest, when)

    def records(self, table: StateTable, after: int) -> Iterator[dict[str, Any]]:
        position = after
        while True:
            page = table.changes(position, limit=PAGE)
            for record in page:
                self._newest(record.updated)
                self.report.records += 1
                yield record_line(record)
            if page:
                position = page[-1].seq
            if len(page) < PAGE:
                break
        self.upto["records"] = position

    def objects(self, store: ObjectStore, after: int) -> Iterator[dict[str, Any]]:
        position = after
        while True:
            page = store.changes(position, limit=PAGE)
            for info in page:
                if not info.deleted and not self._copy(store, info.key, info.version, info.sha256):
                    continue  # superseded while we read: its newer version comes later
                self._newest(info.modified)
                self.report.objects += 1
                self.report.deletions += int(info.deleted)
                yield object_line(info)
            if page:
                position = page[-1].seq
            if len(page) < PAGE:
                break
        self.upto["objects"] = position

    def _copy(self, store: ObjectStore, key: str, version: str, sha256: str) -> bool:
        if self.target.has_blob(sha256):
            self.report.blobs_reused += 1
            return True
        try:
            with store.open(key, version=version) as stream:
                self.report.bytes_copied += self.target.put_blob(sha256, stream)
        except NotFoundError:
            current = store.head(key)
            if current is None or current.version != version:
                return False  # the key moved on (and its old bytes were collected)
            raise BackupError(
                f"{store.region}: the bytes of {key} (version {version[:12]}) are missing",
                hint="the bucket is damaged; back up another region (--region)",
            ) from None
        self.report.blobs_copied += 1
        return True


def _control_snapshot(ws: Workspace, report: BackupReport) -> dict[str, Any] | None:
    try:
        control = backends.open_control_plane(ws)
        routing = control.routing()
        documents = control.documents("")
    except MrbatchError as exc:
        report.notes.append(f"control plane not captured: {exc}")
        return None
    return {"routing": asdict(routing), "documents": documents, "taken_at": time.time()}


def _region(ws: Workspace, region: str | None) -> str:
    if region is not None:
        return ws.check_region(region)
    try:
        return backends.open_control_plane(ws).routing().active_region
    except MrbatchError as exc:
        raise BackupError(
            f"cannot tell the active region: {exc}",
            hint="name the region to back up with --region",
        ) from exc


def take_backup(
    ws: Workspace, dest: str, *, region: str | None = None, full: bool = False
) -> BackupReport:
    """Back up ``region``'s replica (default: the active region) into ``dest``."""
    started = time.monotonic()
    target = open_target(dest, create=True, ws=ws)
    name = _region(ws, region)
    store = backends.open_object_store(ws, name)
    table = backends.open_state_table(ws, name)
    generation = table.get_cursor(GENERATION_CURSOR)
    base = None if full else _base(catalog(target), name, generation, store, table)
    taken_at = time.time()
    report = BackupReport(
        id=backup_id(taken_at, name),
        region=name,
        target=target.location,
        full=base is None,
        base=base.id if base else None,
        taken_at=taken_at,
    )
    after = {k: base.positions[k]["upto"] if base else 0 for k in ("records", "objects")}
    reader = _Reader(target, report)
    files: dict[str, ChangeFile] = {}
    # Records first, then objects: what a record refers to was written before it.
    for kind, lines in (
        ("records", reader.records(table, after["records"])),
        ("objects", reader.objects(store, after["objects"])),
    ):
        file_name = f"changes/{report.id}/{kind}.jsonl.gz"
        sink: dict[str, Any] = {}
        size = target.write(file_name, encode_lines(lines, sink))
        files[kind] = ChangeFile(file_name, sink["sha256"], sink["count"], size)
        report.change_bytes += size
    control = None
    snapshot = _control_snapshot(ws, report)
    if snapshot is not None:
        payload = json.dumps(snapshot, sort_keys=True).encode()
        file_name = f"changes/{report.id}/control.json"
        size = target.write(file_name, [payload])
        control = ChangeFile(file_name, hashlib.sha256(payload).hexdigest(), 1, size)
        report.change_bytes += size
        report.control = True
    entry = BackupEntry(
        id=report.id,
        region=name,
        taken_at=taken_at,
        finished_at=time.time(),
        generation=generation,
        base=report.base,
        positions={k: {"after": after[k], "upto": reader.upto[k]} for k in after},
        newest_change=report.newest_change,
        records=files["records"],
        objects=files["objects"],
        control=control,
        blobs={
            "copied": report.blobs_copied,
            "reused": report.blobs_reused,
            "bytes_copied": report.bytes_copied,
        },
    )
    target.write(index_name(report.id), [json.dumps(entry.to_json(), indent=1).encode()])
    report.seconds = time.monotonic() - started
    return report
