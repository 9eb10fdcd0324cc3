"""Drives each FileRun through its states, durably.

Every step follows one rule: read the recorded outcome first; otherwise run the step, then record
its outcome with a conditional write (the run's version and epoch) before the next step starts.
A crash at any point therefore resumes at the first unrecorded step, and because every step's
effect is idempotent (deterministic objects, conditional records, one mail file per message id)
repeating it never doubles anything.

``CLAIMED`` -> SPLIT task (and reference preparation) -> ``SPLIT`` -> chunk records ->
``PROCESSING`` -> chunk tasks, retried with backoff -> MERGE task -> ``MERGED`` -> fenced
publish -> ``PUBLISHED`` -> fenced notify -> ``COMPLETED``; or ``FAILED`` with a reason.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from . import tasks
from .errors import (
    ConflictError,
    InputError,
    MrbatchError,
    NotFoundError,
    ReferenceDataError,
    UnavailableError,
)
from .faults import FaultPoints
from .keys import (
    output_key_for,
    rejected_key_for,
    run_key,
    version_output_key,
    version_rejected_key,
)
from .links import presign
from .merge import MergeInput, MergeResult, StreamingMerge
from .ports import (
    ControlPlane,
    Executor,
    Mail,
    Notifier,
    ObjectInfo,
    ObjectStore,
    Routing,
    StateTable,
)
from .reconcile import present
from .records import (
    CHUNK,
    RUN,
    Accepted,
    ChunkRun,
    ChunkStatus,
    FileRun,
    RunStatus,
    chunk_pk,
    run_pk,
)
from .workspace import Workspace

__all__ = ["Orchestrator"]

log = logging.getLogger("mrbatch.orchestrator")

# A worker killed under a task is the machine's fault, not the chunk's: allow more of those.
_MAX_WORKER_LOSSES = 10
# Longest wait between two tries of a chunk whose dependency (bucket, state) is unavailable.
_OUTAGE_POLL = 2.0
# Errors that are facts about the input or the rules: retrying cannot help.
_PERMANENT = (InputError, ReferenceDataError)


@dataclass
class _Progress:
    """What this process knows about one run it drives (the record is the truth)."""

    run: FileRun
    version: int
    future: Future[Any] | None = None
    ref_future: Future[Any] | None = None
    chunks: dict[int, ChunkRun] = field(default_factory=dict)
    chunk_versions: dict[int, int] = field(default_factory=dict)
    chunk_futures: dict[int, Future[Any]] = field(default_factory=dict)
    chunk_retry_at: dict[int, float] = field(default_factory=dict)
    worker_losses: int = 0
    outages: dict[int, int] = field(default_factory=dict)  # chunk -> unavailable failures
    # The pool break last counted: one killed worker fails every queued future of the pool
    # with the same exception, and that is one loss, not one per chunk.
    last_pool_break: BaseException | None = None
    attempts: int = 0
    retry_at: float = 0.0
    merger: StreamingMerge | None = None


class Orchestrator:
    def __init__(
        self,
        ws: Workspace,
        region: str,
        *,
        store: ObjectStore,
        table: StateTable,
        control: ControlPlane,
        notifier: Notifier,
        executor: Executor,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ws = ws
        self.region = region
        self.store = store
        self.table = table
        self.control = control
        self.notifier = notifier
        self.executor = executor
        self.clock = clock
        self.config_path = str(ws.config_path)
        self.pipeline = ws.config.pipeline
        self.runs: dict[str, _Progress] = {}
        self.epoch: int | None = None
        self.stats: Counter[str] = Counter()
        self._mailer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="notify")
        # Named crash points (armed by tests) sit in the windows between an effect and its record.
        self.faults = FaultPoints(ws.faults_path)

    # ------------------------------------------------------------------ lifecycle
    def activate(self, routing: Routing) -> None:
        """Start driving runs in ``routing``'s epoch; the region hands them over with ``adopt``.
        Runs of an earlier epoch are dropped: they are taken over afresh under the new one."""
        if self.epoch is not None and self.epoch != routing.epoch:
            self.deactivate(f"epoch moved to {routing.epoch}")
        self.epoch = routing.epoch

    def adopt(self, run: FileRun, version: int) -> None:
        """Drive ``run`` (owned by this region in the current epoch) from its recorded status."""
        if run.run_id in self.runs or run.status.terminal:
            return
        self.runs[run.run_id] = _Progress(run, version)
        log.info("driving run %s (%s) from %s", run.run_id, run.input_key, run.status)

    def deactivate(self, why: str) -> None:
        """Stop driving runs (fenced, or the epoch moved); their records stay as they are."""
        if self.runs:
            log.warning("stopping %d run(s) in %s: %s", len(self.runs), self.region, why)
        for progress in self.runs.values():
            self._cancel(progress)
        self.runs.clear()
        self.epoch = None

    def shutdown(self) -> None:
        self.deactivate("shutting down")
        self._mailer.shutdown(wait=False, cancel_futures=True)

    def mail_retrying(self) -> list[dict[str, Any]]:
        """Runs whose completion mail failed and is being retried (shown by `mrbatch status`)."""
        return [
            {
                "run_id": p.run.run_id,
                "input_key": p.run.input_key,
                "attempts": p.run.mail_attempts,
                "error": p.run.mail_error,
            }
            for p in self.runs.values()
            if p.run.status is RunStatus.PUBLISHED and p.run.mail_error
        ]

    def futures(self) -> list[Future[Any]]:
        pending: list[Future[Any]] = []
        for progress in self.runs.values():
            pending.extend(f for f in (progress.future, progress.ref_future) if f is not None)
            if progress.merger is not None:
                pending.append(progress.merger.future)
            pending.extend(progress.chunk_futures.values())
        return pending

    @staticmethod
    def _cancel(progress: _Progress) -> None:
        for future in (progress.future, progress.ref_future, *progress.chunk_futures.values()):
            if future is not None:
                future.cancel()
        if progress.merger is not None:
            progress.merger.abort("the run stopped here")
            progress.merger = None

    # ------------------------------------------------------------------ claiming
    def claim(self, accepted: Accepted, source: ObjectInfo, routing: Routing) -> FileRun | None:
        """Claim one accepted input version (``source``: its bytes in this region): a
        conditional insert keyed by key + content hash, so a duplicate notification, a second
        pass or identical bytes never start a second run."""
        now = self.clock()
        run = FileRun(
            run_id=accepted.run_id,
            input_key=accepted.key,
            input_sha256=accepted.sha256,
            input_version=source.version,
            input_size=source.size,
            source_key=source.key,
            accepted_at=accepted.at,
            accepted_region=accepted.region,
            status=RunStatus.CLAIMED,
            region=self.region,
            epoch=routing.epoch,
            claimed_at=now,
            updated_at=now,
            chunk_rows=self.pipeline.chunk_rows,
            history=[
                {"status": "CLAIMED", "at": now, "region": self.region, "epoch": routing.epoch}
            ],
        )
        try:
            record = self.table.insert(run_pk(run.run_id), RUN, run.to_body(), epoch=routing.epoch)
        except ConflictError:
            return None
        self.runs[run.run_id] = _Progress(run, record.version)
        self.stats["executions_started"] += 1
        self.faults.crash_point("after-claim", self.region)
        log.info(
            "claimed %s (sha256 %s, accepted by %s) as run %s",
            accepted.key,
            accepted.sha256[:12],
            accepted.region,
            run.run_id,
        )
        return run

    # ------------------------------------------------------------------ driving
    def step(self, routing: Routing) -> None:
        """Advance every run as far as it can go without waiting."""
        # The versions of one key are processed in acceptance order: the earliest unfinished
        # version of each key goes first, the later ones wait at CLAIMED.
        first: dict[str, tuple[float, str, str]] = {}
        for held in self.runs.values():
            key, order = held.run.input_key, held.run.order
            if key not in first or order < first[key]:
                first[key] = order
        for run_id in list(self.runs):
            progress = self.runs.get(run_id)
            if progress is None:
                continue
            if self.clock() < progress.retry_at:
                continue
            run = progress.run
            if run.status is RunStatus.CLAIMED and first[run.input_key] < run.order:
                continue
            try:
                self._advance(progress, routing)
            except UnavailableError as exc:
                self._backoff(progress, f"dependency unavailable: {exc}")
            except MrbatchError as exc:
                self._backoff(progress, str(exc))
            except Exception as exc:  # a bug must not kill the loop; the run is retried
                log.exception("run %s: unexpected error", run_id)
                self._backoff(progress, f"unexpected error: {exc!r}")

    def _backoff(self, progress: _Progress, why: str) -> None:
        progress.attempts += 1
        delay = min(30.0, self.pipeline.retry_backoff * 2 ** min(progress.attempts, 6))
        progress.retry_at = self.clock() + delay * random.uniform(0.5, 1.5)
        log.warning("run %s: %s; retrying in %.1fs", progress.run.run_id, why, delay)

    def _advance(self, progress: _Progress, routing: Routing) -> None:
        status = progress.run.status
        if status is RunStatus.CLAIMED:
            self._split(progress)
        elif status is RunStatus.SPLIT:
            self._create_chunks(progress)
        elif status is RunStatus.PROCESSING:
            self._process(progress)
        elif status is RunStatus.MERGED:
            self._publish(progress, routing)
        elif status is RunStatus.PUBLISHED:
            self._notify(progress, routing)
        if progress.run.status.terminal:
            self.runs.pop(progress.run.run_id, None)

    # ------------------------------------------------------------------ records
    def _save(self, progress: _Progress) -> bool:
        try:
            record = self.table.update(
                run_pk(progress.run.run_id),
                progress.run.to_body(),
                expected_version=progress.version,
                epoch=progress.run.epoch,
            )
        except (ConflictError, NotFoundError) as exc:
            # Someone else (a takeover after failover, a redrive) owns the run now.
            log.warning(
                "run %s: record changed under us (%s); letting go", progress.run.run_id, exc
            )
            self._cancel(progress)
            self.runs.pop(progress.run.run_id, None)
            return False
        progress.version = record.version
        progress.attempts = 0
        return True

    def _transition(self, progress: _Progress, status: RunStatus, note: str = "") -> bool:
        run = progress.run
        run.advance(status, region=self.region, epoch=run.epoch, note=note)
        return self._save(progress)

    def _fail(self, progress: _Progress, reason: str) -> None:
        progress.run.reason = reason
        if self._transition(progress, RunStatus.FAILED, note=reason):
            self.stats["executions_failed"] += 1
            log.error("run %s (%s) FAILED: %s", progress.run.run_id, progress.run.input_key, reason)
        self._cancel(progress)
        self.runs.pop(progress.run.run_id, None)

    # ------------------------------------------------------------------ CLAIMED -> SPLIT
    def _split(self, progress: _Progress) -> None:
        run = progress.run
        enrichment = self.pipeline.enrichment
        if (
            enrichment is not None
            and run.reference_version is None
            and not self._pin_reference(progress, enrichment.reference)
        ):
            return
        if enrichment is not None and progress.ref_future is None and run.reference_key:
            progress.ref_future = self.executor.submit(
                tasks.reference_task,
                self.config_path,
                self.region,
                run.reference_key,
                run.reference_version,
            )
        if progress.future is None:
            source_key, source_version = run.source()
            progress.future = self.executor.submit(
                tasks.split_task,
                self.config_path,
                self.region,
                source_key,
                source_version,
                run.input_size,
                run.chunk_rows,
                run.input_key,
            )
            return
        if not progress.future.done():
            return
        future, progress.future = progress.future, None
        try:
            split: tasks.SplitResult = future.result()
        except _PERMANENT as exc:
            self._fail(progress, str(exc))
            return
        except NotFoundError:
            self._fail(
                progress,
                f"input {run.input_key} (sha256 {run.input_sha256[:12]}) is not in"
                f" {self.region}'s bucket any more",
            )
            return
        except BrokenProcessPool:
            self._backoff(progress, "a worker died during SPLIT")
            return
        except Exception as exc:
            if progress.attempts + 1 >= self.pipeline.chunk_attempts:
                self._fail(progress, f"SPLIT failed {progress.attempts + 1} times: {exc}")
            else:
                self._backoff(progress, f"SPLIT failed: {exc}")
            return
        run.header, run.chunks = split.header, split.chunks
        if self._transition(progress, RunStatus.SPLIT, note=f"{len(split.chunks)} chunk(s)"):
            self.stats["files_split"] += 1
            self.faults.crash_point("after-split", self.region)

    def _pin_reference(self, progress: _Progress, reference: str) -> bool:
        """Record which reference version this run uses (a snapshot under runs/<id>/), so a
        re-drive after failover uses the same data even if a newer one was uploaded."""
        run = progress.run
        info = self.store.head(reference)
        if info is None:
            self._fail(
                progress,
                f"reference data {reference} is missing in region {self.region}; upload it"
                f" with `mrbatch put FILE --key {reference}`",
            )
            return False
        snapshot = self.store.copy(
            reference,
            run_key(run.run_id, "reference.csv"),
            version=info.version,
            epoch=run.epoch,
        )
        run.reference_key = snapshot.key
        run.reference_sha256 = snapshot.sha256
        run.reference_version = snapshot.version
        return self._save(progress)

    # ------------------------------------------------------------------ SPLIT -> PROCESSING
    def _create_chunks(self, progress: _Progress) -> None:
        run = progress.run
        for spec in run.chunks:
            chunk = ChunkRun(run_id=run.run_id, index=spec.index, region=self.region)
            try:
                self.table.insert(
                    chunk_pk(run.run_id, spec.index), CHUNK, chunk.to_body(), epoch=run.epoch
                )
            except ConflictError:
                pass  # created before a crash: the record is the truth
        self._transition(progress, RunStatus.PROCESSING)

    def _load_chunks(self, progress: _Progress) -> None:
        run = progress.run
        for record in self.table.scan(CHUNK, prefix=f"chunk/{run.run_id}/"):
            chunk = ChunkRun.from_record(record)
            progress.chunks[chunk.index] = chunk
            progress.chunk_versions[chunk.index] = record.version
        missing = {spec.index for spec in run.chunks} - set(progress.chunks)
        if missing:
            raise ConflictError(f"run {run.run_id}: chunk records missing: {sorted(missing)}")

    def _still_ours(self, progress: _Progress) -> bool:
        """Is the run record exactly as we last wrote it? Then nobody took the run over."""
        record = self.table.get(run_pk(progress.run.run_id))
        return record is not None and record.version == progress.version

    def _save_chunk(self, progress: _Progress, chunk: ChunkRun, *, again: bool = True) -> bool:
        pk = chunk_pk(chunk.run_id, chunk.index)
        try:
            record = self.table.update(
                pk,
                chunk.to_body(),
                expected_version=progress.chunk_versions[chunk.index],
                epoch=progress.run.epoch,
            )
        except (ConflictError, NotFoundError) as exc:
            fresh = self.table.get(pk)
            if again and fresh is not None and self._still_ours(progress):
                # A taker that read the run before we took it over reset this chunk and then
                # lost the conditional write of the run: the run is still ours, so our result
                # stands (letting go would leave the run with no driver at all).
                log.info(
                    "run %s chunk %d: %s; the run is still ours", chunk.run_id, chunk.index, exc
                )
                progress.chunk_versions[chunk.index] = fresh.version
                return self._save_chunk(progress, chunk, again=False)
            log.warning(
                "run %s chunk %d: record changed under us (%s)", chunk.run_id, chunk.index, exc
            )
            self._cancel(progress)
            self.runs.pop(chunk.run_id, None)
            return False
        progress.chunk_versions[chunk.index] = record.version
        return True

    # ------------------------------------------------------------------ PROCESSING -> MERGED
    def _process(self, progress: _Progress) -> None:
        run = progress.run
        if not progress.chunks:
            self._load_chunks(progress)
        if progress.ref_future is not None and progress.ref_future.done():
            ref_future, progress.ref_future = progress.ref_future, None
            try:
                ref_future.result()
            except ReferenceDataError as exc:
                self._fail(progress, self._reference_reason(exc))
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
                        self.config_path,
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

    def _reference_reason(self, exc: ReferenceDataError) -> str:
        enrichment = self.pipeline.enrichment
        key = enrichment.reference if enrichment else "the reference data"
        return (
            f"{exc}; upload corrected reference data with `mrbatch put FILE --key {key}`,"
            " then `mrbatch redrive` this input"
        )

    def _chunk_finished(self, progress: _Progress, chunk: ChunkRun, future: Future[Any]) -> bool:
        """Record one chunk task's outcome; False when the run stopped (failed or let go)."""
        try:
            result: tasks.ChunkResult = future.result()
            progress.outages.pop(chunk.index, None)
        except _PERMANENT as exc:
            self.stats["chunk_executions_failed"] += 1
            reason = (
                self._reference_reason(exc) if isinstance(exc, ReferenceDataError) else str(exc)
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
            delay = min(_OUTAGE_POLL, self.pipeline.retry_backoff * 2 ** min(waits - 1, 6))
            progress.chunk_retry_at[chunk.index] = self.clock() + delay * random.uniform(0.5, 1.5)
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
            lost_worker = isinstance(exc, BrokenProcessPool)
            if lost_worker:
                if exc is not progress.last_pool_break:
                    progress.last_pool_break = exc
                    progress.worker_losses += 1
            else:
                chunk.attempts += 1
            chunk.last_error = f"{type(exc).__name__}: {exc}"
            exhausted = (
                chunk.attempts >= self.pipeline.chunk_attempts
                or progress.worker_losses >= _MAX_WORKER_LOSSES
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
            tries = chunk.attempts + progress.worker_losses
            delay = min(30.0, self.pipeline.retry_backoff * 2 ** min(tries - 1, 6))
            progress.chunk_retry_at[chunk.index] = self.clock() + delay * random.uniform(0.5, 1.5)
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
        chunk.region = self.region
        return self._save_chunk(progress, chunk)

    def _feed_merge(self, progress: _Progress) -> None:
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

    def _merged(self, progress: _Progress) -> None:
        run = progress.run
        chunks = [progress.chunks[i] for i in sorted(progress.chunks)]
        assert progress.merger is not None
        future = progress.merger.future
        progress.merger = None
        try:
            merged: MergeResult = future.result()
        except (ConflictError, NotFoundError) as exc:
            # A chunk output is missing or does not match its record: recompute, bounded.
            if progress.attempts + 1 >= self.pipeline.chunk_attempts:
                self._fail(progress, f"MERGE failed: {exc}")
            else:
                self._redo_chunks(progress, str(exc))
            return
        except Exception as exc:
            if progress.attempts + 1 >= self.pipeline.chunk_attempts:
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
        limit = self.pipeline.max_rejected_fraction
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

    def _redo_chunks(self, progress: _Progress, why: str) -> None:
        progress.attempts += 1
        log.warning("run %s: %s; recomputing its chunks", progress.run.run_id, why)
        for chunk in progress.chunks.values():
            chunk.status = ChunkStatus.PENDING
            if not self._save_chunk(progress, chunk):
                return

    # ------------------------------------------------------------------ MERGED -> PUBLISHED
    def _confirm(self, progress: _Progress, what: str) -> bool:
        run = progress.run
        if self.control.confirm(self.region, run.epoch):
            return True
        log.warning(
            "run %s: %s refused: %s cannot confirm it is ACTIVE in epoch %d; publishing nothing",
            run.run_id,
            what,
            self.region,
            run.epoch,
        )
        self.stats["fenced_refusals"] += 1
        self._cancel(progress)
        self.runs.pop(run.run_id, None)
        return False

    def _publish(self, progress: _Progress, routing: Routing) -> None:
        """The version's own results first (versions/<run-id>/...), then output/<p> and
        rejected/<p>, unless a version accepted after this one is already published there."""
        run = progress.run
        if not self._confirm(progress, "publish"):
            return
        meta = _published_meta(run)
        assert run.merged_key and run.merged_rejected_key
        result = self.store.copy(
            run.merged_key,
            version_output_key(run.run_id, run.input_key),
            version=run.merged_sha256,
            meta=meta,
            epoch=run.epoch,
        )
        result_rejected = self.store.copy(
            run.merged_rejected_key,
            version_rejected_key(run.run_id, run.input_key),
            version=run.merged_rejected_sha256,
            meta=meta,
            epoch=run.epoch,
        )
        newer = _newer_shown(self.store.head(output_key_for(run.input_key)), run)
        if newer is None:
            self._publish_latest(run, run.epoch)
        else:
            log.info(
                "run %s: %s keeps run %s's result (a version accepted later); this version's"
                " result is at %s",
                run.run_id,
                output_key_for(run.input_key),
                newer,
                result.key,
            )
        self.faults.crash_point("after-publish-copy", self.region)
        run.output_key, run.output_sha256 = output_key_for(run.input_key), result.sha256
        run.rejected_key = rejected_key_for(run.input_key)
        run.result_key, run.result_rejected_key = result.key, result_rejected.key
        self._transition(progress, RunStatus.PUBLISHED)

    def _publish_latest(self, run: FileRun, epoch: int) -> None:
        """Copy ``run``'s results to output/<p> and rejected/<p> (fenced by the caller)."""
        meta = _published_meta(run)
        self.store.copy(
            run.merged_key or "",
            output_key_for(run.input_key),
            version=run.merged_sha256,
            meta=meta,
            epoch=epoch,
        )
        self.store.copy(
            run.merged_rejected_key or "",
            rejected_key_for(run.input_key),
            version=run.merged_rejected_sha256,
            meta=meta,
            epoch=epoch,
        )

    def show_newest(self, run: FileRun, routing: Routing) -> bool:
        """Make output/<p> show ``run``'s result if it shows an older version's (or nothing):
        the repair for a newer version published elsewhere whose copy of output/<p> lost to
        an older version's written in a later epoch. False when ``run``'s result has not
        arrived here yet (try again later); True when done or nothing to do."""
        if run.result_key is None or run.merged_sha256 is None:
            return True
        shown = self.store.head(output_key_for(run.input_key))
        if shown is not None and _newer_shown(shown, run) is not None:
            return True
        if shown is not None and shown.meta.get("run_id") == run.run_id:
            return True
        if not (
            present(self.store, run.result_key) and present(self.store, run.result_rejected_key)
        ):
            return False
        if not self.control.confirm(self.region, routing.epoch):
            return True  # not ours to write; the active region will
        result = self.store.head(run.result_key)
        rejected = self.store.head(run.result_rejected_key or "")
        assert result is not None and rejected is not None
        meta = _published_meta(run)
        self.store.copy(
            result.key,
            output_key_for(run.input_key),
            version=result.version,
            meta=meta,
            epoch=routing.epoch,
        )
        self.store.copy(
            rejected.key,
            rejected_key_for(run.input_key),
            version=rejected.version,
            meta=meta,
            epoch=routing.epoch,
        )
        log.info(
            "%s shows run %s's result again (the newest accepted version)",
            output_key_for(run.input_key),
            run.run_id,
        )
        return True

    # ------------------------------------------------------------------ PUBLISHED -> COMPLETED
    def mail_for(self, run: FileRun) -> Mail:
        notify = self.ws.config.notify
        assert run.output_key
        result_key = run.result_key or run.output_key
        link = presign(
            self.ws.signing_key,
            self.ws.gateway_url,
            result_key,
            expires_in=self.ws.config.gateway.link_expiry,
            now=self.clock(),
        )
        minutes = int(self.ws.config.gateway.link_expiry // 60)
        body = (
            f"mrbatch processed {run.input_key}.\n\n"
            f"Rows in:       {run.rows_in}\n"
            f"Rows out:      {run.rows_out}\n"
            f"Rows rejected: {run.rows_rejected}\n\n"
            f"Download this version's output within {minutes} minutes:\n{link}\n\n"
            f"It is kept at {result_key}; {run.output_key} shows the newest accepted"
            f" version of {run.input_key}.\n"
            f"Rejected rows: {run.result_rejected_key or run.rejected_key}"
            f" (`mrbatch errors {run.run_id}`)\n"
            f"Run {run.run_id}, processed in {run.region} (epoch {run.epoch}).\n"
        )
        return Mail(
            message_id=f"<{run.run_id}@mrbatch>",
            sender=notify.sender,
            to=tuple(notify.to),
            subject=f"mrbatch: {run.input_key} processed ({run.rows_out} rows,"
            f" {run.rows_rejected} rejected)",
            body=body,
        )

    def _notify(self, progress: _Progress, routing: Routing) -> None:
        run = progress.run
        if progress.future is None:
            if not self._confirm(progress, "notify"):
                return
            mail = self.mail_for(run)
            run.mail_id = mail.message_id
            progress.future = self._mailer.submit(self.notifier.send, mail)
            return
        if not progress.future.done():
            return
        future, progress.future = progress.future, None
        try:
            future.result()
        except Exception as exc:
            run.mail_attempts += 1
            run.mail_error = str(exc)
            attempts = self.ws.config.notify.attempts
            if run.mail_attempts >= attempts:
                run.reason = (
                    f"the output is published at {run.output_key}, but the completion mail"
                    f" could not be sent after {attempts} attempts: {exc}; fix the mail"
                    f" server, then `mrbatch redrive {run.input_key}`"
                )
                self._fail(progress, run.reason)
                return
            if self._save(progress):  # the error shows in status while we retry
                delay = min(60.0, self.ws.config.notify.retry_backoff * 2**run.mail_attempts)
                progress.retry_at = self.clock() + delay * random.uniform(0.5, 1.5)
                log.warning("run %s: mail not sent (%s); retry in %.1fs", run.run_id, exc, delay)
            return
        self.faults.crash_point("after-mail-sent", self.region)
        run.mail_sent_at = self.clock()
        run.mail_error = None
        if self._transition(progress, RunStatus.COMPLETED):
            self.stats["executions_succeeded"] += 1
            self.stats["files_processed"] += 1
            self.stats["rows_processed"] += run.rows_in or 0
            self.stats["rows_rejected"] += run.rows_rejected or 0
            log.info(
                "run %s (%s) COMPLETED: %s rows out, %s rejected",
                run.run_id,
                run.input_key,
                run.rows_out,
                run.rows_rejected,
            )


def _published_meta(run: FileRun) -> dict[str, str]:
    """What a published object says about the version it holds (and where it stands in the
    acceptance order of its key)."""
    return {
        "run_id": run.run_id,
        "input_sha256": run.input_sha256,
        "accepted_at": repr(run.accepted_at),
        "accepted_region": run.accepted_region,
    }


def _newer_shown(shown: ObjectInfo | None, run: FileRun) -> str | None:
    """The run id of the version ``shown`` (output/<p>) holds, if it was accepted after
    ``run``'s version; None when ``run`` may replace it."""
    if shown is None or shown.meta.get("run_id") == run.run_id:
        return None
    try:
        at = float(shown.meta.get("accepted_at", "0"))
    except ValueError:
        at = 0.0
    order = (at, shown.meta.get("accepted_region", ""), shown.meta.get("run_id", ""))
    return order[2] if order > run.order else None
