"""The base every stage of the orchestrator builds on: what one region process knows about each
run it drives (``Progress``), and the few primitives every stage uses — the conditional write of
the run's record, failing a run with a reason, backing off, and the fencing check made before
every publish and every mail.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..config.pipelines import PipelineConfig, PipelineSpec
from ..config.reload import ConfigRef, fingerprint
from ..config.workspace import Workspace
from ..errors import (
    ConflictError,
    InputError,
    NotFoundError,
    ReferenceDataError,
    UnavailableError,
    UserCodeError,
)
from ..faults import FaultPoints
from ..model.records import (
    ChunkRun,
    FileRun,
    RunStatus,
    failure_message_id,
    run_pk,
)
from ..observe.tracing import trace_run
from ..ports import (
    ControlPlane,
    Executor,
    Notifier,
    ObjectStore,
    StateTable,
)
from ..retry import Backoff
from .merge import StreamingMerge

__all__ = [
    "MAX_WORKER_LOSSES",
    "OUTAGE_POLL",
    "PERMANENT",
    "Progress",
    "RunDriver",
]

log = logging.getLogger("mrbatch.orchestrator")


# A worker killed under a task is the machine's fault, not the chunk's: allow more of those.
MAX_WORKER_LOSSES = 10
# Longest wait between two tries of a chunk whose dependency (bucket, state) is unavailable.
OUTAGE_POLL = 2.0
# How soon a run asks again when the control plane could not confirm yet (not a refusal).
CONFIRM_POLL = 0.2
# Errors that are facts about the input or the rules: retrying cannot help.
PERMANENT = (InputError, ReferenceDataError, UserCodeError)


@dataclass
class Progress:
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
    waits: int = 0  # retries because a dependency was unavailable (not the step's fault)
    retry_at: float = 0.0
    merger: StreamingMerge | None = None
    confirm_waiting: bool = False  # the control plane could not confirm yet (logged once)
    # The configuration this run is driven with (pinned when the driving starts here): an
    # edit of mrbatch.toml applies to new runs and redrives, never to half of a run's chunks.
    config: ConfigRef | None = None
    # The chunks the upload found (Accepted.split), used by SPLIT if the settings agree.
    split_hint: dict[str, Any] | None = None


class RunDriver:
    """State and primitives shared by the stages (see :class:`~.orchestrator.Orchestrator`)."""

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
        rng: random.Random | None = None,
        config: ConfigRef | None = None,
    ) -> None:
        self.region = region
        self.store = store
        self.table = table
        self.control = control
        self.notifier = notifier
        self.executor = executor
        self.clock = clock
        self._rng = rng or random.Random()
        self.reconfigure(ws, config or ConfigRef(str(ws.config_path), fingerprint(ws), ws.config))
        self.runs: dict[str, Progress] = {}
        # FAILED runs whose owners are being told (best effort, recorded on the run).
        self.failure_mails: dict[str, Any] = {}
        self.epoch: int | None = None
        self.stats: Counter[str] = Counter()
        # Reference versions a worker has prepared here: (configuration digest, pipeline, its
        # reference's key, version), which name its cache. The chunk tasks prepare a missing cache
        # themselves; the reference task only runs ahead of them (and reports a bad reference
        # early), so after one succeeded the runs of that version do without (with many small
        # files it was one task of every three).
        self.references_prepared: set[tuple[str, str, str, str]] = set()
        self._mailer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="notify")
        # Named crash points (armed by tests) sit in the windows between an effect and its record.
        self.faults = FaultPoints(ws.faults_path)

    def reconfigure(self, ws: Workspace, config: ConfigRef) -> None:
        """Use ``config`` from now on: for the runs that start (or are re-driven) afterwards,
        mail, links and retries. Runs in flight keep the configuration they started with."""
        self.ws = ws
        self.config_ref = config
        self.pipeline = ws.config.pipeline
        pause = self.pipeline.retry_backoff
        # A run's step that failed, a chunk that failed, a chunk whose bucket or state is down
        # (polled briefly: the run resumes soon after the dependency), a mail not sent.
        self.run_backoff = Backoff(base=2 * pause, cap=30.0, rng=self._rng)
        self.chunk_backoff = Backoff(base=pause, cap=30.0, rng=self._rng)
        self.outage_backoff = Backoff(base=pause, cap=OUTAGE_POLL, rng=self._rng)
        self.mail_backoff = Backoff(
            base=2 * ws.config.notify.retry_backoff, cap=60.0, rng=self._rng
        )

    def _config(self, progress: Progress) -> ConfigRef:
        """The configuration ``progress``'s run is driven with."""
        if progress.config is None:
            progress.config = self.config_ref
        return progress.config

    def _pipeline(self, progress: Progress) -> PipelineConfig:
        """The ``[pipeline]`` section of the configuration the run is driven with (retries,
        backoff and the defaults of declared pipelines)."""
        return self._config(progress).config.pipeline

    def _spec(self, progress: Progress) -> PipelineSpec | None:
        """The pipeline the run pinned, as the configuration it is driven with declares it
        (None when that configuration no longer declares it)."""
        run = progress.run
        return self._config(progress).config.spec_for_run(run.pipeline, run.input_key)

    @staticmethod
    def _cancel(progress: Progress) -> None:
        for future in (progress.future, progress.ref_future, *progress.chunk_futures.values()):
            if future is not None:
                future.cancel()
        if progress.merger is not None:
            progress.merger.abort("the run stopped here")
            progress.merger = None

    def _backoff(self, progress: Progress, why: str, *, outage: bool = False) -> None:
        """Try the run's step again later. An ``outage`` (a bucket, state table or worker that
        is gone for a while) is not the step's fault: it does not use up the step's attempts,
        and is polled briefly so the run resumes soon after the dependency comes back."""
        if outage:
            progress.waits += 1
            progress.retry_at = self.outage_backoff.next_at(progress.waits, self.clock())
        else:
            progress.attempts += 1
            progress.retry_at = self.run_backoff.next_at(progress.attempts, self.clock())
        delay = progress.retry_at - self.clock()
        log.warning("run %s: %s; retrying in %.1fs", progress.run.run_id, why, delay)

    def _save(self, progress: Progress) -> bool:
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
        progress.attempts = progress.waits = 0
        return True

    def _transition(self, progress: Progress, status: RunStatus, note: str = "") -> bool:
        run = progress.run
        run.advance(status, region=self.region, epoch=run.epoch, note=note)
        saved = self._save(progress)
        if saved and status.terminal:
            trace_run(self.ws, run, progress.chunks.values())  # a no-op unless configured
        return saved

    def _fail(self, progress: Progress, reason: str) -> None:
        run = progress.run
        run.reason = reason
        # Its owners are told too, in a mail of its own (recorded on the run, best effort).
        run.failure_mail = {
            "message_id": failure_message_id(run.run_id, run.redriven),
            "round": run.redriven,
            "attempts": 0,
            "sent_at": None,
            "error": None,
        }
        if self._transition(progress, RunStatus.FAILED, note=reason):
            self.stats["executions_failed"] += 1
            log.error("run %s (%s) FAILED: %s", run.run_id, run.input_key, reason)
            self.queue_failure_mail(run, progress.version)
        self._cancel(progress)
        self.runs.pop(run.run_id, None)

    def queue_failure_mail(self, run: FileRun, version: int) -> None:
        """Overridden by the publish stage, which sends it."""

    def _confirm(self, progress: Progress, what: str) -> bool:
        run = progress.run
        try:
            confirmed = self.control.confirm(self.region, run.epoch)
        except UnavailableError as exc:
            # Not a "no": the control plane cannot promise it now (it is unreachable, or the
            # region active before may still act on its last confirmation). Nothing is
            # published; the run keeps its place and asks again shortly.
            if not progress.confirm_waiting:
                log.warning("run %s: %s waits: %s", run.run_id, what, exc)
            progress.confirm_waiting = True
            progress.retry_at = self.clock() + CONFIRM_POLL
            return False
        progress.confirm_waiting = False
        if confirmed:
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
