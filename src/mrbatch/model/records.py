"""The records kept in the state table: Accepted, FileRun and ChunkRun, stored as versioned JSON.

Accepted: one acknowledged input version (key + content hash), written once by the region
whose bucket took the bytes; replicated like every record, so the ledger of what must be
processed survives losing any one machine.
FileRun: ``CLAIMED -> SPLIT -> PROCESSING -> MERGED -> PUBLISHED -> COMPLETED`` or ``FAILED``.
ChunkRun: ``PENDING -> DONE | FAILED``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..ports import Record

__all__ = [
    "ACCEPTED",
    "ANSWER",
    "CHUNK",
    "RUN",
    "Accepted",
    "ChunkRun",
    "ChunkSpec",
    "ChunkStatus",
    "FileRun",
    "RunStatus",
    "accepted_pk",
    "answer_pk",
    "chunk_pk",
    "failure_message_id",
    "newest_runs",
    "run_pk",
]

RUN, CHUNK, ACCEPTED, ANSWER = "run", "chunk", "accepted", "answer"
FORMAT = 1  # the "v" field of every stored body


class RunStatus(StrEnum):
    CLAIMED = "CLAIMED"
    SPLIT = "SPLIT"
    PROCESSING = "PROCESSING"
    MERGED = "MERGED"
    PUBLISHED = "PUBLISHED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED)


class ChunkStatus(StrEnum):
    PENDING = "PENDING"
    DONE = "DONE"
    FAILED = "FAILED"


def run_pk(run_id: str) -> str:
    return f"run/{run_id}"


def chunk_pk(run_id: str, index: int) -> str:
    return f"chunk/{run_id}/{index:05d}"


def accepted_pk(run_id: str) -> str:
    return f"accepted/{run_id}"


def _plain(value: Any) -> Any:
    """``dataclasses.asdict`` for the records here (dataclasses, lists, dicts and scalars):
    the same bodies, without its deep copy of every scalar. A run's body is built at each of its
    transitions, and asdict's copying was a tenth of the region loop's time under many small
    files."""
    if type(value) is list:
        return [_plain(item) for item in value]
    if type(value) is dict:
        return {key: _plain(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = value.__dict__
        return {
            name: item if type(item) in _SCALARS else _plain(item)
            for name in _field_names(type(value))
            for item in (fields[name],)
        }
    if isinstance(value, tuple):
        return type(value)(_plain(item) for item in value)  # type: ignore[call-arg]
    return value  # str, int, float, bool, None, an enum: immutable, shared as asdict does


_SCALARS = frozenset({str, int, float, bool, type(None)})


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def answer_pk(run_id: str, key: str) -> str:
    """The record of a run's enrichment-API answer for ``key`` (hashed: keys are user data)."""
    return f"answer/{run_id}/{hashlib.sha256(key.encode('utf-8')).hexdigest()[:32]}"


def failure_message_id(run_id: str, round_: int) -> str:
    """The Message-ID of the mail telling a run's owners it FAILED (in its ``round_``-th
    round): never the completion mail's ``<run-id@mrbatch>``, so a run that fails, is
    re-driven and completes sends one failure mail and one completion mail."""
    return f"<{run_id}.failed.{round_}@mrbatch>"


@dataclass(frozen=True)
class Accepted:
    """One acknowledged upload of an input version. ``object_key`` holds its bytes for good
    (``versions/<run-id>/input/<path>``); ``at`` (the accepting region's clock) then ``region``
    order the versions of one key: that is the acceptance order runs follow."""

    run_id: str
    key: str
    sha256: str
    size: int
    region: str
    at: float
    source: str
    object_key: str
    # The chunks the upload found while storing the bytes (access.splithint), if it did.
    split: dict[str, Any] | None = None

    @property
    def order(self) -> tuple[float, str, str]:
        return (self.at, self.region, self.run_id)

    def to_body(self) -> dict[str, Any]:
        body = {**_plain(self), "v": FORMAT}
        if body["split"] is None:
            del body["split"]
        return body

    @classmethod
    def from_record(cls, record: Record) -> Accepted:
        body = record.body
        return cls(**{f: body[f] for f in _ACCEPTED_FIELDS if f in body})


