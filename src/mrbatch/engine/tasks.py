"""The work the executor runs: SPLIT, one chunk, and preparing reference data.

Every task is a module-level function of picklable arguments, opens the region's store itself
(once per worker process) and writes only objects; the orchestrator records the outcome in the
state table. Each task is deterministic and overwrites its own outputs with identical bytes when
run again, so a task repeated after a crash or a failover never doubles an effect.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .. import backends
from ..config.reload import ConfigRef
from ..config.workspace import Workspace
from ..errors import ConflictError, TaskError
from ..faults import FaultPoints
from ..model.keys import chunk_output_key, chunk_rejected_key
from ..model.records import ChunkSpec
from ..pipeline.chunk import process_chunk
from ..pipeline.csvsplit import split_csv
from ..pipeline.reference import (
    Enrichment,
    ReferenceTable,
    prepare_reference,
    reference_cache_tag,
)
from ..pipeline.schema import RecordSchema
from ..ports import ObjectStore

__all__ = [
    "ChunkResult",
    "SplitResult",
    "chunk_task",
    "reference_task",
    "split_task",
]


@dataclass(frozen=True)
class _Context:
    ws: Workspace
    region: str
    store: ObjectStore
    schema: RecordSchema
    enrichment: Enrichment | None
    faults: FaultPoints


# One context per configuration a region sent tasks with (a worker may outlive an edit).
_CONTEXTS: dict[tuple[str, str, str], _Context] = {}


def _context(config: str | ConfigRef, region: str) -> _Context:
    """The worker's context for ``region`` under ``config``: the validated configuration the
    region sent (a ``ConfigRef``, never an edit of the file the region has not applied), or
    for a plain path, the file as it is."""
    if isinstance(config, str):
        return _file_context(config, region)
    key = (config.path, config.digest, region)
    if key not in _CONTEXTS:
        if len(_CONTEXTS) >= 4:  # older configurations: their runs are finished or gone
            _CONTEXTS.pop(next(iter(_CONTEXTS)))
        _CONTEXTS[key] = _build(Workspace(Path(config.path), config.config), region)
    return _CONTEXTS[key]


@cache
def _file_context(config_path: str, region: str) -> _Context:
    return _build(Workspace.load(Path(config_path)), region)


def _build(ws: Workspace, region: str) -> _Context:
    pipeline = ws.config.pipeline
    enrichment = None
    if pipeline.enrichment is not None:
        enrichment = Enrichment(
            key=pipeline.enrichment.key,
            reference_key=pipeline.enrichment.reference_key,
            columns=dict(pipeline.enrichment.columns),
        )
    return _Context(
        ws=ws,
        region=region,
        store=backends.open_object_store(ws, region),
        schema=RecordSchema.from_file(ws.resolve(pipeline.schema_path)),
        enrichment=enrichment,
        faults=FaultPoints(ws.faults_path),
    )


# --------------------------------------------------------------------------- SPLIT


@dataclass(frozen=True)
class SplitResult:
    header: str
    chunks: list[ChunkSpec]


def split_task(
    config_path: str | ConfigRef,
    region: str,
    source_key: str,
    version: str | None,
    size: int,
    chunk_rows: int,
    input_key: str,
) -> SplitResult:
    """Find the chunk boundaries (records never cut, quotes respected) and hash each range of
    the input version kept at ``source_key``. Streaming: memory is one chunk, whatever the
    size of the file. ``input_key`` names the input in messages."""
    ctx = _context(config_path, region)
    header = b""
    found: list[tuple[int, int, str, int, int]] = []
    with ctx.store.open(source_key, version=version) as stream:
        for chunk in split_csv(stream, chunk_rows=chunk_rows, source=input_key):
            if chunk.index == 0:
                header = chunk.data[: chunk.header_size]
            body = memoryview(chunk.data)[chunk.header_size :]
            found.append(
                (
                    chunk.index,
                    len(body),
                    hashlib.sha256(body).hexdigest(),
                    chunk.first_line,
                    chunk.lines,
                )
            )
    # The bodies are consecutive and run to the end of the file; the header (and a BOM, if
    # any) come before them.
    offset = size - sum(length for _, length, _, _, _ in found)
    specs: list[ChunkSpec] = []
    for index, length, sha, first_line, lines in found:
        specs.append(
            ChunkSpec(
                index=index,
                start=offset,
                end=offset + length,
                sha256=sha,
                first_line=first_line,
                lines=lines,
            )
        )
        offset += length
    return SplitResult(header=header.decode("utf-8"), chunks=specs)


# --------------------------------------------------------------------------- reference


def _reference_cache(ctx: _Context, version: str) -> Path:
    assert ctx.enrichment is not None
    fingerprint = hashlib.sha256(
        repr((ctx.enrichment.key, ctx.enrichment.reference_key, ctx.enrichment.columns)).encode()
    ).hexdigest()[:12]
    return (
        ctx.ws.region_dir(ctx.region)
        / "cache"
        / (f"reference-{version[:24]}-{fingerprint}-{reference_cache_tag()}.parquet")
    )


def _ensure_reference(ctx: _Context, key: str, version: str) -> ReferenceTable:
    """The columnar copy of one reference version, built once per region (under a file lock,
    so two workers never build it twice at the same time)."""
    assert ctx.enrichment is not None
    target = _reference_cache(ctx, version)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.exists():
                source = target.with_suffix(f".{os.getpid()}.csv")
                try:
                    with ctx.store.open(key, version=version) as stream, open(source, "wb") as out:
                        while block := stream.read(1 << 20):
                            out.write(block)
                    label = ctx.ws.config.pipeline.enrichment
                    name = label.reference if label is not None else key
                    prepare_reference(
                        source, target, ctx.enrichment, source=f"{name} (version {version[:12]})"
                    )
                finally:
                    source.unlink(missing_ok=True)
    return _reference_table(str(target))


@cache
def _reference_table(path: str) -> ReferenceTable:
    return ReferenceTable(path)


def reference_task(config_path: str | ConfigRef, region: str, key: str, version: str) -> int:
    """Prepare the reference version ahead of the chunks; returns 0 (the work is the cache)."""
    ctx = _context(config_path, region)
    if ctx.enrichment is not None:
        _ensure_reference(ctx, key, version)
    return 0


# --------------------------------------------------------------------------- one chunk


@dataclass(frozen=True)
class ChunkResult:
    index: int
    rows_in: int
    rows_out: int
    rows_rejected: int
    output_key: str
    output_sha256: str
    output_size: int
    rejected_key: str
    rejected_sha256: str
    output_header: list[str]
    rejected_header: list[str]
    seconds: float = 0.0


def chunk_task(
    config_path: str | ConfigRef,
    region: str,
    run_id: str,
    source_key: str,
    source_version: str | None,
    header: str,
    spec: ChunkSpec,
    reference_key: str | None,
    reference_version: str | None,
    epoch: int,
    input_key: str,
) -> ChunkResult:
    started = time.perf_counter()
    ctx = _context(config_path, region)
    fault = ctx.faults.active("chunk-error", region)
    if fault is not None:  # a poisoned dependency: the task itself fails, storage is fine
        raise TaskError(f"injected fault: the chunk task failed ({fault.note or 'chunk-error'})")
    body = ctx.store.get_range(
        source_key, spec.start, spec.end - spec.start, version=source_version
    )
    if hashlib.sha256(body).hexdigest() != spec.sha256:
        raise ConflictError(f"chunk {spec.index} of {input_key} does not match its checksum")
    data = header.encode("utf-8") + body
    del body
    reference = None
    if ctx.enrichment is not None and reference_key and reference_version:
        reference = _ensure_reference(ctx, reference_key, reference_version)
    out = process_chunk(
        data,
        schema=ctx.schema,
        enrichment=ctx.enrichment if reference is not None else None,
        reference=reference,
        first_line=spec.first_line,
        source=input_key,
        escape_formulas=ctx.ws.config.output.escape_formulas,
    )
    output = ctx.store.put(chunk_output_key(run_id, spec.index), out.output, epoch=epoch)
    rejected = ctx.store.put(chunk_rejected_key(run_id, spec.index), out.rejected, epoch=epoch)
    ctx.faults.crash_point("chunk-written", region)
    return ChunkResult(
        index=spec.index,
        rows_in=out.rows_in,
        rows_out=out.rows_out,
        rows_rejected=out.rows_rejected,
        output_key=output.key,
        output_sha256=output.sha256,
        output_size=output.size,
        rejected_key=rejected.key,
        rejected_sha256=rejected.sha256,
        output_header=list(out.output_header),
        rejected_header=list(out.rejected_header),
        seconds=time.perf_counter() - started,
    )
