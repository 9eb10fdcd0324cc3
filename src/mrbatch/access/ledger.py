"""The ledger of accepted uploads: one ``Accepted`` record per input version, in the state table
of the region whose bucket took the bytes, replicated to every other region like every record.

An upload is acknowledged only once both are durable in that region: the bytes under the
version's own immutable key (``versions/<run-id>/input/<path>``) and its ``Accepted`` record.
The active region claims a run for every ``Accepted`` record it holds, whichever region wrote
it, so a version overwritten a moment later (in the same region or another one) is processed
all the same; ``mrbatch verify`` checks every record of every reachable region.
"""

from __future__ import annotations

import time
from typing import Any

from .. import backends
from ..config.workspace import Workspace
from ..errors import ConflictError, MrbatchError
from ..model.keys import INPUT, run_id_for, version_input_key
from ..model.records import ACCEPTED, Accepted, accepted_pk
from ..ports import ObjectInfo, ObjectStore, StateTable

__all__ = ["accept", "accepted_in", "read_accepted"]


def accept(
    store: ObjectStore,
    table: StateTable,
    info: ObjectInfo,
    *,
    source: str,
    at: float | None = None,
    split: dict[str, Any] | None = None,
) -> Accepted:
    """Record ``info`` (an object just written under ``input/`` in ``store``) as an accepted
    version: keep its bytes under the version's key, then write its ``Accepted`` record.

    Idempotent: accepting the same key and bytes again returns the first record (the same
    version is never processed twice). Raises UnavailableError when the bucket or the state
    table cannot be written; the upload is then not acknowledged. ``split``: the chunks the
    upload found (access.splithint), kept in the record for the region that claims it."""
    if not info.key.startswith(INPUT):
        raise ValueError(f"{info.key} is not an input key")
    run_id = run_id_for(info.key, info.sha256)
    existing = table.get(accepted_pk(run_id))
    if existing is not None:
        return Accepted.from_record(existing)
    # The bytes first: a record never names a version whose bytes are not kept.
    kept = store.copy(
        info.key, version_input_key(run_id, info.key), version=info.version, durable=True
    )
    entry = Accepted(
        run_id=run_id,
        key=info.key,
        sha256=info.sha256,
        size=info.size,
        region=store.region,
        at=time.time() if at is None else at,
        source=source,
        object_key=kept.key,
        split=split,
    )
    try:
        table.insert(accepted_pk(run_id), ACCEPTED, entry.to_body(), epoch=0, durable=True)
    except ConflictError:
        # Accepted concurrently (the gateway and the region's own watcher, say): one version.
        record = table.get(accepted_pk(run_id))
        if record is not None:
            return Accepted.from_record(record)
    return entry


def accepted_in(table: StateTable) -> list[Accepted]:
    """Every accepted version one state replica knows of, in acceptance order."""
    return sorted((Accepted.from_record(r) for r in table.scan(ACCEPTED)), key=lambda a: a.order)


def read_accepted(ws: Workspace) -> tuple[list[Accepted], list[str]]:
    """Every accepted version any reachable region knows of (one entry per version, the
    earliest acceptance), and the regions that could not be read."""
    found: dict[str, Accepted] = {}
    unreadable: list[str] = []
    for region in ws.regions:
        try:
            entries = accepted_in(backends.open_state_table(ws, region))
        except MrbatchError:
            unreadable.append(region)
            continue
        for entry in entries:
            if entry.run_id not in found or entry.order < found[entry.run_id].order:
                found[entry.run_id] = entry
    return sorted(found.values(), key=lambda a: a.order), unreadable
