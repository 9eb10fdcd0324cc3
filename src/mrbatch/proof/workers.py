"""The pool workers of a running region, as chaos experiments see them: which pids they are (only
pids that really are children of the region process the supervisor recorded, or grandchildren
under a nanny, so a recycled pid is never signalled), how many chunk tasks the region holds,
and SIGKILL of one of them."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from .. import backends
from ..config.workspace import Workspace
from ..errors import MrbatchError
from ..model.records import CHUNK, RUN, ChunkRun, ChunkStatus, FileRun, RunStatus
from ..ports import Heartbeat
from ..runtime import supervisor

__all__ = ["beats", "chunks_in_flight", "kill_worker", "worker_pids"]


def _parent_of(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[1])


def worker_pids(ws: Workspace, region: str) -> tuple[int | None, list[int]]:
    """The region process's pid (as the supervisor recorded it) and those of its pool workers
    (as its heartbeat reports them), keeping only pids that really are its children now, so a
    recycled pid is never signalled."""
    parent = supervisor.pid_of(ws, supervisor.Proc("region", region))
    if parent is None:
        return None, []
    beat = backends.open_control_plane(ws).heartbeats().get(region)
    reported = [int(p) for p in (beat.info.get("workers") or [])] if beat else []
    return parent, [pid for pid in reported if _descends_from(pid, parent)]


def _descends_from(pid: int, parent: int) -> bool:
    """Is ``pid`` a child of ``parent``, or a grandchild (a worker under a nanny process, as
    a Dask cluster may run them)?"""
    above = _parent_of(pid)
    return above == parent or (above is not None and above > 1 and _parent_of(above) == parent)


def chunks_in_flight(ws: Workspace, region: str) -> int:
    """Chunk tasks the region has handed to its workers: PENDING chunks of its PROCESSING
    runs (the orchestrator submits every pending chunk of such a run at once)."""
    table = backends.open_state_table(ws, region)
    processing = {
        run.run_id
        for run in (FileRun.from_record(r) for r in table.scan(RUN))
        if run.status is RunStatus.PROCESSING and run.region == region
    }
    if not processing:
        return 0
    return sum(
        1
        for r in table.scan(CHUNK)
        if (chunk := ChunkRun.from_record(r)).run_id in processing
        and chunk.status is ChunkStatus.PENDING
    )


def beats(ws: Workspace) -> dict[str, Heartbeat]:
    try:
        return backends.open_control_plane(ws).heartbeats()
    except MrbatchError:
        return {}


def kill_worker(ws: Workspace, region: str, *, turn: int = 0) -> dict[str, Any] | None:
    """SIGKILL one pool worker of ``region``'s process, only while the region holds chunk
    tasks and only a pid that is that process's child; the evidence, or None (no work in
    flight, no worker known yet)."""
    in_flight = chunks_in_flight(ws, region)
    if not in_flight:
        return None
    parent, workers = worker_pids(ws, region)
    if parent is None or not workers:
        return None
    victim = workers[turn % len(workers)]
    if not _descends_from(victim, parent):  # exited since we looked: never signal a stranger
        return None
    try:
        os.kill(victim, signal.SIGKILL)
    except ProcessLookupError:
        return None
    return {"pid": victim, "parent": parent, "chunks_in_flight": in_flight}
