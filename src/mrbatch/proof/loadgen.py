"""``mrbatch load``: generate orders files and upload them through the access point, then
measure what happened to each: throughput, per-file latency (upload acknowledged -> output
published, from the run's own history timestamps) and the rejections expected versus got.

Files are generated with :mod:`mrbatch.generate` (seeded: the same seed gives the same bytes).
Their uuids are drawn from the reference data currently in the bucket, so a valid row finds its
financial data and the only rejected rows are the ones generated invalid on purpose; the
expected rejection count is therefore known before the upload. Every accepted upload is
appended to the ledger (:mod:`mrbatch.ledger`) that ``mrbatch verify`` checks.

An upload that no region accepts (every bucket unavailable) is retried with backoff for
``upload_retry`` seconds, then counted as refused: it was never accepted, so it is not owed.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ..access.accesspoint import AccessPoint
from ..config.workspace import Workspace
from ..errors import MrbatchError, NotFoundError, UnavailableError
from ..model.keys import run_id_for
from ..model.records import FileRun, RunStatus
from ..observe import views
from ..ports import StateTable
from ..retry import Backoff
from .generate import orders_frame

__all__ = ["FileResult", "LoadGenerator", "LoadOptions", "LoadReport", "percentile"]

_INVALID = "NOT-A-UUID"  # what generate.orders_frame writes into an invalid row


@dataclass(frozen=True)
class LoadOptions:
    files: int
    interval: float = 0.0
    rows: int = 1_000
    invalid_fraction: float = 0.0
    seed: int = 1
    prefix: str = "input/load"
    timeout: float = 300.0  # for every file to reach a terminal state
    upload_retry: float = 15.0
    # Uploads in flight at once, as many clients would send them: one uploader waits on its
    # own upload's fsyncs (about 20 ms a file here) and cannot offer more than ~50 files/s.
    concurrency: int = 1


@dataclass
class FileResult:
    key: str
    rows: int
    expected_rejected: int
    sha256: str | None = None
    region: str | None = None
    uploaded_at: float | None = None
    refused: str | None = None
    status: str | None = None
    published_at: float | None = None
    finished_at: float | None = None
    rows_rejected: int | None = None
    reason: str | None = None

    @property
    def run_id(self) -> str | None:
        return None if self.sha256 is None else run_id_for(self.key, self.sha256)

    @property
    def latency(self) -> float | None:
        if self.published_at is None or self.uploaded_at is None:
            return None
        return max(0.0, self.published_at - self.uploaded_at)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["run_id"], data["latency"] = self.run_id, self.latency
        return data


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by the nearest-rank method; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


@dataclass
class LoadReport:
    options: LoadOptions
    results: list[FileResult] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    def _with(self, status: str) -> list[FileResult]:
        return [r for r in self.results if r.status == status]

    def to_dict(self) -> dict[str, Any]:
        accepted = [r for r in self.results if r.sha256 is not None]
        completed, failed = self._with("COMPLETED"), self._with("FAILED")
        latencies = [r.latency for r in accepted if r.latency is not None]
        finished = completed + failed
        # From the first upload to the last run reaching its terminal state (not to the end
        # of polling, which would add up to one poll interval).
        last = max((r.finished_at for r in finished if r.finished_at), default=self.ended)
        seconds = max(1e-9, last - self.started)
        rows = sum(r.rows for r in finished)
        expected = sum(r.expected_rejected for r in finished)
        got = sum(r.rows_rejected or 0 for r in finished)
        return {
            "files": self.options.files,
            "accepted": len(accepted),
            "refused": sum(r.refused is not None for r in self.results),
            "completed": len(completed),
            "failed": len(failed),
            "pending": len(accepted) - len(finished),
            "seconds": round(seconds, 3),
            "files_per_second": round(len(finished) / seconds, 3),
            "rows_per_second": round(rows / seconds, 1),
            "latency": {
                name: None if (v := percentile(latencies, q)) is None else round(v, 3)
                for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
            },
            "rejected_expected": expected,
            "rejected_got": got,
            "rejections_match": expected == got,
            "results": [r.to_dict() for r in self.results],
        }


# Runs read by one poll, the oldest unfinished first (see LoadGenerator.poll).
_POLL_BATCH = 64
_POLL_EVERY = 0.25  # seconds between two polls of LoadGenerator.wait


class LoadGenerator:
    """Generates, uploads and follows ``options.files`` files. ``stop`` ends the uploads early
    (Ctrl-C, or the end of a chaos experiment); ``on_event(kind, result)`` is told of every
    ``uploaded``, ``refused`` and ``finished`` file (progress bars)."""

    def __init__(
        self,
        ws: Workspace,
        options: LoadOptions,
        *,
        stop: threading.Event | None = None,
        on_event: Callable[[str, FileResult], None] | None = None,
        tag: str | None = None,
    ) -> None:
        self.ws = ws
        self.options = options
        self.stop = stop or threading.Event()
        self.on_event = on_event or (lambda _kind, _result: None)
        self.access = AccessPoint(ws)
        self.tag = tag or time.strftime("%Y%m%dT%H%M%S")
        self.report = LoadReport(options)
        self._keys: pl.Series | None = None
        self._tables: dict[str, StateTable] = {}  # kept open between polls
        self._poll_turn = 0

    # ------------------------------------------------------------------ generating
    def reference_keys(self) -> pl.Series | None:
        """The join keys of the reference data in the bucket now (None: no enrichment)."""
        enrichment = self.ws.config.pipeline.enrichment
        if enrichment is None:
            return None
        if self._keys is None:
            try:
                _, stream = self.access.open(enrichment.reference)
            except NotFoundError as exc:
                raise MrbatchError(
                    f"no reference data at {enrichment.reference}",
                    hint=f"upload it with `mrbatch put FILE --key {enrichment.reference}`",
                ) from exc
            with stream:
                frame = pl.read_csv(stream, infer_schema=False, columns=[enrichment.reference_key])
            self._keys = frame.get_column(enrichment.reference_key)
        return self._keys

    def generate(self, index: int) -> tuple[bytes, int]:
        """File ``index``'s bytes and how many of its rows must be rejected."""
        opts = self.options
        seed = opts.seed * 1_000_003 + index
        keys = self.reference_keys()
        frame = orders_frame(
            opts.rows,
            reference_rows=max(1, len(keys) if keys is not None else 1_000_000),
            seed=seed,
            invalid_fraction=opts.invalid_fraction,
        )
        if keys is not None and len(keys):
            picks = (pl.int_range(opts.rows, eager=True, dtype=pl.UInt64).hash(seed + 7)) % len(
                keys
            )
            frame = frame.with_columns(
                pl.when(pl.col("uuid") == _INVALID)
                .then(pl.col("uuid"))
                .otherwise(pl.lit(keys.gather(picks)))
                .alias("uuid")
            )
        invalid = int((frame.get_column("uuid") == _INVALID).sum())
        buffer = io.BytesIO()
        frame.write_csv(buffer)
        return buffer.getvalue(), invalid

    # ------------------------------------------------------------------ uploading
    def _put(self, result: FileResult, data: bytes) -> None:
        deadline = time.monotonic() + self.options.upload_retry
        backoff = Backoff(base=0.1, cap=2.0)
        refusals = 0
        while True:
            try:
                located = self.access.put(result.key, data, source="load")
            except UnavailableError as exc:
                if time.monotonic() >= deadline or self.stop.is_set():
                    result.refused = str(exc)
                    self.on_event("refused", result)
                    return
                refusals += 1
                self.stop.wait(backoff.delay(refusals))
                continue
            break
        result.sha256, result.region = located.info.sha256, located.region
        result.uploaded_at = time.time()
        self.on_event("uploaded", result)

    def upload_all(self) -> None:
        """Upload every file (stopping early when ``stop`` is set), starting them ``interval``
        apart, with up to ``concurrency`` uploads in flight."""
        self.report.started = self.report.started or time.time()
        if self.options.concurrency <= 1:
            for index in range(self.options.files):
                if self.stop.is_set():
                    break
                self._upload(index)
                if self.options.interval and index + 1 < self.options.files:
                    self.stop.wait(self.options.interval)
            return
        self.reference_keys()  # read once, before the uploaders share it
        slots = threading.BoundedSemaphore(self.options.concurrency)
        uploads: list[Future[None]] = []
        with ThreadPoolExecutor(self.options.concurrency, thread_name_prefix="load") as pool:
            for index in range(self.options.files):
                while not slots.acquire(timeout=0.2):  # a free uploader, or a stop
                    if self.stop.is_set():
                        break
                if self.stop.is_set():
                    break
                uploads.append(upload := pool.submit(self._upload, index))
                upload.add_done_callback(lambda _: slots.release())
                if self.options.interval and index + 1 < self.options.files:
                    self.stop.wait(self.options.interval)
        for upload in uploads:
            upload.result()  # an error an uploader met is the caller's, as without threads

    def _upload(self, index: int) -> None:
        data, invalid = self.generate(index)
        key = f"{self.options.prefix}/{self.tag}-s{self.options.seed}-{index:04d}.csv"
        result = FileResult(key=key, rows=self.options.rows, expected_rejected=invalid)
        self.report.results.append(result)
        self._put(result, data)

    # ------------------------------------------------------------------ following
    def poll(self, *, every: bool = False) -> int:
        """Update unfinished files from their run records; returns how many are unfinished.

        A poll reads the next ``_POLL_BATCH`` unfinished runs in turn (``every``: all of
        them), one read per run and region: a scan of every run (as it was) decoded the whole
        history of the workspace ten times a second, on the cores the regions were processing
        on. A file's times come from its run's record, so a file noticed a poll later measures
        the same."""
        pending = [
            r for r in self.report.results
            if r.sha256 is not None and r.status not in ("COMPLETED", "FAILED")
        ]  # fmt: skip
        if every or len(pending) <= _POLL_BATCH:
            batch = pending
        else:
            start = self._poll_turn % len(pending)
            batch = (pending[start:] + pending[:start])[:_POLL_BATCH]
            self._poll_turn = start + _POLL_BATCH
        try:
            runs = views.runs_by_id(self.ws, [r.run_id for r in batch if r.run_id], self._tables)
        except MrbatchError:
            return len(pending)
        unfinished = len(pending)
        for result in batch:
            run = runs.get(result.run_id or "")
            if run is not None and run.status.terminal:
                self._finish(result, run)
                unfinished -= 1
        return unfinished

    def _finish(self, result: FileResult, run: FileRun) -> None:
        result.status = str(run.status)
        result.rows_rejected = run.rows_rejected
        result.reason = run.reason
        result.finished_at = run.updated_at
        published = [h["at"] for h in run.history if h.get("status") == "PUBLISHED"]
        if run.status is RunStatus.COMPLETED and published:
            # The first publish is when the output became visible; a re-drive repeats it.
            result.published_at = min(published)
        self.on_event("finished", result)

    def wait(self, timeout: float | None = None) -> bool:
        """Poll until every accepted file is terminal (True) or the bound passes (False)."""
        deadline = time.monotonic() + (self.options.timeout if timeout is None else timeout)
        while True:
            if self.poll() == 0:
                return True
            if time.monotonic() >= deadline or self.stop.is_set():
                return self.poll(every=True) == 0  # the report names every file as it is
            # Four polls a second: a file's times come from its run's record, so polling
            # faster measures nothing better and takes CPU from the deployment it measures
            # (up to 64 runs read and decoded from every region a poll).
            time.sleep(_POLL_EVERY)

    def run(self) -> LoadReport:
        """Upload everything, wait for every run, return the report."""
        self.upload_all()
        self.wait()
        self.report.ended = time.time()
        return self.report
