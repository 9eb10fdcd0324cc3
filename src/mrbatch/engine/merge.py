"""MERGE: chunk outputs concatenated in chunk order into one object, every chunk checked.

The merge is streamed: it starts as soon as chunk 0 is done and takes each next chunk the
moment it is done, so by the time the last chunk finishes almost everything has been written.
(On two cores the chunk workers and this thread share the CPU; run after the chunks, the merge
left one core idle for most of a second per million rows.) It works from the run's chunk
manifest by index — never from a listing, which would sort part10 before part2 — and checks each
chunk's checksum and row count. Nothing is recorded until the merged object is complete; an
interrupted merge leaves only a temporary file behind and is simply done again.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

from ..errors import ConflictError
from ..faults import FaultPoints
from ..model.keys import run_key
from ..pipeline.formats import csv_line, renumber_rejected
from ..pipeline.parse import count_records
from ..ports import ObjectStore

__all__ = ["MergeInput", "MergeResult", "StreamingMerge", "merge"]


@dataclass(frozen=True)
class MergeInput:
    index: int
    rows_in: int
    rows_out: int
    output_key: str
    output_sha256: str
    rejected_key: str
    rejected_sha256: str


@dataclass(frozen=True)
class MergeResult:
    output_key: str
    output_sha256: str
    rejected_key: str
    rejected_sha256: str
    rows_out: int
    rows_rejected: int


class _Aborted(Exception):
    pass


def _verified(store: ObjectStore, key: str, sha256: str, what: str) -> bytes:
    data = store.get(key, version=sha256)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ConflictError(f"{what} {key} does not match its recorded checksum")
    return data


def _rows(data: bytes) -> int:
    # The output is written by us: one record per line unless a value needed quotes.
    return data.count(b"\n") if b'"' not in data else count_records(data)


def merge(
    store: ObjectStore,
    run_id: str,
    output_header: list[str],
    rejected_header: list[str],
    parts: Iterator[MergeInput],
    *,
    epoch: int,
    faults: FaultPoints | None = None,
    region: str | None = None,
) -> MergeResult:
    """Write ``runs/<id>/output.csv`` and ``runs/<id>/rejected.csv`` from ``parts``, which must
    come in index order 0, 1, 2… (``parts`` may block until the next chunk is done)."""
    taken: list[MergeInput] = []
    counted = {"out": 0, "rejected": 0}

    def outputs() -> Iterator[bytes]:
        yield csv_line(output_header)
        for part in parts:
            if part.index != len(taken):
                raise ConflictError(
                    f"run {run_id}: chunk {part.index} came where chunk {len(taken)} belongs"
                )
            taken.append(part)
            data = _verified(store, part.output_key, part.output_sha256, "chunk output")
            rows = _rows(data)
            if rows != part.rows_out:
                raise ConflictError(
                    f"chunk output {part.output_key} has {rows} rows, {part.rows_out} recorded"
                )
            counted["out"] += rows
            yield data

    def rejected() -> Iterator[bytes]:
        yield csv_line(rejected_header)
        offset = 0
        for part in taken:
            data = _verified(store, part.rejected_key, part.rejected_sha256, "rejected rows")
            counted["rejected"] += count_records(data) if data else 0
            yield renumber_rejected(data, offset) if offset and data else data
            offset += part.rows_in

    merged = store.put(run_key(run_id, "output.csv"), outputs(), epoch=epoch)
    if faults is not None:
        faults.crash_point("merge-written", region)
    merged_rejected = store.put(run_key(run_id, "rejected.csv"), rejected(), epoch=epoch)
    return MergeResult(
        output_key=merged.key,
        output_sha256=merged.sha256,
        rejected_key=merged_rejected.key,
        rejected_sha256=merged_rejected.sha256,
        rows_out=counted["out"],
        rows_rejected=counted["rejected"],
    )


class _ReusedThreads:
    """Daemon threads that run merges one after another, a new one started only when none is
    idle. Starting a thread blocks the starter until the new thread holds the GIL: with one
    merge thread per file, Thread.start took 13% of a busy region loop's time (py-spy, files
    of 1,000 rows). A thread idle for ``idle_seconds`` ends, so a burst of files leaves no
    crowd of threads behind. Daemon, as the merge threads were: a merge waiting for chunks
    that will never come does not hold up the process's exit."""

    def __init__(self, name: str, *, idle_seconds: float = 60.0) -> None:
        self._name = name
        self._idle_seconds = idle_seconds
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        # Threads waiting for a job that no job was promised to. A job is promised to one of
        # them by taking one from this count, so the waiting threads are never fewer than the
        # jobs in the queue.
        self._idle = 0
        self._started = 0

    def run(self, job: Callable[[], None]) -> None:
        with self._lock:
            grow = self._idle == 0
            if grow:
                self._started += 1
            else:
                self._idle -= 1
        self._jobs.put(job)
        if grow:
            name = f"{self._name}-{self._started}"
            threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # a waiting thread nothing was promised to: end it
                        self._idle -= 1
                        return
                continue
            try:
                job()  # StreamingMerge._run: never raises (its future takes the error)
            finally:
                with self._lock:
                    self._idle += 1


_THREADS = _ReusedThreads("merge")


class StreamingMerge:
    """One run's merge in a thread of the region process, fed chunk by chunk in index order.

    ``future`` resolves to the MergeResult, or to the error that stopped the merge."""

    def __init__(
        self,
        store: ObjectStore,
        run_id: str,
        output_header: list[str],
        rejected_header: list[str],
        *,
        epoch: int,
        faults: FaultPoints | None = None,
        region: str | None = None,
    ) -> None:
        self.future: Future[MergeResult] = Future()
        self.fed = 0
        self.finished = False
        self._queue: queue.Queue[MergeInput | BaseException | None] = queue.Queue()
        self._args = (store, run_id, output_header, rejected_header)
        self._epoch, self._faults, self._region = epoch, faults, region
        _THREADS.run(self._run)

    def _parts(self) -> Iterator[MergeInput]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _run(self) -> None:
        store, run_id, output_header, rejected_header = self._args
        try:
            result = merge(
                store,
                run_id,
                output_header,
                rejected_header,
                self._parts(),
                epoch=self._epoch,
                faults=self._faults,
                region=self._region,
            )
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)

    def feed(self, part: MergeInput) -> None:
        self.fed += 1
        self._queue.put(part)

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self._queue.put(None)

    def abort(self, why: str) -> None:
        """Stop the merge; its temporary file is removed and nothing is recorded."""
        if not self.future.done():
            self._queue.put(_Aborted(why))