@dataclass
class ChunkSpec:
    """One chunk as SPLIT found it: a byte range of the (immutable) input version and what
    those bytes hash to. Chunk tasks read the range itself, so SPLIT copies nothing and a
    region that holds the input can run any chunk of it."""

    index: int
    start: int
    end: int
    sha256: str
    first_line: int
    lines: int
    # Parquet: the row groups [first, last + 1) the chunk holds (its bytes are their span);
    # first_line is then the first row's number (1-based) and lines the number of rows.
    groups: list[int] = field(default_factory=list)


@dataclass
class FileRun:
    run_id: str
    input_key: str
    input_sha256: str
    input_version: str
    input_size: int
    status: RunStatus
    region: str
    epoch: int
    claimed_at: float
    updated_at: float
    # Where the accepted bytes are kept (versions/<run-id>/input/<path>); None in records
    # written before versions had keys of their own (they read input_key at input_version).
    source_key: str | None = None
    # Prefixes of the run's intermediates, registered when the run is claimed (before any is
    # written): garbage collection deletes them once the run is terminal everywhere.
    cleanup: list[str] = field(default_factory=list)
    # The acceptance order of this version among the versions of its key (see Accepted).
    accepted_at: float = 0.0
    accepted_region: str = ""
    reference_key: str | None = None
    reference_sha256: str | None = None
    reference_version: str | None = None
    # The pipeline (its name, its configuration's hash, its code's version) and input format,
    # pinned at claim: every chunk of the run checks it runs exactly these. "" for runs from
    # before pipelines had names (resolved by input key).
    pipeline: str = ""
    pipeline_hash: str | None = None
    code_version: str | None = None
    input_format: str = "csv"
    # Notifications besides the mail (the pipeline's webhook), recorded delivered.
    webhook_url: str | None = None
    webhook_sent_at: float | None = None
    webhook_attempts: int = 0
    webhook_error: str | None = None
    chunk_rows: int = 0
    header: str | None = None  # the input's header line, as the chunk tasks prepend it
    chunks: list[ChunkSpec] = field(default_factory=list)
    rows_in: int | None = None
    rows_out: int | None = None
    rows_rejected: int | None = None
    output_header: list[str] = field(default_factory=list)
    rejected_header: list[str] = field(default_factory=list)
    merged_key: str | None = None
    merged_sha256: str | None = None
    merged_rejected_key: str | None = None
    merged_rejected_sha256: str | None = None
    output_key: str | None = None
    output_sha256: str | None = None
    rejected_key: str | None = None
    # This version's own results (versions/<run-id>/output|rejected/<path>), kept whichever
    # version output/<path> shows.
    result_key: str | None = None
    result_rejected_key: str | None = None
    reason: str | None = None
    mail_id: str | None = None
    mail_sent_at: float | None = None
    mail_attempts: int = 0
    mail_error: str | None = None
    # The mail telling the owners this run FAILED: message_id (one per failure, never the
    # completion mail's), round, attempts, sent_at, error. None for runs that never failed
    # (and for those that failed before mrbatch sent such mails).
    failure_mail: dict[str, Any] | None = None
    link: str | None = None
    # How many times the run was taken over or re-driven; each time is a new "round".
    redriven: int = 0
    # Chunks the current round must run again: the driver resets each whose record belongs to
    # an earlier round (ChunkRun.round), so a takeover needs only its one write of this record.
    redo_chunks: list[int] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def order(self) -> tuple[float, str, str]:
        """Acceptance order among the versions of one key (see Accepted.order)."""
        return (self.accepted_at, self.accepted_region, self.run_id)

    def source(self) -> tuple[str, str | None]:
        """The object (and version, where it is not immutable) holding the input's bytes."""
        if self.source_key:
            return self.source_key, None
        return self.input_key, self.input_version

    # ------------------------------------------------------------------ transitions
    def advance(self, status: RunStatus, *, region: str, epoch: int, note: str = "") -> None:
        now = time.time()
        self.status = status
        self.region = region
        self.epoch = epoch
        self.updated_at = now
        entry: dict[str, Any] = {"status": str(status), "at": now, "region": region, "epoch": epoch}
        if note:
            entry["note"] = note
        self.history.append(entry)

    # ------------------------------------------------------------------ storage
    def to_body(self) -> dict[str, Any]:
        body = _plain(self)
        body["status"] = str(self.status)
        body["v"] = FORMAT
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> FileRun:
        data = {k: v for k, v in body.items() if k in _RUN_FIELDS}
        data["status"] = RunStatus(data["status"])
        data["chunks"] = [ChunkSpec(**c) for c in data.get("chunks", [])]
        return cls(**data)

    @classmethod
    def from_record(cls, record: Record) -> FileRun:
        return cls.from_body(dict(record.body))

    def summary(self) -> dict[str, Any]:
        """The ``mrbatch runs --json`` contract (more keys may be added)."""
        return {
            "run_id": self.run_id,
            "input_key": self.input_key,
            "status": str(self.status),
            "region": self.region,
            "epoch": self.epoch,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_rejected": self.rows_rejected,
            "output_key": self.output_key,
            "reason": self.reason,
            "input_sha256": self.input_sha256,
            "rejected_key": self.rejected_key,
            "claimed_at": self.claimed_at,
            "updated_at": self.updated_at,
            "chunks": len(self.chunks),
            "mail_sent_at": self.mail_sent_at,
            "mail_error": self.mail_error,
            "failure_mail": self.failure_mail,
            "redriven": self.redriven,
            "result_key": self.result_key,
            "result_rejected_key": self.result_rejected_key,
            "accepted_at": self.accepted_at,
            "accepted_region": self.accepted_region,
            "pipeline": self.pipeline,
            "pipeline_hash": self.pipeline_hash,
            "code_version": self.code_version,
            "input_format": self.input_format,
            "webhook_sent_at": self.webhook_sent_at,
            "webhook_error": self.webhook_error,
        }


