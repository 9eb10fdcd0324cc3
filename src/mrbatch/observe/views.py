"""Read-only views over a deployment, shared by the CLI's ``--json`` output and the gateway's
``/api`` endpoints: status of the regions, the runs, one run."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from .. import __version__, backends
from ..config.reload import fingerprint
from ..config.workspace import Workspace
from ..errors import MrbatchError, NotFoundError, UsageError
from ..model.keys import INPUT, run_id_for
from ..model.records import CHUNK, RUN, ChunkRun, FileRun, newest_runs, run_pk
from ..ports import Record, StateTable
from ..runtime import supervisor
from ..runtime.replication import region_backlog
from ..runtime.restarter import read_state
from .evaluation import EVALUATION_DOC, evaluation_summary
from .health import verdict

__all__ = [
    "MIN_PREFIX",
    "all_runs",
    "find_run",
    "input_key",
    "run_chunks",
    "runs_by_id",
    "runs_by_prefix",
    "status",
]


def input_key(key: str) -> str:
    """Accept ``input/x.csv`` or plain ``x.csv`` for the input ``input/x.csv``."""
    return key if key.startswith(INPUT) else INPUT + key


def _process(beat: Any, now: float) -> dict[str, Any]:
    """What a process's heartbeat says of its code and configuration."""
    if beat is None:
        return {"heartbeat_age": None, "version": None, "config": None}
    return {
        "heartbeat_age": round(now - beat.at, 3),
        "version": beat.info.get("version"),
        "config": beat.info.get("config"),
    }


def status(ws: Workspace) -> dict[str, Any]:
    """The ``mrbatch status --json`` contract, with a ``verdict``: ``ok`` false when a process
    is down or a threshold is crossed (the CLI then exits 1)."""
    now = time.time()
    procs = supervisor.running(ws)
    restarts_state = read_state(ws)
    records = restarts_state.get("processes")
    records = records if isinstance(records, dict) else {}

    def restarts(proc: supervisor.Proc) -> int:
        return int((records.get(proc.label) or {}).get("restarts", 0))

    result: dict[str, Any] = {"active_region": None, "epoch": None, "phase": None, "regions": {}}
    heartbeats: dict[str, Any] = {}
    try:
        control = backends.open_control_plane(ws)
        routing = control.routing()
        heartbeats = control.heartbeats()
        result.update(active_region=routing.active_region, epoch=routing.epoch, phase=routing.phase)
        states = dict(routing.regions)
        evaluation = control.documents(EVALUATION_DOC).get(EVALUATION_DOC)
        result["plan_evaluation"] = evaluation_summary(evaluation, now)
    except MrbatchError as exc:
        states = {}
        result["control_plane_error"] = str(exc)
    for region in ws.regions:
        pid = procs.get(supervisor.Proc("region", region))
        replicator = procs.get(supervisor.Proc("replicator", region))
        entry: dict[str, Any] = {
            "state": states.get(region),
            "pid": pid,
            "alive": pid is not None,
            "backlog": None,
            "lag_seconds": None,
            "replicator_pid": replicator,
            "replicator_alive": replicator is not None,
            "restarts": restarts(supervisor.Proc("region", region)),
            "replicator_restarts": restarts(supervisor.Proc("replicator", region)),
        }
        try:
            backlog = region_backlog(ws, region)
            entry.update(
                backlog=backlog.total,
                backlog_objects=backlog.objects,
                backlog_records=backlog.records,
                lag_seconds=round(backlog.lag(now), 3),
            )
        except MrbatchError as exc:
            entry["error"] = str(exc)
        beat = heartbeats.get(region)
        if beat is not None:
            entry["heartbeat_age"] = round(now - beat.at, 3)
            entry["process_state"] = beat.info.get("state")
            entry["runs_in_flight"] = beat.info.get("runs_in_flight")
            entry["workers"] = beat.info.get("workers")
            entry["stats"] = beat.info.get("stats", {})
            entry["last_error"] = beat.info.get("last_error")
            entry["mail_retrying"] = beat.info.get("mail_retrying", [])
            entry["waiting"] = beat.info.get("waiting", [])
            if beat.lease_held is not None:  # a control plane with leases (etcd)
                entry["lease_held"] = beat.lease_held
                if not beat.lease_held:
                    # Stopped, or cut off from the control plane: it publishes nothing.
                    fenced = entry["state"] == "ACTIVE"
                    entry["process_state"] = "self-fenced (no lease)" if fenced else "no lease"
        own = _process(beat, now)
        entry["version"], entry["config"] = own["version"], own["config"]
        other = _process(heartbeats.get(f"replicator:{region}"), now)
        entry["replicator_heartbeat_age"] = other["heartbeat_age"]
        entry["replicator_version"] = other["version"]
        entry["replicator_config"] = other["config"]
        result["regions"][region] = entry
    gateway = supervisor.Proc("gateway", "gateway")
    gateway_pid = procs.get(gateway)
    result["gateway"] = {
        "pid": gateway_pid,
        "alive": gateway_pid is not None,
        "url": ws.gateway_url,
        "restarts": restarts(gateway),
        **_process(heartbeats.get("gateway") if gateway_pid is not None else None, now),
    }
    commands = supervisor.Proc("commands", "commands")
    commands_pid = procs.get(commands)
    result["commands"] = {
        "pid": commands_pid,
        "alive": commands_pid is not None,
        "restarts": restarts(commands),
    }
    keeper = supervisor.pid_of(ws, supervisor.SUPERVISOR)
    # What the running supervisor loaded, which an edit of mrbatch.toml since has not changed.
    live = keeper is not None and restarts_state.get("pid") == keeper
    result["supervisor"] = {
        "pid": keeper,
        "alive": keeper is not None,
        "restart": restarts_state.get("restart") if live else ws.config.supervisor.restart,
        "version": restarts_state.get("version") if live else None,
        "config": restarts_state.get("config") if live else None,
        # per process label: restarts, deaths in a row, last exit, pause and next_due, ...
        "processes": records,
    }
    # The configuration as it is on disk now, and the code looking at it.
    result["config"] = {"path": str(ws.config_path), "digest": fingerprint(ws)}
    result["version"] = __version__
    result["verdict"] = verdict(ws, result)
    return result


