"""Recovery operations built on run takeover: reconcile (every unfinished run re-driven in the
active region, the missing inputs watched and named), redrive of a FAILED run, and the choice of
a failover or failback target."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .. import backends
from ..access.ledger import accepted_in
from ..config.pipelines import format_for
from ..config.reload import fingerprint, request_reload
from ..config.workspace import Workspace
from ..engine.takeover import Missing, Takeover, present, readable, take_over
from ..errors import ConflictError, MrbatchError, UnavailableError, UsageError
from ..model.keys import run_key
from ..model.records import CHUNK, RUN, ChunkRun, ChunkStatus, FileRun, RunStatus, chunk_pk, run_pk
from ..observe import views
from ..ports import RegionState, Routing

__all__ = [
    "failback_target",
    "failover_target",
    "reconcile_now",
    "redrive",
    "redrive_matching",
]


def _active_routing(ws: Workspace, region: str | None = None) -> Routing:
    routing = backends.open_control_plane(ws, caller=region).routing()
    if region is not None and routing.active_region != region:
        raise UsageError(
            f"{region} is not the active region ({routing.active_region} is)",
            hint="reconcile and redrive run in the active region",
        )
    if routing.phase != "ACTIVE":
        raise UsageError(
            f"a recovery plan is in progress (phase {routing.phase}, epoch {routing.epoch})",
            hint="let it finish; `mrbatch plan history` shows it",
        )
    return routing


# How long a redrive waits for the active region to apply an edit of mrbatch.toml.
FOLLOW_TIMEOUT = 10.0
# A redrive is a compare-and-set of the run's record: tries when the region wrote it meanwhile.
REDRIVE_ATTEMPTS = 3


def _region_follows_file(ws: Workspace, region: str, timeout: float = FOLLOW_TIMEOUT) -> None:
    """A redrive pins the pipeline as mrbatch.toml declares it now, and the active region
    drives the run with the configuration it has applied: when that is an older one (the file
    was edited a moment ago), it is asked to apply the edit now (as `mrbatch reload` does) and
    the redrive waits for it, bounded — else the region would refuse the run it is given."""
    digest = fingerprint(ws)
    control = backends.open_control_plane(ws)

    def running() -> str | None:
        """The digest the region's process reports; None when none runs (it loads the file
        when it starts) or it reports none."""
        beat = control.heartbeats().get(region)
        if beat is None or time.time() - beat.at > ws.config.watch.heartbeat_timeout:
            return None
        return (beat.info.get("config") or {}).get("digest")

    current = running()
    if current is None or current == digest:
        return
    request_reload(ws)
    deadline = time.monotonic() + timeout
    while (current := running()) not in (None, digest):
        if time.monotonic() >= deadline:
            raise MrbatchError(
                f"the active region {region} still runs configuration {current}, not {digest}"
                f" as {ws.config_path.name} is now; a run re-driven now would be refused there",
                hint="`mrbatch reload` says why it was not applied; then redrive again",
            )
        time.sleep(0.1)


def _taken_over_now(run: FileRun, epoch: int) -> bool:
    return any(
        h.get("epoch") == epoch and str(h.get("note", "")).startswith("taken over")
        for h in run.history
    )


def reconcile_now(
    ws: Workspace,
    region: str | None = None,
    *,
    max_wait: float | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Re-drive every unfinished run in the active region; wait (bounded) for the inputs that
    have not arrived, and report each run by name: re-driven, still running here, or at risk."""
    echo = echo or (lambda _line: None)
    routing = _active_routing(ws, region)
    region = routing.active_region
    bound = ws.config.failover.max_wait if max_wait is None else max_wait
    store = backends.open_object_store(ws, region)
    table = backends.open_state_table(ws, region)
    started = time.monotonic()
    pending: dict[str, Missing] = {}
    redriven: dict[str, dict[str, Any]] = {}
    in_progress: list[dict[str, Any]] = []

    def settle(record: Any) -> None:
        outcome = take_over(
            record, region=region, routing=routing, store=store, table=table, config=ws.config
        )
        run = FileRun.from_record(table.get(record.pk) or record)
        if isinstance(outcome, Missing):
            pending[run.run_id] = outcome
            return
        pending.pop(run.run_id, None)
        if isinstance(outcome, Takeover):
            redriven[run.run_id] = {**outcome.to_dict(), "status": str(run.status)}
        elif _taken_over_now(run, routing.epoch):
            # the region process took it over first (and may have finished it since)
            redriven[run.run_id] = {
                "run_id": run.run_id,
                "input_key": run.input_key,
                "status": str(run.status),
                "by": "region process",
            }
        elif run.region == region and run.epoch == routing.epoch and not run.status.terminal:
            in_progress.append(
                {"run_id": run.run_id, "input_key": run.input_key, "status": str(run.status)}
            )

    for record in table.scan(RUN):
        run = FileRun.from_record(record)
        if not run.status.terminal or _taken_over_now(run, routing.epoch):
            settle(record)
    # Accepted versions nobody claimed yet: the region claims each once its bytes are here.
    unclaimed = {
        entry.run_id: entry
        for entry in accepted_in(table)
        if table.get(run_pk(entry.run_id)) is None and not present(store, entry.object_key)
    }
    for entry in unclaimed.values():
        pending[entry.run_id] = Missing(
            entry.run_id, entry.key, entry.region, "input", entry.object_key,
            {"sha256": entry.sha256, "accepted_at": entry.at},
        )  # fmt: skip
    missing = [m.to_dict() for m in pending.values()]
    for item in missing:
        echo(
            f"    waiting for {item['what']} {item['key']} of run {item['run_id']}"
            f" (held by {item['region']})"
        )
    while pending and time.monotonic() - started < bound:
        time.sleep(0.2)
        for run_id in list(pending):
            latest = table.get(run_pk(run_id))
            if latest is not None:
                settle(latest)
            elif run_id in unclaimed and present(store, unclaimed[run_id].object_key):
                pending.pop(run_id)  # arrived: the region process claims it
    arrived = [m for m in missing if m["run_id"] not in pending]
    at_risk = [m.to_dict() for m in pending.values()]
    for item in at_risk:
        echo(
            f"    AT RISK: {item['input_key']} (run {item['run_id']}): its {item['what']}"
            f" {item['key']} is only in {item['region']}"
        )
    return {
        "active_region": region,
        "epoch": routing.epoch,
        "redriven": list(redriven.values()),
        "in_progress": in_progress,
        "missing": missing,
        "arrived": arrived,
        "at_risk": at_risk,
        "seconds": round(time.monotonic() - started, 3),
    }


