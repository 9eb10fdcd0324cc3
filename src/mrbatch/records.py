"""The records kept in the state table: FileRun and ChunkRun, stored as versioned JSON.

FileRun: ``CLAIMED -> SPLIT -> PROCESSING -> MERGED -> PUBLISHED -> COMPLETED`` or ``FAILED``.
ChunkRun: ``PENDING -> DONE | FAILED``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .ports import Record

__all__ = [
    "CHUNK",
    "RUN",
    "ChunkRun",
    "ChunkSpec",
    "ChunkStatus",
    "FileRun",
    "RunStatus",
    "chunk_pk",
    "run_pk",
]

RUN, CHUNK = "run", "chunk"
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
    reference_key: str | None = None
    reference_sha256: str | None = None
    reference_version: str | None = None
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
    reason: str | None = None
    mail_id: str | None = None
    mail_sent_at: float | None = None
    mail_attempts: int = 0
    mail_error: str | None = None
    link: str | None = None
    redriven: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

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
        body = dataclasses.asdict(self)
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
            "redriven": self.redriven,
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

    def to_body(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        body["status"] = str(self.status)
        body["v"] = FORMAT
        return body

    @classmethod
    def from_record(cls, record: Record) -> ChunkRun:
        data = {k: v for k, v in record.body.items() if k in _CHUNK_FIELDS}
        data["status"] = ChunkStatus(data["status"])
        return cls(**data)


_RUN_FIELDS = {f.name for f in dataclasses.fields(FileRun)}
_CHUNK_FIELDS = {f.name for f in dataclasses.fields(ChunkRun)}
