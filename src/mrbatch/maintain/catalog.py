"""The catalog of a backup target: its index entries, and the change files they point to.

An index entry (``index/<backup-id>.json``) is written only after every file it names is
complete, so the catalog is the list of backups that can be used. Change files are gzipped
JSON lines, one state record or object version per line, exactly as the feed gave them (with
every field the merge rule and ``verify`` look at: epoch, writer or origin, the writer's clock).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import NotFoundError, UsageError
from ..ports import ObjectInfo, Record
from .target import FORMAT, BackupError, BackupTarget

__all__ = [
    "BackupEntry",
    "ChangeFile",
    "backup_id",
    "catalog",
    "encode_lines",
    "index_name",
    "iso",
    "object_from",
    "object_line",
    "parse_time",
    "read_json",
    "read_lines",
    "record_from",
    "record_line",
]

INDEX = "index/"


@dataclass(frozen=True)
class ChangeFile:
    name: str
    sha256: str
    count: int
    bytes: int


@dataclass(frozen=True)
class BackupEntry:
    """One complete backup: what it read, from where, and the files that hold it."""

    id: str
    region: str
    taken_at: float  # when it started reading the feeds
    finished_at: float
    generation: int  # the region's feed generation (positions mean nothing across them)
    base: str | None  # the backup it continues (None: a full backup)
    positions: dict[str, dict[str, int]]  # kind -> {"after": n, "upto": m}
    newest_change: float | None  # the newest writer's clock among the changes it holds
    records: ChangeFile
    objects: ChangeFile
    control: ChangeFile | None
    blobs: dict[str, int] = field(default_factory=dict)  # copied, reused, bytes_copied
    format: int = FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> BackupEntry:
        files = {k: raw[k] and ChangeFile(**raw[k]) for k in ("records", "objects", "control")}
        return cls(**{**raw, **files})


def backup_id(taken_at: float, region: str) -> str:
    stamp = datetime.fromtimestamp(taken_at, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-{region}"


def catalog(target: BackupTarget) -> list[BackupEntry]:
    """Every complete backup in the target, oldest first."""
    entries = []
    for name in target.list(INDEX):
        if not name.endswith(".json"):
            continue
        try:
            raw = json.loads(target.read(name))
            entry = BackupEntry.from_json(raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise BackupError(
                f"backup target {target.location}: {name} cannot be read ({exc})",
                hint="the index entry is damaged; move it aside to use the other backups",
            ) from exc
        if entry.format > FORMAT:
            raise BackupError(
                f"backup {entry.id} was written in format {entry.format}; this mrbatch reads"
                f" up to {FORMAT}",
                hint="restore with the mrbatch version that wrote it, or a newer one",
            )
        entries.append(entry)
    return sorted(entries, key=lambda e: (e.taken_at, e.id))


def index_name(entry_id: str) -> str:
    return f"{INDEX}{entry_id}.json"


# --------------------------------------------------------------------------- change lines
def record_line(record: Record) -> dict[str, Any]:
    return {
        "pk": record.pk,
        "kind": record.kind,
        "body": record.body,
        "version": record.version,
        "epoch": record.epoch,
        "writer": record.writer,
        "updated": record.updated,
        "seq": record.seq,
        "deleted": record.deleted,  # a tombstone: restored as one (lines without it: live)
    }


def record_from(line: dict[str, Any]) -> Record:
    return Record(**line)


def object_line(info: ObjectInfo) -> dict[str, Any]:
    return {
        "key": info.key,
        "size": info.size,
        "sha256": info.sha256,
        "version": info.version,
        "modified": info.modified,
        "origin": info.origin,
        "epoch": info.epoch,
        "seq": info.seq,
        "deleted": info.deleted,
        "meta": dict(info.meta),
    }


def object_from(line: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(**line)


def encode_lines(lines: Iterable[dict[str, Any]], sink: dict[str, Any]) -> Iterator[bytes]:
    """Gzipped JSON lines, block by block; ``sink`` gets the count and the sha256 of the
    compressed bytes once the iterator is exhausted."""
    digest, count = hashlib.sha256(), 0
    buffer = _Buffer()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped:
        for line in lines:
            zipped.write(json.dumps(line, sort_keys=True).encode() + b"\n")
            count += 1
            if buffer.size() >= 1 << 20:
                block = buffer.take()
                digest.update(block)
                yield block
    block = buffer.take()
    digest.update(block)
    yield block
    sink.update(count=count, sha256=digest.hexdigest())


class _Buffer:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def size(self) -> int:
        return sum(len(p) for p in self._parts)

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def _checked(target: BackupTarget, file: ChangeFile) -> bytes:
    """The file's bytes, after checking they are the ones the index entry names."""
    try:
        data = target.read(file.name)
    except NotFoundError as exc:
        raise BackupError(str(exc), hint="the backup is damaged: a change file is missing") from exc
    if hashlib.sha256(data).hexdigest() != file.sha256:
        raise BackupError(
            f"backup target {target.location}: {file.name} does not match its index entry",
            hint="the backup is damaged; restore from another copy of it",
        )
    return data


def read_lines(target: BackupTarget, file: ChangeFile) -> Iterator[dict[str, Any]]:
    """The lines of a change file (checked against its index entry)."""
    for raw in gzip.decompress(_checked(target, file)).splitlines():
        if raw:
            yield json.loads(raw)


def read_json(target: BackupTarget, file: ChangeFile) -> dict[str, Any]:
    """A JSON change file (the control-plane snapshot), checked against its index entry."""
    value: dict[str, Any] = json.loads(_checked(target, file))
    return value


# --------------------------------------------------------------------------- times
def iso(ts: float) -> str:
    """A UTC time as ISO 8601 with microseconds (what ``--at`` accepts back)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """``--at``: ISO 8601 (``2026-11-30T15:31:56Z``; no offset means UTC) or ``@<unix
    seconds>``."""
    value = text.strip()
    if value.startswith("@"):
        try:
            return float(value[1:])
        except ValueError:
            pass
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
    raise UsageError(
        f"--at {text!r}: not a time",
        hint="give ISO 8601 such as 2026-11-30T15:31:56Z (UTC unless an offset is given),"
        " or @<unix seconds>; `mrbatch backups --from DEST` lists the backups' times",
    )