@dataclass
class ChunkRun:
    run_id: str
    index: int
    status: ChunkStatus = ChunkStatus.PENDING
    attempts: int = 0
    rows_in: int | None = None
    rows_out: int | None = None
    rows_rejected: int | None = None
    output_key: str | None = None
    output_sha256: str | None = None
    output_size: int | None = None
    rejected_key: str | None = None
    rejected_sha256: str | None = None
    output_header: list[str] = field(default_factory=list)
    rejected_header: list[str] = field(default_factory=list)
    reason: str | None = None
    region: str | None = None
    last_error: str | None = None
    counts: list[str] = field(default_factory=list)  # values of the expected-count column
    round: int = 0  # the run's ``redriven`` count when this record was created or reset
    # When the task that produced the outputs ran (the worker's own measure; traces use it).
    started_at: float | None = None
    ended_at: float | None = None

    def to_body(self) -> dict[str, Any]:
        body = _plain(self)
        body["status"] = str(self.status)
        body["v"] = FORMAT
        return body

    @classmethod
    def from_record(cls, record: Record) -> ChunkRun:
        data = {k: v for k, v in record.body.items() if k in _CHUNK_FIELDS}
        data["status"] = ChunkStatus(data["status"])
        return cls(**data)


_ACCEPTED_FIELDS = [f.name for f in dataclasses.fields(Accepted)]
_RUN_FIELDS = {f.name for f in dataclasses.fields(FileRun)}
_CHUNK_FIELDS = {f.name for f in dataclasses.fields(ChunkRun)}


def newest_runs(records: Iterable[Record]) -> dict[str, FileRun]:
    """By run id, the run of each record of highest ``rank`` among ``records`` (run records read
    from several regions): the one replication converges to."""
    best: dict[str, Record] = {}
    for record in records:
        held = best.get(record.pk)
        if held is None or record.rank > held.rank:
            best[record.pk] = record
    runs = (FileRun.from_record(record) for record in best.values())
    return {run.run_id: run for run in runs}
