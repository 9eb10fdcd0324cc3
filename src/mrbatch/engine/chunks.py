"""The chunk stage of a run: chunk records (created, reset for a new round, saved), chunk tasks
on the executor with their retries, and the streaming merge that takes each chunk in index
order as soon as it is done: ``SPLIT`` -> ``PROCESSING`` -> ``MERGED``.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

from ..config.pipelines import PipelineSpec
from ..errors import (
    ConflictError,
    NotFoundError,
    ReferenceDataError,
    UnavailableError,
)
from ..model.records import (
    CHUNK,
    ChunkRun,
    ChunkStatus,
    RunStatus,
    chunk_pk,
)
from . import tasks
from .driver import MAX_WORKER_LOSSES, PERMANENT, Progress, RunDriver
from .merge import MergeInput, MergeResult, StreamingMerge

__all__ = ["ChunkStage"]

log = logging.getLogger("mrbatch.orchestrator")


class ChunkStage(RunDriver):
    def _create_chunks(self, progress: Progress) -> None:
        run = progress.run
        for spec in run.chunks:
            chunk = ChunkRun(
                run_id=run.run_id, index=spec.index, region=self.region, round=run.redriven
            )
            try:
                self.table.insert(
                    chunk_pk(run.run_id, spec.index), CHUNK, chunk.to_body(), epoch=run.epoch
                )
            except ConflictError:
                pass  # created before a crash (the record is the truth), or in a round before
        self._transition(progress, RunStatus.PROCESSING)

    def _load_chunks(self, progress: Progress) -> None:
        """Read the run's chunk records; reset to PENDING, in this round, every chunk whose
        record is from an earlier round and that the round must run again (``redo_chunks``
        of a takeover or redrive, or any chunk of a run that was split afresh); create the
        records that never arrived. Only the run's driver writes chunk records."""
        run = progress.run
        records = {
            ChunkRun.from_record(r).index: r
            for r in self.table.scan(CHUNK, prefix=f"chunk/{run.run_id}/")
        }
        redo = set(run.redo_chunks)
        for spec in run.chunks:
            record = records.get(spec.index)
            if record is None:
                fresh = ChunkRun(run.run_id, spec.index, region=self.region, round=run.redriven)
                record = self.table.insert(
                    chunk_pk(run.run_id, spec.index), CHUNK, fresh.to_body(), epoch=run.epoch
                )
            chunk = ChunkRun.from_record(record)
            stale = chunk.round < run.redriven and (
                spec.index in redo or chunk.status is not ChunkStatus.DONE
            )
            if stale:
                chunk.status, chunk.attempts, chunk.reason = ChunkStatus.PENDING, 0, None
                chunk.region, chunk.round = self.region, run.redriven
                record = self.table.update(
                    record.pk, chunk.to_body(), expected_version=record.version, epoch=run.epoch
                )
            progress.chunks[spec.index] = chunk
            progress.chunk_versions[spec.index] = record.version

    def _save_chunk(self, progress: Progress, chunk: ChunkRun) -> bool:
        pk = chunk_pk(chunk.run_id, chunk.index)
        try:
            record = self.table.update(
                pk,
                chunk.to_body(),
                expected_version=progress.chunk_versions[chunk.index],
                epoch=progress.run.epoch,
            )
        except (ConflictError, NotFoundError) as exc:
            # Only a region that took the run over (after winning its record) writes its
            # chunks besides us: the run is not ours any more.
            log.warning(
                "run %s chunk %d: record changed under us (%s); letting go",
                chunk.run_id,
                chunk.index,
                exc,
            )
            self._cancel(progress)
            self.runs.pop(chunk.run_id, None)
            return False
        progress.chunk_versions[chunk.index] = record.version
        return True

    def _process(self, progress: Progress) -> None:
        run = progress.run
        if not progress.chunks:
            self._load_chunks(progress)
        if progress.ref_future is not None and progress.ref_future.done():
            ref_future, progress.ref_future = progress.ref_future, None
            try:
                ref_future.result()
            except ReferenceDataError as exc:
                self._fail(progress, self._reference_reason(progress, exc))
                return
            except Exception as exc:  # the chunk tasks prepare it again and report for real
                log.info(
                    "run %s: reference preparation failed (%s); chunks will retry", run.run_id, exc
                )
        specs = {spec.index: spec for spec in run.chunks}
        now = self.clock()
        for index, chunk in sorted(progress.chunks.items()):
            if chunk.status is ChunkStatus.FAILED:
                self._fail(progress, f"chunk {index} failed: {chunk.reason}")
                return
            if chunk.status is ChunkStatus.DONE:
                continue
            future = progress.chunk_futures.get(index)
            if future is None:
                if now >= progress.chunk_retry_at.get(index, 0.0):
                    source_key, source_version = run.source()
                    progress.chunk_futures[index] = self.executor.submit(
                        tasks.chunk_task,
                        self._config(progress),
                        self.region,
                        run.run_id,
                        source_key,
                        source_version,
                        run.header or "",
                        specs[index],
                        run.reference_key,
                        run.reference_version,
                        run.epoch,
                        run.input_key,
                        run.pipeline,
                        run.input_format,
                        (run.pipeline_hash, run.code_version),
                        run.input_size,
                    )
                    self.stats["chunk_executions_started"] += 1
                continue
            if not future.done():
                continue
            del progress.chunk_futures[index]
            if not self._chunk_finished(progress, chunk, future):
                return
        self._feed_merge(progress)
        if progress.merger is not None and progress.merger.future.done():
            self._merged(progress)

    def _reference_reason(self, progress: Progress, exc: ReferenceDataError) -> str:
        spec = self._spec(progress)
        enrichment = spec.enrichment if spec is not None else None
        if enrichment is None:  # the HTTP API refused: nothing to upload
            return f"{exc}"
        key = enrichment.reference
        return (
            f"{exc}; upload corrected reference data with `mrbatch put FILE --key {key}`,"
            " then `mrbatch redrive` this input"
        )

    def _chunk_finished(self, progress: Progress, chunk: ChunkRun, future: Future[Any]) -> bool:
        """Record one chunk task's outcome; False when the run stopped (failed or let go)."""
        try:
            result: tasks.ChunkResult = future.result()
            progress.outages.pop(chunk.index, None)
        except PERMANENT as exc:
            self.stats["chunk_executions_failed"] += 1
            reason = (
                self._reference_reason(progress, exc)
                if isinstance(exc, ReferenceDataError)
                else str(exc)
            )
            chunk.status, chunk.reason = ChunkStatus.FAILED, reason
            if self._save_chunk(progress, chunk):
                self._fail(progress, reason)
            return False
        except UnavailableError as exc:
            # The region's storage or state is unavailable: not the chunk's fault, so it does
            # not use up the chunk's attempts; it waits (backing off) for the dependency.
            self.stats["chunk_executions_failed"] += 1
            waits = progress.outages[chunk.index] = progress.outages.get(chunk.index, 0) + 1
            chunk.last_error = f"{type(exc).__name__}: {exc}"
            # Capped low: an outage is polled, so the run resumes soon after the dependency.
            delay = self.outage_backoff.delay(waits)
            progress.chunk_retry_at[chunk.index] = self.clock() + delay
            log.warning(
                "run %s chunk %d: %s; retry in %.1fs (an outage, not counted as an attempt)",
                chunk.run_id,
                chunk.index,
                exc,
                delay,
            )
            return True
        except BaseException as exc:
            self.stats["chunk_executions_failed"] += 1
            # A worker killed under the task (the executor names what that looks like: a
            # broken process pool, a Dask KilledWorker) is the machine's fault, not the chunk's.
            lost_worker = isinstance(exc, self.executor.lost_worker_errors)
            if lost_worker:
                if exc is not progress.last_pool_break:
                    progress.last_pool_break = exc
                    progress.worker_losses += 1
            else:
                chunk.attempts += 1
            chunk.last_error = f"{type(exc).__name__}: {exc}"
            exhausted = (
                chunk.attempts >= self._pipeline(progress).chunk_attempts
                or progress.worker_losses >= MAX_WORKER_LOSSES
            )
            if exhausted:
                chunk.status = ChunkStatus.FAILED
                chunk.reason = (
                    f"gave up after {chunk.attempts} attempt(s) and {progress.worker_losses}"
                    f" lost worker(s); last error: {chunk.last_error}"
                )
            if not self._save_chunk(progress, chunk):
                return False
            if exhausted:
                self._fail(progress, f"chunk {chunk.index} failed: {chunk.reason}")
                return False
            if lost_worker:
                # The executor replaces the worker at once, so the chunk is tried again after
                # the first, short pause of an outage: backing off on every worker the run had
                # lost (as it did) left runs idle for 4-12 s after five kills, with a healthy
                # pool. A chunk that kills its worker every time still ends at
                # MAX_WORKER_LOSSES, with the reason.
                delay = self.outage_backoff.delay(1)
            else:
                delay = self.chunk_backoff.delay(chunk.attempts + progress.worker_losses)
            progress.chunk_retry_at[chunk.index] = self.clock() + delay
            log.warning(
                "run %s chunk %d: %s; retry in %.1fs",
                chunk.run_id,
                chunk.index,
                chunk.last_error,
                delay,
            )
            return True
        self.stats["chunk_executions_succeeded"] += 1
        log.info(
            "run %s chunk %d: %d rows in %.2fs",
            chunk.run_id,
            chunk.index,
            result.rows_in,
            result.seconds,
        )
        chunk.status = ChunkStatus.DONE
        chunk.rows_in, chunk.rows_out = result.rows_in, result.rows_out
        chunk.rows_rejected = result.rows_rejected
        chunk.output_key, chunk.output_sha256 = result.output_key, result.output_sha256
        chunk.output_size = result.output_size
        chunk.rejected_key, chunk.rejected_sha256 = result.rejected_key, result.rejected_sha256
        chunk.output_header, chunk.rejected_header = result.output_header, result.rejected_header
        chunk.counts = list(result.counts)
        chunk.region = self.region
        chunk.ended_at = self.clock()
        chunk.started_at = chunk.ended_at - result.seconds
        return self._save_chunk(progress, chunk)

    def _feed_merge(self, progress: Progress) -> None:
        """Hand every chunk that is done, in index order, to the run's streaming merge."""
        run = progress.run
        ordered = [progress.chunks[i] for i in sorted(progress.chunks)]
        merger = progress.merger
        fed = merger.fed if merger is not None else 0
        while fed < len(ordered) and ordered[fed].status is ChunkStatus.DONE:
            chunk = ordered[fed]
            if merger is None:
                merger = progress.merger = StreamingMerge(
                    self.store,
                    run.run_id,
                    chunk.output_header,
                    chunk.rejected_header,
                    epoch=run.epoch,
                    faults=self.faults,
                    region=self.region,
                )
            merger.feed(
                MergeInput(
                    index=chunk.index,
                    rows_in=chunk.rows_in or 0,
                    rows_out=chunk.rows_out or 0,
                    output_key=chunk.output_key or "",
                    output_sha256=chunk.output_sha256 or "",
                    rejected_key=chunk.rejected_key or "",
                    rejected_sha256=chunk.rejected_sha256 or "",
                )
            )
            fed += 1
        if merger is not None and fed == len(ordered):
            merger.finish()

    def _merged(self, progress: Progress) -> None:
        run = progress.run
        chunks = [progress.chunks[i] for i in sorted(progress.chunks)]
        assert progress.merger is not None
        future = progress.merger.future
        progress.merger = None
        try:
            merged: MergeResult = future.result()
        except (ConflictError, NotFoundError) as exc:
            # A chunk output is missing or does not match its record: recompute, bounded.
            if progress.attempts + 1 >= self._pipeline(progress).chunk_attempts:
                self._fail(progress, f"MERGE failed: {exc}")
            else:
                self._redo_chunks(progress, str(exc))
            return
        except UnavailableError as exc:
            self._backoff(progress, f"MERGE waits for {exc}", outage=True)
            return
        except Exception as exc:
            if progress.attempts + 1 >= self._pipeline(progress).chunk_attempts:
                self._fail(progress, f"MERGE failed {progress.attempts + 1} times: {exc}")
            else:
                self._backoff(progress, f"MERGE failed: {exc}")
            return
        rows_in = sum(c.rows_in or 0 for c in chunks)
        run.rows_in, run.rows_out, run.rows_rejected = (
            rows_in,
            merged.rows_out,
            merged.rows_rejected,
        )
        run.output_header, run.rejected_header = chunks[0].output_header, chunks[0].rejected_header
        run.merged_key, run.merged_sha256 = merged.output_key, merged.output_sha256
        run.merged_rejected_key = merged.rejected_key
        run.merged_rejected_sha256 = merged.rejected_sha256
        if rows_in != merged.rows_out + merged.rows_rejected:
            self._fail(
                progress,
                f"rows not conserved: {rows_in} in, {merged.rows_out} out,"
                f" {merged.rows_rejected} rejected",
            )
            return
        spec = self._spec(progress)
        problem = _file_problem(spec, rows_in, chunks) if spec is not None else None
        if problem is not None:
            self._fail(progress, f"{run.input_key}: {problem}")
            return
        limit = (
            spec.max_rejected_fraction
            if spec is not None
            else self._pipeline(progress).max_rejected_fraction
        )
        if rows_in and merged.rows_rejected / rows_in > limit:
            self._fail(
                progress,
                f"{merged.rows_rejected} of {rows_in} rows rejected"
                f" ({merged.rows_rejected / rows_in:.1%}), above the tolerated"
                f" {limit:.1%} (pipeline.max_rejected_fraction); see `mrbatch errors"
                f" {run.input_key}`",
            )
            return
        self._transition(progress, RunStatus.MERGED)

    def _redo_chunks(self, progress: Progress, why: str) -> None:
        progress.attempts += 1
        log.warning("run %s: %s; recomputing its chunks", progress.run.run_id, why)
        for chunk in progress.chunks.values():
            chunk.status = ChunkStatus.PENDING
            if not self._save_chunk(progress, chunk):
                return


def _file_problem(spec: PipelineSpec, rows: int, chunks: list[ChunkRun]) -> str | None:
    """What the pipeline's file-level checks find wrong with a file of ``rows`` records."""
    checks = spec.file
    if checks.min_rows is not None and rows < checks.min_rows:
        return f"{rows} records, fewer than the {checks.min_rows} expected (file.min_rows)"
    if checks.max_rows is not None and rows > checks.max_rows:
        return f"{rows} records, more than the {checks.max_rows} allowed (file.max_rows)"
    column = checks.count_column
    if column is not None and rows:
        values = sorted({v for chunk in chunks for v in chunk.counts})
        if len(values) != 1:
            shown = ", ".join(repr(v) for v in values[:3])
            return f"the expected-count column {column!r} is not the same in every record ({shown})"
        if values[0].strip() != str(rows):
            return (
                f"the expected-count column {column!r} says {values[0]!r} but the file has"
                f" {rows} records"
            )
    return None
