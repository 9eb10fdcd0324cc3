"""Streaming ingest: records in, sealed input files out, through the access point.

A record is acknowledged only once it is durable in a write-ahead spool: appended to the open
segment (``<data dir>/ingest/<node>/<pipeline>/seg-<seq>.wal``) as a frame (length, CRC-32,
bytes) and fsynced. Every ``ingest.seal_records`` records or ``ingest.seal_interval`` seconds
the segment is closed (later records go to the next one) and sealed: its records become one
input file under a key that depends only on the segment, ``input/<prefix>ingest-<node>-<seq>.
<ext>``, uploaded through the access point (kept and recorded in the ledger, as any upload),
and only then is the segment deleted and the seal logged (``sealed.log``).

Why a record ends in exactly one sealed file: a segment's records never change once it is
closed, so its file's bytes are a function of the segment; sealing again after a crash (before
the segment was deleted) uploads the same bytes under the same key, which the access point
accepts as the version it already holds (same run id: no second run). A frame torn by a crash
was never acknowledged and is dropped when the segment is read. Segment numbers only grow
(``state.json``, fsynced before a segment is created), so a key is never reused for other
records. One process owns a node's spool at a time (an exclusive lock).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config.pipelines import PipelineSpec, delimiter_for, format_for
from ..config.workspace import Workspace
from ..durable import fsync_dir
from ..errors import UsageError
from ..faults import FaultPoints
from .accesspoint import AccessPoint

__all__ = ["Ingestor", "Sealed", "split_records"]

_FRAME = struct.Struct("<II")


@dataclass(frozen=True)
class Sealed:
    seq: int
    key: str
    records: int
    sha256: str
    region: str


def split_records(body: bytes, *, quote: str | None) -> list[bytes]:
    """The records of a request body: lines (a quoted CSV field may hold line breaks), without
    their line ends; blank lines are not records. UsageError for text that is not UTF-8 or
    holds NUL bytes."""
    if b"\0" in body:
        raise UsageError("the records hold a NUL byte: expected UTF-8 text")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"the records are not UTF-8 (byte {exc.start})") from None
    q = quote.encode() if quote else None
    out: list[bytes] = []
    pending = b""
    for line in body.split(b"\n"):
        line = line.removesuffix(b"\r")
        pending = pending + b"\n" + line if pending else line
        if q is not None and pending.count(q) % 2:
            continue  # inside a quoted field: the record goes on
        if pending.strip():
            out.append(pending)
        pending = b""
    if pending.strip():
        raise UsageError("the last record has a quoted field that is never closed")
    return out


class Ingestor:
    """One node's ingest spool for one pipeline."""

    def __init__(
        self,
        ws: Workspace,
        spec: PipelineSpec,
        node: str,
        access: AccessPoint,
        *,
        on_full: Callable[[], None] | None = None,
    ) -> None:
        self.ws, self.spec, self.node, self.access = ws, spec, node, access
        # Called when a segment closes at seal_records: whoever seals can do it now, not at
        # its next look.
        self.on_full = on_full
        fmt = format_for(spec, "x.jsonl" if spec.format == "auto" else f"x.{spec.format}")
        if fmt == "parquet":
            raise UsageError(f"pipeline {spec.name} reads Parquet: records cannot be streamed")
        self.format = fmt
        self.ext = "ndjson" if fmt == "jsonl" else "csv"
        self.dir = ws.data_dir / "ingest" / node / spec.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.dir / "lock", "w")  # noqa: SIM115 - held for our lifetime
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise UsageError(
                f"another process is ingesting into {spec.name} as node {node!r}",
                hint="stop it, or give this one another --node",
            ) from None
        self.config = ws.config.ingest
        self.faults = FaultPoints(ws.faults_path)
        self._lock = threading.Lock()
        self._open: int | None = None  # the segment being appended to
        self._opened_at = 0.0
        self._count = 0
        self._handle: io.BufferedWriter | None = None

    # ------------------------------------------------------------------ appending
    def append(self, records: list[bytes]) -> int:
        """Make ``records`` durable; returns the segment that holds them. Only after this
        returns may they be acknowledged."""
        if not records:
            return self._open or 0
        with self._lock:
            if self._handle is None:
                self._start_segment()
            assert self._handle is not None and self._open is not None
            frames = b"".join(_FRAME.pack(len(r), zlib.crc32(r)) + r for r in records)
            self._handle.write(frames)
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._count += len(records)
            seq = self._open
            full = self._count >= self.config.seal_records
            if full:
                self._close_segment()
        if full and self.on_full is not None:
            self.on_full()
        return seq

    def due_in(self) -> float | None:
        """Seconds until the open segment is due by age (0 when due), None when none is open."""
        with self._lock:
            if self._open is None:
                return None
            return max(0.0, self._opened_at + self.config.seal_interval - time.monotonic())

    def _start_segment(self) -> None:
        seq = max([self._next_from_state(), *(s + 1 for s in self._segments())])
        _write_json(self.dir / "state.json", {"next": seq + 1})
        self._handle = open(self._segment(seq), "ab")  # noqa: SIM115
        fsync_dir(self.dir)
        self._open, self._opened_at, self._count = seq, time.monotonic(), 0

    def _close_segment(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle, self._open, self._count = None, None, 0

    # ------------------------------------------------------------------ sealing
    def seal_due(self, *, everything: bool = False) -> list[Sealed]:
        """Seal every closed segment, and the open one when it is older than the interval (or
        ``everything``)."""
        with self._lock:
            age = time.monotonic() - self._opened_at
            if self._open is not None and (everything or age >= self.config.seal_interval):
                self._close_segment()
            closed = [s for s in self._segments() if s != self._open]
        return [sealed for seq in closed if (sealed := self._seal(seq)) is not None]

    def _seal(self, seq: int) -> Sealed | None:
        path = self._segment(seq)
        records = _read_frames(path)
        if not records:
            path.unlink(missing_ok=True)
            return None
        key = f"{self.spec.prefix}ingest-{self.node}-{seq:010d}.{self.ext}"
        data = self._header() + b"\n".join(records) + b"\n"
        located = self.access.put(key, data, source="ingest")
        self.faults.crash_point("ingest-sealed", None)
        sealed = Sealed(seq, key, len(records), located.info.sha256, located.region)
        with open(self.dir / "sealed.log", "a", encoding="utf-8") as log:
            log.write(json.dumps(sealed.__dict__) + "\n")
        path.unlink()
        fsync_dir(self.dir)
        return sealed

    def _header(self) -> bytes:
        if self.format == "jsonl":
            return b""
        from ..pipeline.schema import RecordSchema

        names = self.spec.file.header
        if names is None:
            names = list(RecordSchema.from_file(self.ws.resolve(self.spec.schema_path)).properties)
        buffer = io.StringIO()
        options = {"delimiter": delimiter_for(self.spec, "x.csv"), "lineterminator": "\n"}
        if self.spec.quote:
            options["quotechar"] = self.spec.quote
        csv.writer(buffer, **options).writerow(names)  # type: ignore[arg-type]
        return buffer.getvalue().encode("utf-8")

    # ------------------------------------------------------------------ files
    def _segment(self, seq: int) -> Path:
        return self.dir / f"seg-{seq:010d}.wal"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem[4:]) for p in self.dir.glob("seg-*.wal"))

    def _next_from_state(self) -> int:
        try:
            return int(json.loads((self.dir / "state.json").read_text())["next"])
        except (OSError, ValueError, KeyError):
            return 1

    def close(self) -> None:
        with self._lock:
            self._close_segment()
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()


def _read_frames(path: Path) -> list[bytes]:
    """The records of a segment: every whole frame whose checksum holds, up to the first that
    does not (a write a crash cut short: never acknowledged)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out, pos = [], 0
    while pos + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, pos)
        record = data[pos + _FRAME.size : pos + _FRAME.size + length]
        if len(record) != length or zlib.crc32(record) != crc:
            break
        out.append(record)
        pos += _FRAME.size + length
    return out


def _write_json(path: Path, value: object) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(json.dumps(value))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