def all_runs(ws: Workspace, *, status_filter: str | None = None) -> list[FileRun]:
    """Every run known to any reachable region; where regions disagree, the record with the
    higher epoch (then the later write) is the one shown, as replication will converge to it."""
    runs = sorted(
        _newest(ws, lambda table: list(table.scan(RUN))).values(),
        key=lambda r: (r.claimed_at, r.run_id),
    )
    if status_filter:
        wanted = status_filter.upper()
        runs = [r for r in runs if str(r.status) == wanted]
    return runs


def runs_by_id(
    ws: Workspace, run_ids: Iterable[str], tables: dict[str, StateTable] | None = None
) -> dict[str, FileRun]:
    """The runs among ``run_ids`` that any reachable region has, chosen as ``all_runs`` does:
    one read per run and region, not a scan (``mrbatch wait`` asks this every 20 ms, keeping
    the regions' ``tables`` open between calls)."""
    wanted = [run_pk(run_id) for run_id in run_ids]

    def read(table: StateTable) -> list[Record]:
        return [record for pk in wanted if (record := table.get(pk)) is not None]

    return _newest(ws, read, tables)


def _newest(
    ws: Workspace,
    read: Callable[[StateTable], list[Record]],
    tables: dict[str, StateTable] | None = None,
) -> dict[str, FileRun]:
    """``newest_runs`` of what ``read`` finds in every reachable region. ``tables`` keeps each
    region's opened table across calls (opening one costs ten times a read)."""
    opened = {} if tables is None else tables
    records: list[Record] = []
    reachable = 0
    for region in ws.regions:
        try:
            table = opened.get(region)
            if table is None:
                table = opened[region] = backends.open_state_table(ws, region)
            records += read(table)
        except MrbatchError:
            opened.pop(region, None)  # opened again next time
            continue
        reachable += 1
    if not reachable:
        raise MrbatchError("no region's state table can be read", hint="check `mrbatch status`")
    return newest_runs(records)


# A run id is 64 hex digits; `mrbatch runs` shows the first 12. Any unique prefix this long
# or longer names a run wherever a run id is accepted.
MIN_PREFIX = 6


def runs_by_prefix(runs: list[FileRun], prefix: str) -> list[FileRun]:
    """The runs whose id starts with ``prefix`` (one for a unique prefix)."""
    wanted = prefix.strip().lower()
    if len(wanted) < MIN_PREFIX or not all(c in "0123456789abcdef" for c in wanted):
        return []
    return [r for r in runs if r.run_id.startswith(wanted)]


def find_run(ws: Workspace, key_or_id: str) -> FileRun:
    """The run with that id (or unique id prefix, as ``mrbatch runs`` shows it), or the run of
    the current version of an input key. NotFoundError when there is none, UsageError when a
    prefix names several runs."""
    runs = all_runs(ws)
    by_id = runs_by_prefix(runs, key_or_id)
    if len(by_id) > 1:
        shown = ", ".join(f"{r.run_id[:16]} ({r.input_key})" for r in by_id[:5])
        raise UsageError(
            f"{key_or_id} is the beginning of {len(by_id)} run ids: {shown}",
            hint="give more of the run id",
        )
    if by_id:
        return by_id[0]
    key = input_key(key_or_id)
    from ..access.accesspoint import AccessPoint

    try:
        located = AccessPoint(ws).locate(key)
    except NotFoundError:
        located = None
    if located is not None:
        wanted = run_pk(run_id_for(key, located.info.sha256))
        for run in runs:
            if run_pk(run.run_id) == wanted:
                return run
        raise NotFoundError(
            f"{key} (sha256 {located.info.sha256[:12]}) has no run yet",
            hint="the active region claims it within moments when it is up (`mrbatch up`)",
        )
    for run in reversed(runs):  # the input is gone: its latest run is still the answer
        if run.input_key == key:
            return run
    raise NotFoundError(
        f"no input {key} and no run with id {key_or_id}",
        hint="`mrbatch runs` lists the runs; a run id may be shortened to its first"
        f" {MIN_PREFIX} or more characters",
    )


def run_chunks(ws: Workspace, run: FileRun) -> list[ChunkRun]:
    """The chunk records of ``run``'s current round, from the first region that holds them
    (the run's own region first)."""
    order = [run.region, *(r for r in ws.regions if r != run.region)]
    for region in order:
        if region not in ws.regions:
            continue
        try:
            records = list(
                backends.open_state_table(ws, region).scan(CHUNK, prefix=f"chunk/{run.run_id}/")
            )
        except MrbatchError:
            continue
        if records:
            return sorted((ChunkRun.from_record(r) for r in records), key=lambda c: c.index)
    return []