def redrive(ws: Workspace, key_or_id: str) -> dict[str, Any]:
    """Run a FAILED run again in the active region from its last good step, re-running only the
    chunks that failed or rejected rows (all of them if the reference data changed since)."""
    routing = _active_routing(ws)
    _region_follows_file(ws, routing.active_region)
    for attempt in range(1, REDRIVE_ATTEMPTS + 1):
        try:
            return _redrive(ws, key_or_id, routing)
        except ConflictError:
            # The region wrote the run meanwhile (the record of its failure mail, say): the
            # redrive changed nothing; read the run again.
            if attempt == REDRIVE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _redrive(ws: Workspace, key_or_id: str, routing: Routing) -> dict[str, Any]:
    region = routing.active_region
    store = backends.open_object_store(ws, region)
    table = backends.open_state_table(ws, region)
    found = views.find_run(ws, key_or_id)
    record = table.get(run_pk(found.run_id))
    if record is None:
        raise MrbatchError(
            f"run {found.run_id} has not replicated to the active region {region} yet",
            hint="wait for replication (`mrbatch status` shows the backlog), then try again",
        )
    run = FileRun.from_record(record)
    if run.status is not RunStatus.FAILED:
        raise UsageError(
            f"run {run.run_id} ({run.input_key}) is {run.status}; redrive takes FAILED runs",
            hint="a COMPLETED run is never run twice; upload new bytes to process again",
        )
    epoch = routing.epoch
    spec = ws.config.spec_for_run(run.pipeline, run.input_key)
    if spec is None:
        raise UsageError(
            f"run {run.run_id} ({run.input_key}) belongs to pipeline {run.pipeline!r}, which"
            f" {ws.config_path.name} no longer declares",
            hint="declare the pipeline again (or upload the input under another prefix)",
        )
    enrichment = spec.enrichment
    changed_reference = False
    if enrichment is not None and run.reference_version is not None:
        current = store.head(enrichment.reference)
        if current is not None and current.version != run.reference_version:
            # A key of its own for this version: nothing the run still uses is overwritten
            # before the run's record is ours.
            snapshot = store.copy(
                enrichment.reference,
                run_key(run.run_id, f"reference-{current.sha256[:16]}.csv"),
                version=current.version,
                epoch=epoch,
            )
            run.reference_key, run.reference_sha256 = snapshot.key, snapshot.sha256
            run.reference_version = snapshot.version
            changed_reference = True
    # The configuration or the code changed since the claim: every chunk runs again with the
    # new ones (split afresh when the configuration changed), so no output mixes two versions.
    # (Imported here: loading pipelines imports polars, which a failover never needs.)
    from ..engine.pipelines import pins

    pipeline_hash, code = pins(ws, spec)
    changed_config = run.pipeline_hash is not None and run.pipeline_hash != pipeline_hash
    changed_code = run.code_version is not None and run.code_version != code
    run.pipeline, run.pipeline_hash, run.code_version = spec.name, pipeline_hash, code
    run.webhook_url = spec.webhook.url if spec.webhook is not None else None
    if changed_config:
        run.chunk_rows, run.input_format = spec.chunk_rows, format_for(spec, run.input_key)
    changed_reference = changed_reference or changed_code
    redo: list[tuple[ChunkRun, int | None]] = []
    kept = 0
    unsent = run.mail_sent_at is None or (run.webhook_url is not None and not run.webhook_sent_at)
    published = (
        run.output_key is not None
        and unsent
        and not changed_config
        and run.rows_out is not None
        and readable(store, run.output_key, run.output_sha256)
    )
    if published and not changed_reference:
        status = RunStatus.PUBLISHED  # only the mail failed: send it
    elif run.chunks and not changed_config:
        status = RunStatus.PROCESSING
        records = {r.pk: r for r in table.scan(CHUNK, prefix=f"chunk/{run.run_id}/")}
        for part in run.chunks:
            rec = records.get(chunk_pk(run.run_id, part.index))
            chunk = ChunkRun.from_record(rec) if rec else ChunkRun(run.run_id, part.index)
            good = (
                rec is not None
                and chunk.status is ChunkStatus.DONE
                and not changed_reference
                and not chunk.rows_rejected
                and readable(store, chunk.output_key, chunk.output_sha256)
            )
            if good:
                kept += 1
            else:
                redo.append((chunk, rec.version if rec else None))
    else:
        status = RunStatus.CLAIMED
        run.chunks, run.header = [], None
        run.reference_key = run.reference_sha256 = run.reference_version = None
    previous = run.reason
    run.redo_chunks = sorted(chunk.index for chunk, _version in redo)
    run.reason = None
    run.mail_attempts, run.mail_error = 0, None
    run.webhook_attempts, run.webhook_error = 0, None
    run.redriven += 1
    note = f"redriven by the operator at {status}" + (
        f": {len(redo)} chunk(s) to run, {kept} kept"
        if run.chunks and status is RunStatus.PROCESSING
        else ""
    )
    if changed_config or changed_code:
        note += "; the pipeline's configuration or code changed, so every chunk runs again"
    elif changed_reference:
        note += "; reference data changed, so every chunk runs again"
    run.advance(status, region=region, epoch=epoch, note=note)
    table.update(run_pk(run.run_id), run.to_body(), expected_version=record.version, epoch=epoch)
    return {
        "run_id": run.run_id,
        "input_key": run.input_key,
        "region": region,
        "epoch": epoch,
        "resumes_at": str(status),
        "chunks_to_run": len(redo),
        "chunks_kept": kept,
        "reference_changed": changed_reference and not changed_code,
        "pipeline_changed": changed_config or changed_code,
        "previous_reason": previous,
    }


