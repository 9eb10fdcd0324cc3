"""The history ``mrbatch verify`` checks, gathered from everything the system left behind:
a snapshot of every region (live objects and state records, the ledger of accepted uploads
among them), the epoch log of the control plane and the outbox's message ids. Read-only."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from typing import Any

from .. import backends
from ..config.workspace import Workspace
from ..errors import MrbatchError
from ..model.keys import INPUT, OUTPUT, REJECTED, VERSIONS, run_id_for
from ..model.records import ACCEPTED, CHUNK, RUN, Accepted, FileRun, newest_runs
from ..ports import ObjectInfo, ObjectStore, Record

__all__ = [
    "RegionSnapshot",
    "accepted_versions",
    "epoch_owners",
    "mail_problem",
    "merged_runs",
    "object_state",
    "outbox_message_ids",
    "published_kind",
    "read_region",
    "record_state",
]


@dataclass
class RegionSnapshot:
    name: str
    store: ObjectStore | None = None
    objects: dict[str, ObjectInfo] = field(default_factory=dict)
    records: dict[str, Record] = field(default_factory=dict)
    error: str | None = None


def read_region(ws: Workspace, name: str) -> RegionSnapshot:
    """Every live object and every accepted/run/chunk record of one region, or why it cannot
    be read."""
    region = RegionSnapshot(name)
    try:
        store = backends.open_object_store(ws, name)
        table = backends.open_state_table(ws, name)
        region.objects = {info.key: info for info in store.list("")}
        region.records = {r.pk: r for kind in (ACCEPTED, RUN, CHUNK) for r in table.scan(kind)}
        region.store = store
    except MrbatchError as exc:
        region.error = str(exc)
    return region


def epoch_owners(ws: Workspace) -> tuple[dict[int, str], list[str]]:
    """Which region was ACTIVE in each epoch: the control plane's epoch log, completed from
    the recovery-plan history for control planes written before the log existed."""
    from ..recovery.plan import history

    notes: list[str] = []
    owners: dict[int, str] = {}
    try:
        control = backends.open_control_plane(ws)
        for doc in control.documents("epoch/").values():
            owners[int(doc["epoch"])] = str(doc["region"])
        routing = control.routing()
        owners.setdefault(routing.epoch, routing.active_region)
        for execution in history(ws):
            before, after = execution.epoch_before, execution.epoch_after
            if before is not None and after is not None and after > before:
                owners.setdefault(after, execution.target)
                if execution.source:
                    owners.setdefault(before, execution.source)
    except MrbatchError as exc:
        notes.append(f"fencing not checked: the control plane cannot be read ({exc})")
    return owners, notes


def outbox_message_ids(ws: Workspace) -> tuple[Counter[str], str | None]:
    """Message ids of the outbox's messages (count per id); None when mail is not checkable."""
    if ws.config.backends.notifier != "outbox":
        return Counter(), f"mails not checked: notifier is {ws.config.backends.notifier!r}"
    ids: Counter[str] = Counter()
    parser = BytesHeaderParser()
    if ws.outbox_dir.exists():
        for path in sorted(ws.outbox_dir.glob("*.eml")):
            with open(path, "rb") as handle:
                ids[str(parser.parse(handle).get("Message-ID", "")).strip()] += 1
    return ids, None


# The Message-ID of a FAILED run's mail: <run-id.failed.N@mrbatch>, N the run's round.
_FAILURE_MAIL = re.compile(r"^<([0-9a-f]+)\.failed\.(\d+)@mrbatch>$")


def mail_problem(message_id: str, count: int, runs: dict[str, FileRun]) -> str | None:
    """What is wrong with the outbox's ``count`` mail(s) of ``message_id``, if anything: a mail
    for a run no region knows. A FAILED run's mail (one per failure) is not a completion mail
    and never a duplicate of one; the completion mails are counted per run elsewhere."""
    failed = _FAILURE_MAIL.match(message_id)
    if failed is None:
        if message_id.removeprefix("<").removesuffix("@mrbatch>") in runs:
            return None
        return "a mail for a run no region knows"
    run = runs.get(failed.group(1))
    if run is None or int(failed.group(2)) > run.redriven:
        return "a failure mail for a run (or a round of it) no region knows"
    return f"{count} mails for one failure" if count > 1 else None


def merged_runs(regions: list[RegionSnapshot]) -> dict[str, FileRun]:
    """The run records as replication will converge them: higher epoch, then later write."""
    return newest_runs(
        record for region in regions for record in region.records.values() if record.kind == RUN
    )


def accepted_versions(
    regions: list[RegionSnapshot], runs: dict[str, FileRun]
) -> dict[str, tuple[str, str]]:
    """run id -> (key, sha256) of every input version anyone accepted: the ledger of
    acknowledged uploads in every region, every input object and every kept version a
    region holds, every input a run names."""
    versions: dict[str, tuple[str, str]] = {}
    for region in regions:
        for record in region.records.values():
            if record.kind == ACCEPTED:
                entry = Accepted.from_record(record)
                versions[entry.run_id] = (entry.key, entry.sha256)
        for info in region.objects.values():
            if info.key.startswith(INPUT):
                versions[run_id_for(info.key, info.sha256)] = (info.key, info.sha256)
            elif info.key.startswith(VERSIONS) and f"/{INPUT}" in info.key:
                # versions/<run-id>/input/<path>: the bytes of one accepted version
                run_id, rest = info.key[len(VERSIONS) :].split("/", 1)
                if rest.startswith(INPUT):
                    versions[run_id] = (rest, info.sha256)
    for run in runs.values():
        versions[run.run_id] = (run.input_key, run.input_sha256)
    return versions


def published_kind(key: str) -> str | None:
    """OUTPUT or REJECTED for a published object (output/<p>, rejected/<p> or a version's own
    versions/<run-id>/output|rejected/<p>), None for anything else."""
    if key.startswith(VERSIONS):
        parts = key.split("/", 2)
        key = parts[2] if len(parts) == 3 else ""
    for kind in (OUTPUT, REJECTED):
        if key.startswith(kind):
            return kind
    return None


def object_state(info: ObjectInfo) -> tuple[str, int, str, str]:
    """What two regions' copies of an object must agree on once converged: replication
    converges to the winning version itself, writer and metadata included."""
    return info.sha256, info.epoch, info.origin, _canonical(dict(info.meta))


def record_state(record: Record) -> tuple[int, int, Any]:
    """What two regions' copies of a state record must agree on once converged."""
    return record.version, record.epoch, _canonical(record.body)


def _canonical(body: Any) -> str:
    return json.dumps(body, sort_keys=True)
