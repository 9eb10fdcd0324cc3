"""Taking over unfinished runs in the active region (after failover, failback or a redrive).

A run is taken over by one conditional write of its record, and nothing else: new region, new
epoch, the status it resumes at (its last durable step whose results are present in this
region, "replicated", or an earlier one) and the chunks to run again. Chunk records are checked
one by one: a chunk whose output is here stays DONE, any other is listed in ``redo_chunks``,
and the orchestrator that drives the run resets those (``Orchestrator._load_chunks``). Because
every step is deterministic, a chunk or a publish repeated in the new region gives the same
bytes; the higher epoch makes the new region's records and objects win when the old region's
late writes replicate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..config.settings import Config
from ..errors import ConflictError, NotFoundError
from ..model.keys import output_key_for, rejected_key_for, run_key
from ..model.records import CHUNK, ChunkRun, ChunkStatus, FileRun, RunStatus, chunk_pk, run_pk
from ..ports import ObjectStore, Record, Routing, StateTable

__all__ = [
    "Missing",
    "Takeover",
    "present",
    "readable",
    "source_here",
    "take_over",
]

log = logging.getLogger("mrbatch.takeover")


@dataclass(frozen=True)
class Takeover:
    run_id: str
    input_key: str
    from_region: str
    from_epoch: int
    from_status: str
    resumed_at: str
    chunks_kept: int = 0
    chunks_redone: int = 0
    version: int = 0  # the record's version after the takeover

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "version"}


@dataclass(frozen=True)
class Missing:
    """A run that cannot resume here yet: ``what`` (input or reference) has not arrived."""

    run_id: str
    input_key: str
    region: str  # the region that held the run (and the missing object)
    what: str
    key: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def readable(store: ObjectStore, key: str | None, version: str | None) -> bool:
    """Is this exact version of ``key`` in ``store``? (False for an unknown version.)"""
    if not key or not version:
        return False
    try:
        store.open(key, version=version).close()
    except NotFoundError:
        return False
    return True


def present(store: ObjectStore, key: str | None) -> bool:
    """Is ``key`` (an immutable key, such as a version's own) in ``store``?"""
    return bool(key) and store.head(key or "") is not None


def source_here(store: ObjectStore, run: FileRun) -> bool:
    """Are the run's input bytes in ``store``?"""
    key, version = run.source()
    return present(store, key) if version is None else readable(store, key, version)


def _published_here(store: ObjectStore, run: FileRun) -> bool:
    if not run.output_key or not run.output_sha256:
        return False
    if run.result_key:
        # The version's own results are what a publish must leave behind; output/<p> may
        # rightly show a newer version by now.
        result = store.head(run.result_key)
        rejected = store.head(run.result_rejected_key or "")
        return (
            result is not None
            and rejected is not None
            and result.sha256 == run.output_sha256
            and rejected.sha256 == run.merged_rejected_sha256
        )
    output = store.head(output_key_for(run.input_key))
    rejected = store.head(rejected_key_for(run.input_key))
    return (
        output is not None
        and rejected is not None
        and output.sha256 == run.output_sha256
        and output.meta.get("run_id") == run.run_id
        and rejected.meta.get("run_id") == run.run_id
    )


def _merged_here(store: ObjectStore, run: FileRun) -> bool:
    return readable(store, run.merged_key, run.merged_sha256) and readable(
        store, run.merged_rejected_key, run.merged_rejected_sha256
    )


def _chunk_here(store: ObjectStore, chunk: ChunkRun) -> bool:
    return readable(store, chunk.output_key, chunk.output_sha256) and readable(
        store, chunk.rejected_key, chunk.rejected_sha256
    )


def _reference_here(store: ObjectStore, run: FileRun, config: Config) -> bool:
    """The run's pinned reference version is readable here: its snapshot, or the version of
    the reference key it was taken from (which ``_restore_reference`` copies once this region
    owns the run)."""
    spec = config.spec_for_run(run.pipeline, run.input_key)
    enrichment = spec.enrichment if spec is not None else None
    if enrichment is None or not run.reference_version:
        return True
    return readable(store, run.reference_key, run.reference_version) or readable(
        store, enrichment.reference, run.reference_version
    )


def _restore_reference(store: ObjectStore, run: FileRun, config: Config) -> None:
    """Restore the run's reference snapshot from the reference key's version when only that
    replicated here (identical bytes: done again by another owner, it changes nothing)."""
    spec = config.spec_for_run(run.pipeline, run.input_key)
    enrichment = spec.enrichment if spec is not None else None
    if enrichment is None or not run.reference_version:
        return
    if readable(store, run.reference_key, run.reference_version):
        return
    store.copy(
        enrichment.reference,
        run.reference_key or run_key(run.run_id, "reference.csv"),
        version=run.reference_version,
        epoch=run.epoch,
    )


def take_over(
    record: Record,
    *,
    region: str,
    routing: Routing,
    store: ObjectStore,
    table: StateTable,
    config: Config,
) -> Takeover | Missing | None:
    """Take ``record``'s run over for ``region`` in the current epoch.

    Returns None when there is nothing to do (terminal, already ours, or someone else won the
    conditional write), Missing when the run cannot resume here yet."""
    run = FileRun.from_record(record)
    if run.status.terminal or (run.region == region and run.epoch == routing.epoch):
        return None
    if run.epoch > routing.epoch:
        return None  # written in a newer epoch than we know of: not ours to touch
    before = (run.region, run.epoch, str(run.status))
    resume, keep, redo = _resume_point(run, store, table)
    needs_input = resume is RunStatus.CLAIMED or bool(redo)
    if needs_input and not source_here(store, run):
        return Missing(
            run.run_id,
            run.input_key,
            run.region,
            "input",
            run.source()[0],
            {"sha256": run.input_sha256},
        )
    if needs_input and not _reference_here(store, run, config):
        return Missing(
            run.run_id,
            run.input_key,
            run.region,
            "reference",
            run.reference_key or "",
            {"version": run.reference_version},
        )
    epoch = routing.epoch
    if resume is RunStatus.CLAIMED:
        run.chunks, run.header = [], None
    note = f"taken over from {before[0]} (epoch {before[1]}, {before[2]}); resumes at {resume}" + (
        f", {len(keep)} chunk(s) kept, {len(redo)} to run" if run.chunks else ""
    )
    run.redriven += 1
    # The chunks to run again are reset by the region that drives the run, once this one
    # conditional write has made it the owner: a taker that loses writes nothing at all.
    run.redo_chunks = sorted(chunk.index for chunk, _version in redo)
    run.reason = None
    run.advance(resume, region=region, epoch=epoch, note=note)
    try:
        updated = table.update(
            run_pk(run.run_id), run.to_body(), expected_version=record.version, epoch=epoch
        )
    except (ConflictError, NotFoundError):
        return None  # another taker got there first; it made the same decision
    if needs_input:
        try:
            _restore_reference(store, run, config)
        except NotFoundError:  # purged meanwhile: the chunks report it, as any missing input
            log.warning("run %s: its reference version vanished after the takeover", run.run_id)
    log.info("run %s (%s) %s", run.run_id, run.input_key, note)
    return Takeover(
        run_id=run.run_id,
        input_key=run.input_key,
        from_region=before[0],
        from_epoch=before[1],
        from_status=before[2],
        resumed_at=str(resume),
        chunks_kept=len(keep),
        chunks_redone=len(redo),
        version=updated.version,
    )


def _resume_point(
    run: FileRun, store: ObjectStore, table: StateTable
) -> tuple[RunStatus, list[ChunkRun], list[tuple[ChunkRun, int | None]]]:
    """Where the run resumes, and which chunks are kept / must run again (with the version of
    their record, None when the record never arrived)."""
    status = run.status
    if status is RunStatus.PUBLISHED and _published_here(store, run):
        return RunStatus.PUBLISHED, [], []
    if status in (RunStatus.PUBLISHED, RunStatus.MERGED) and _merged_here(store, run):
        return RunStatus.MERGED, [], []
    if status is RunStatus.CLAIMED or not run.chunks:
        return RunStatus.CLAIMED, [], []
    records = {r.pk: r for r in table.scan(CHUNK, prefix=f"chunk/{run.run_id}/")}
    keep: list[ChunkRun] = []
    redo: list[tuple[ChunkRun, int | None]] = []
    for spec in run.chunks:
        rec = records.get(chunk_pk(run.run_id, spec.index))
        if rec is None:
            redo.append((ChunkRun(run_id=run.run_id, index=spec.index), None))
            continue
        chunk = ChunkRun.from_record(rec)
        if chunk.status is ChunkStatus.DONE and _chunk_here(store, chunk):
            keep.append(chunk)
        else:
            redo.append((chunk, rec.version))
    return RunStatus.PROCESSING, keep, redo
