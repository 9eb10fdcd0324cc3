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
from concurrent.futures import Future
from itertools import pairwise
from typing import Any

from ..access.splithint import SplitHint
from ..config.pipelines import format_for, split_quote
from ..errors import (
    ConflictError,
    MrbatchError,
    NotFoundError,
    UnavailableError,
)
from ..model.keys import (
    run_key,
)
from ..model.records import (
    RUN,
    Accepted,
    ChunkSpec,
    FileRun,
    RunStatus,
    run_pk,
)
from ..ports import (
    ObjectInfo,
    Routing,
)
from . import tasks
from .chunks import ChunkStage
from .driver import PERMANENT, Progress
from .failmail import FailureMailStage
from .pipelines import pins
from .publish import PublishStage

__all__ = ["Orchestrator"]

# Passes over the runs in one step at most: enough for CLAIMED -> ... -> PUBLISHED when no step
# waits for a task, few enough that a step never runs away.
_PASSES = 6

log = logging.getLogger("mrbatch.orchestrator")


class Orchestrator(ChunkStage, PublishStage, FailureMailStage):
    """Claims runs and advances each through its states; the chunk and publish stages are in
    :mod:`.chunks` and :mod:`.publish`, the failure mails in :mod:`.failmail`, the shared
    primitives in :mod:`.driver`."""

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
        self.runs[run.run_id] = Progress(run, version, config=self.config_ref)
        log.info("driving run %s (%s) from %s", run.run_id, run.input_key, run.status)

    def deactivate(self, why: str) -> None:
        """Stop driving runs (fenced, or the epoch moved); their records stay as they are."""
        if self.runs:
            log.warning("stopping %d run(s) in %s: %s", len(self.runs), self.region, why)
        for progress in self.runs.values():
            self._cancel(progress)
        self.runs.clear()
        self.failure_mails.clear()  # the active region sends them
        self.epoch = None

    def shutdown(self) -> None:
        self.deactivate("shutting down")
        self._mailer.shutdown(wait=False, cancel_futures=True)

    def futures(self) -> list[Future[Any]]:
        pending: list[Future[Any]] = []
        for progress in self.runs.values():
            pending.extend(f for f in (progress.future, progress.ref_future) if f is not None)
            if progress.merger is not None:
                pending.append(progress.merger.future)
            pending.extend(progress.chunk_futures.values())
        return pending

    def claim(self, accepted: Accepted, source: ObjectInfo, routing: Routing) -> FileRun | None:
        """Claim one accepted input version (``source``: its bytes in this region): a
        conditional insert keyed by key + content hash, so a duplicate notification, a second
        pass or identical bytes never start a second run."""
        now = self.clock()
        # A new run is driven with the configuration applied now (its Progress pins it).
        spec = self.config_ref.config.spec_for_key(accepted.key)
        pipeline_hash, code = pins(self.ws, spec)
        run = FileRun(
            run_id=accepted.run_id,
            input_key=accepted.key,
            input_sha256=accepted.sha256,
            input_version=source.version,
            input_size=source.size,
            source_key=source.key,
            cleanup=[run_key(accepted.run_id, "")],
            accepted_at=accepted.at,
            accepted_region=accepted.region,
            status=RunStatus.CLAIMED,
            region=self.region,
            epoch=routing.epoch,
            claimed_at=now,
            updated_at=now,
            chunk_rows=spec.chunk_rows,
            pipeline=spec.name,
            pipeline_hash=pipeline_hash,
            code_version=code,
            input_format=format_for(spec, accepted.key),
            webhook_url=spec.webhook.url if spec.webhook is not None else None,
            history=[
                {"status": "CLAIMED", "at": now, "region": self.region, "epoch": routing.epoch}
            ],
        )
        try:
            record = self.table.insert(run_pk(run.run_id), RUN, run.to_body(), epoch=routing.epoch)
        except ConflictError:
            return None
        self.runs[run.run_id] = Progress(
            run, record.version, config=self.config_ref, split_hint=accepted.split
        )
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

    def step(self, routing: Routing) -> None:
        """Advance every run as far as it can go without waiting: a run whose step needs no
        task (chunk records after SPLIT, the publish after MERGED, the mail after it) moves on
        in the same pass, not one poll interval later."""
        for _ in range(_PASSES):
            if not self._pass(routing):
                break
        if self.failure_mails:
            self._failure_mails()

    def _pass(self, routing: Routing) -> bool:
        """One pass over the runs; True when any of them changed status."""
        # The versions of one key are processed in acceptance order: the earliest unfinished
        # version of each key goes first, the later ones wait at CLAIMED.
        first: dict[str, tuple[float, str, str]] = {}
        for held in self.runs.values():
            key, order = held.run.input_key, held.run.order
            if key not in first or order < first[key]:
                first[key] = order
        moved = False
        for run_id in list(self.runs):
            progress = self.runs.get(run_id)
            if progress is None:
                continue
            if self.clock() < progress.retry_at:
                continue
            run = progress.run
            if run.status is RunStatus.CLAIMED and first[run.input_key] < run.order:
                continue
            before = run.status
            try:
                self._advance(progress, routing)
            except UnavailableError as exc:
                self._backoff(progress, f"dependency unavailable: {exc}", outage=True)
            except MrbatchError as exc:
                self._backoff(progress, str(exc))
            except Exception as exc:  # a bug must not kill the loop; the run is retried
                log.exception("run %s: unexpected error", run_id)
                self._backoff(progress, f"unexpected error: {exc!r}")
            moved |= progress.run.status is not before and not progress.run.status.terminal
        return moved

    def _advance(self, progress: Progress, routing: Routing) -> None:
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

    def _split(self, progress: Progress) -> None:
        run = progress.run
        spec = self._spec(progress)
        if spec is None:
            self._fail(
                progress,
                f"pipeline {run.pipeline!r} is no longer declared; declare it again, then"
                f" `mrbatch redrive {run.input_key}`",
            )
            return
        enrichment = spec.enrichment
        if (
            enrichment is not None
            and run.reference_version is None
            and not self._pin_reference(progress, enrichment.reference)
        ):
            return
        # Named as the cache is: the pipeline's enrichment and the version (each run reads its
        # own pinned copy of the reference, runs/<id>/reference…, whose version it is).
        digest, version = self._config(progress).digest, run.reference_version or ""
        prepared = (digest, spec.name, enrichment.reference if enrichment else "", version)
        if (
            enrichment is not None
            and progress.ref_future is None
            and run.reference_key
            and prepared not in self.references_prepared
        ):
            progress.ref_future = self.executor.submit(
                tasks.reference_task,
                self._config(progress),
                self.region,
                run.reference_key,
                run.reference_version,
                run.pipeline,
                run.input_key,
            )
            self.stats["reference_preparations"] += 1
            progress.ref_future.add_done_callback(
                lambda done: self._remember_prepared(done, prepared)
            )
        hint, progress.split_hint = progress.split_hint, None  # used once, if at all
        if progress.future is None and hint is not None:
            found = hinted_split(hint, run, split_quote(spec, run.input_format))
            if found is not None:
                progress.future = Future()
                progress.future.set_result(found)  # handled below as a split task's result
        if progress.future is None:
            source_key, source_version = run.source()
            progress.future = self.executor.submit(
                tasks.split_task,
                self._config(progress),
                self.region,
                source_key,
                source_version,
                run.input_size,
                run.chunk_rows,
                run.input_key,
                run.pipeline,
                run.input_format,
                (run.pipeline_hash, run.code_version),
            )
            return
        if not progress.future.done():
            return
        future, progress.future = progress.future, None
        try:
            split: tasks.SplitResult = future.result()
        except PERMANENT as exc:
            self._fail(progress, str(exc))
            return
        except NotFoundError:
            self._fail(
                progress,
                f"input {run.input_key} (sha256 {run.input_sha256[:12]}) is not in"
                f" {self.region}'s bucket any more",
            )
            return
        except UnavailableError as exc:
            self._backoff(progress, f"SPLIT waits for {exc}", outage=True)
            return
        except Exception as exc:
            if isinstance(exc, self.executor.lost_worker_errors):
                self._backoff(progress, "a worker died during SPLIT", outage=True)
                return
            if progress.attempts + 1 >= self._pipeline(progress).chunk_attempts:
                self._fail(progress, f"SPLIT failed {progress.attempts + 1} times: {exc}")
            else:
                self._backoff(progress, f"SPLIT failed: {exc}")
            return
        run.header, run.chunks = split.header, split.chunks
        if run.redriven:
            # Split afresh in a later round: chunk records of an earlier round are not trusted.
            run.redo_chunks = [spec.index for spec in split.chunks]
        note = f"{len(split.chunks)} chunk(s)" + (", found by the upload" if hint else "")
        if self._transition(progress, RunStatus.SPLIT, note=note):
            self.stats["files_split"] += 1
            self.faults.crash_point("after-split", self.region)

    def _remember_prepared(self, done: Future[Any], prepared: tuple[str, str, str, str]) -> None:
        """(On the executor's thread.) A reference task that succeeded prepared that cache."""
        if not done.cancelled() and done.exception() is None:
            self.references_prepared.add(prepared)

    def _pin_reference(self, progress: Progress, reference: str) -> bool:
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


def hinted_split(body: dict[str, Any], run: FileRun, quote: str | None) -> tasks.SplitResult | None:
    """The chunks the upload found (access.splithint), if they were found with this run's
    settings and cover exactly its input; None sends the run to a split task. The chunk tasks
    still verify every chunk's checksum, and chunk 0's checks the header."""
    hint = SplitHint.from_body(body)
    if hint is None:
        return None
    wanted = (run.chunk_rows, run.input_format, quote, run.input_size)
    if (hint.chunk_rows, hint.input_format, hint.quote, hint.size) != wanted:
        return None
    try:
        specs = [ChunkSpec(*c) for c in hint.chunks]
    except TypeError:
        return None
    # Chunks 0, 1, 2… each starting where the one before ends, the last at the end of the input.
    numbered = bool(specs) and [s.index for s in specs] == list(range(len(specs)))
    contiguous = all(a.end == b.start for a, b in pairwise(specs))
    if not (numbered and contiguous and specs[-1].end == hint.size):
        return None
    return tasks.SplitResult(header=hint.header, chunks=specs)