def redrive_matching(
    ws: Workspace, *, status: str, since: float | None = None, prefix: str | None = None
) -> list[dict[str, Any]]:
    """Re-drive every run with ``status`` (FAILED) updated at or after ``since`` whose input
    key starts with ``prefix``; one entry per run: what redrive did, or why it did not."""
    if status != str(RunStatus.FAILED):
        raise UsageError(
            f"redrive takes FAILED runs, not {status}",
            hint="a COMPLETED run is never run twice; upload new bytes to process again",
        )
    results: list[dict[str, Any]] = []
    for run in views.all_runs(ws):
        if run.status is not RunStatus.FAILED:
            continue
        if since is not None and run.updated_at < since:
            continue
        if prefix is not None and not run.input_key.startswith(prefix):
            continue
        try:
            results.append({"ok": True, **redrive(ws, run.run_id)})
        except MrbatchError as exc:
            results.append(
                {"ok": False, "run_id": run.run_id, "input_key": run.input_key, "error": str(exc)}
            )
    return results


def failover_target(ws: Workspace, requested: str | None) -> str:
    if requested:
        return ws.check_region(requested)
    try:
        routing = backends.open_control_plane(ws).routing()
    except UnavailableError:
        routing = None
    active = routing.active_region if routing else ws.regions[0]
    for name in ws.regions:
        if name != active and (routing is None or routing.regions.get(name) != RegionState.ACTIVE):
            return name
    raise UsageError("no standby region to fail over to", hint="list one more region in regions")


def failback_target(ws: Workspace, requested: str | None) -> str:
    """The home region (the first listed), unless another is asked for."""
    return ws.check_region(requested) if requested else ws.regions[0]
