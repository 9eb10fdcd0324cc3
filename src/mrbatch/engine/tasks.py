"""The work the executor runs: SPLIT, one chunk, and preparing reference data.

Every task is a module-level function of picklable arguments, opens the region's store itself
(once per worker process) and writes only objects; the orchestrator records the outcome in the
state table. Each task is deterministic and overwrites its own outputs with identical bytes when
run again, so a task repeated after a crash or a failover never doubles an effect.

Each task runs the pipeline its run pinned at claim (name, configuration hash, code version),
loaded from the configuration it is given: the one the region drives the run with (a
``ConfigRef``), or the file at a path. Code that differs is imported again once (and a path's
workspace loaded again once); a task refuses when its pins still differ.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

import polars as pl

from .. import backends
from ..config.pipelines import delimiter_for, split_quote
from ..config.reload import ConfigRef
from ..config.workspace import Workspace
from ..errors import ConflictError, InputError, TaskError, UserCodeError
from ..faults import FaultPoints
from ..model.keys import chunk_output_key, chunk_rejected_key, run_key
from ..model.records import ChunkSpec
from ..pipeline.chunk import ChunkOutput, Extras, process_chunk, process_records
from ..pipeline.csvsplit import find_chunks
from ..pipeline.http_enrich import DurableAnswers
from ..pipeline.jsonl import parse_jsonl
from ..pipeline.parquet import footer_length, group_row_groups, read_footer, read_row_groups
from ..pipeline.parse import LINE, ROW, Dialect, parse_header
from ..pipeline.reference import ReferenceTable, prepare_reference, reference_cache_tag
from ..ports import ObjectStore, StateTable
from .answers import RunAnswers
from .pipelines import LoadedPipeline, load_pipeline

__all__ = ["ChunkResult", "SplitResult", "chunk_task", "reference_task", "split_task"]


@dataclass(frozen=True)
class _Context:
    ws: Workspace
    region: str
    store: ObjectStore
    faults: FaultPoints

    @cached_property
    def table(self) -> StateTable:  # opened on first use: only API enrichment needs it here
        return backends.open_state_table(self.ws, self.region)


# One context per configuration a region sent tasks with (a worker may outlive an edit).
_CONTEXTS: dict[tuple[str, str, str], _Context] = {}
_MAX_CONFIGS = 4  # older configurations: their runs are finished or gone


def _context(config: str | ConfigRef, region: str) -> _Context:
    """The worker's context for ``region`` under ``config``: the validated configuration the
    region sent (a ``ConfigRef``, never an edit of the file the region has not applied), or
    for a plain path, the file as it is."""
    if isinstance(config, str):
        return _file_context(config, region)
    key = (config.path, config.digest, region)
    if key not in _CONTEXTS:
        if len(_CONTEXTS) >= _MAX_CONFIGS:
            _CONTEXTS.pop(next(iter(_CONTEXTS)))
        _CONTEXTS[key] = _build(Workspace(Path(config.path), config.config), region)
    return _CONTEXTS[key]


@cache
def _file_context(config_path: str, region: str) -> _Context:
    return _build(Workspace.load(Path(config_path)), region)


def _build(ws: Workspace, region: str) -> _Context:
    return _Context(
        ws=ws,
        region=region,
        store=backends.open_object_store(ws, region),
        faults=FaultPoints(ws.faults_path),
    )


_loaded: dict[tuple[str, str, str, str | None, str | None], LoadedPipeline] = {}


def _pipeline(
    config: str | ConfigRef,
    region: str,
    name: str,
    input_key: str,
    pinned: tuple[str | None, str | None] = (None, None),
) -> tuple[_Context, LoadedPipeline]:
    """The run's pipeline as pinned, from the configuration the task was given: the one its
    region sent (a ``ConfigRef``: exactly what the run is driven with) or the file at a path
    (loaded again once when it differs: maybe only this worker's copy is stale). Either way
    the user code is imported again once when it differs, and a pin still not met refuses."""
    source = config if isinstance(config, str) else f"{config.path}#{config.digest}"
    cache_key = (source, region, name or input_key, *pinned)
    ctx = _context(config, region)
    if cache_key in _loaded:
        return ctx, _loaded[cache_key]
    for attempt in (1, 2):
        spec = ctx.ws.config.spec_for_run(name, input_key)
        try:
            if spec is None:
                raise UserCodeError(
                    f"pipeline {name!r} is no longer declared in {ctx.ws.config_path.name};"
                    " declare it again, then `mrbatch redrive`"
                )
            loaded = load_pipeline(ctx.ws, spec, *pinned)
            break
        except UserCodeError:
            # A ConfigRef is the region's own configuration: loading it again changes nothing.
            if attempt == 2 or not isinstance(config, str):
                raise
            _file_context.cache_clear()
            ctx = _context(config, region)
    _loaded[cache_key] = loaded
    return ctx, loaded


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
    pipeline: str = "",
    input_format: str = "csv",
    pinned: tuple[str | None, str | None] = (None, None),
) -> SplitResult:
    """Find the chunk boundaries (records never cut, quotes respected; Parquet: row groups)
    and hash each range of the input version kept at ``source_key``. Streaming: memory is one
    chunk, whatever the size of the file. ``input_key`` names the input in messages."""
    ctx, loaded = _pipeline(config_path, region, pipeline, input_key, pinned)
    if input_format == "parquet":
        return _split_parquet(ctx, loaded, source_key, version, size, chunk_rows, input_key)
    quote = split_quote(loaded.spec, input_format)
    with ctx.store.open(source_key, version=version) as stream:
        header, ranges = find_chunks(
            stream,
            chunk_rows=chunk_rows,
            source=input_key,
            quote=quote.encode() if quote else None,
            has_header=input_format != "jsonl",
            check_header=lambda raw: _check_header(loaded, raw, input_key),
        )
    return SplitResult(header=header, chunks=[ChunkSpec(*r) for r in ranges])


def _check_header(loaded: LoadedPipeline, raw: bytes, input_key: str) -> None:
    spec = loaded.spec
    dialect = Dialect.of(delimiter_for(spec, input_key), spec.quote)
    header = parse_header(raw.removeprefix(b"\xef\xbb\xbf"), input_key, dialect)
    _expect_header(loaded, header, input_key)


def _expect_header(loaded: LoadedPipeline, header: list[str], input_key: str) -> None:
    expected = loaded.spec.file.header
    if expected is not None and header != expected:
        raise InputError(
            f"{input_key}: the header is {', '.join(map(repr, header))}; the pipeline"
            f" {loaded.spec.name} expects {', '.join(map(repr, expected))} (file.header)",
            hint="export the file with the expected columns, in that order",
        )
    loaded.schema.check_header(header, source=input_key)


def _parquet_footer(store: ObjectStore, key: str, version: str | None, size: int, source: str):  # type: ignore[no-untyped-def]
    if size < 12:
        raise InputError(f"{source} is not a Parquet file (it has {size} bytes)")
    length = footer_length(store.get_range(key, size - 8, 8, version=version), source)
    tail = store.get_range(key, size - length, length, version=version)
    return tail, read_footer(tail, size, source)


def _split_parquet(
    ctx: _Context,
    loaded: LoadedPipeline,
    key: str,
    version: str | None,
    size: int,
    chunk_rows: int,
    input_key: str,
) -> SplitResult:
    _tail, footer = _parquet_footer(ctx.store, key, version, size, input_key)
    _expect_header(loaded, footer.columns, input_key)
    specs: list[ChunkSpec] = []
    row = 0
    for index, groups in enumerate(group_row_groups(footer.groups, chunk_rows)):
        rows = sum(g.rows for g in groups)
        start = groups[0].start if groups else 4
        end = groups[-1].end if groups else 4
        sha = hashlib.sha256()
        for block in _ranges(ctx.store, key, version, start, end):
            sha.update(block)
        span = [groups[0].index, groups[-1].index + 1] if groups else [0, 0]
        specs.append(ChunkSpec(index, start, end, sha.hexdigest(), row + 1, rows, span))
        row += rows
    return SplitResult(header="", chunks=specs)


def _ranges(
    store: ObjectStore, key: str, version: str | None, start: int, end: int
) -> Iterator[bytes]:
    while start < end:
        step = min(8 << 20, end - start)
        yield store.get_range(key, start, step, version=version)
        start += step


# --------------------------------------------------------------------------- reference


def _reference_cache(ctx: _Context, loaded: LoadedPipeline, version: str) -> Path:
    assert loaded.enrichment is not None
    e = loaded.enrichment
    fingerprint = hashlib.sha256(repr((e.key, e.reference_key, e.columns)).encode()).hexdigest()
    name = f"reference-{version[:24]}-{fingerprint[:12]}-{reference_cache_tag()}.parquet"
    return ctx.ws.region_dir(ctx.region) / "cache" / name


def _ensure_reference(
    ctx: _Context, loaded: LoadedPipeline, key: str, version: str
) -> ReferenceTable:
    """The columnar copy of one reference version, built once per region (under a file lock,
    so two workers never build it twice at the same time)."""
    assert loaded.enrichment is not None
    target = _reference_cache(ctx, loaded, version)
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
                    label = loaded.spec.enrichment
                    name = label.reference if label is not None else key
                    prepare_reference(
                        source, target, loaded.enrichment, source=f"{name} (version {version[:12]})"
                    )
                finally:
                    source.unlink(missing_ok=True)
    return _reference_table(str(target), ctx.ws.config.pipeline.reference_memory)


@cache
def _reference_table(path: str, hold_max_bytes: int) -> ReferenceTable:
    return ReferenceTable(path, hold_max_bytes=hold_max_bytes)


def reference_task(
    config_path: str | ConfigRef,
    region: str,
    key: str,
    version: str,
    pipeline: str = "",
    input_key: str = "",
) -> int:
    """Prepare the reference version ahead of the chunks; returns 0 (the work is the cache)."""
    ctx, loaded = _pipeline(config_path, region, pipeline, input_key)
    if loaded.enrichment is not None:
        _ensure_reference(ctx, loaded, key, version)
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
    counts: tuple[str, ...] = ()


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
    pipeline: str = "",
    input_format: str = "csv",
    pinned: tuple[str | None, str | None] = (None, None),
    size: int = 0,
) -> ChunkResult:
    started = time.perf_counter()
    ctx, loaded = _pipeline(config_path, region, pipeline, input_key, pinned)
    fault = ctx.faults.active("chunk-error", region)
    if fault is not None:  # a poisoned dependency: the task itself fails, storage is fine
        raise TaskError(f"injected fault: the chunk task failed ({fault.note or 'chunk-error'})")
    if spec.index == 0 and input_format == "csv":
        # An upload may have found the chunks (access.splithint): no split task then checked
        # the header against the pipeline, so chunk 0 does, for every run (one line).
        _check_header(loaded, header.encode("utf-8"), input_key)
    body = ctx.store.get_range(
        source_key, spec.start, spec.end - spec.start, version=source_version
    )
    if hashlib.sha256(body).hexdigest() != spec.sha256:
        raise ConflictError(f"chunk {spec.index} of {input_key} does not match its checksum")
    reference = None
    if loaded.enrichment is not None and reference_key and reference_version:
        reference = _ensure_reference(ctx, loaded, reference_key, reference_version)
    pipe = loaded.spec
    api = None
    if loaded.api is not None:
        answers_key = run_key(run_id, f"api/{spec.index:05d}.json")
        shared = RunAnswers(ctx.table, run_id, epoch=epoch)
        api = DurableAnswers(loaded.api, ctx.store, answers_key, epoch=epoch, shared=shared)
    extras = Extras(
        rules=loaded.rules,
        api=api,
        count_column=pipe.file.count_column,
        columns=tuple(pipe.columns) if pipe.columns else None,
    )
    common = {
        "schema": loaded.schema,
        "enrichment": loaded.enrichment if reference is not None else None,
        "reference": reference,
        "source": input_key,
        "escape_formulas": pipe.escape_formulas,
        "extras": extras,
    }
    out: ChunkOutput
    if input_format == "csv":
        dialect = Dialect.of(delimiter_for(pipe, input_key), pipe.quote)
        out = process_chunk(
            body,
            header_line=header.encode("utf-8"),
            first_line=spec.first_line,
            dialect=dialect,
            **common,  # type: ignore[arg-type]
        )
    elif input_format == "jsonl":
        columns = loaded.columns()
        strict = not loaded.schema.additional_properties
        good, bad = parse_jsonl(body, columns, spec.first_line, input_key, strict=strict)
        out = process_records(good, [bad], columns, **common)  # type: ignore[arg-type]
    else:
        _tail, footer = _parquet_footer(ctx.store, source_key, source_version, size, input_key)
        frame = read_row_groups(
            body, spec.start, _tail, size, spec.first_line - 1, spec.lines, input_key
        )
        index = pl.int_range(1, frame.height + 1, dtype=pl.Int64)
        good = frame.select(index.alias(ROW), (index + (spec.first_line - 1)).alias(LINE), pl.all())
        out = process_records(good, [], footer.columns, **common)  # type: ignore[arg-type]
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
        counts=tuple(out.counts),
    )
