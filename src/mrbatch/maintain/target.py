"""Where backups are kept: a *backup target* (a directory or an S3 prefix), one small interface.

A target holds named files and content-addressed blobs. Everything a backup writes is written
whole or not at all (``write`` and ``put_blob`` are atomic), so a backup interrupted half-way
leaves a target that is still usable: its index only ever names complete files.

Layout (the same names under a directory or an S3 prefix)::

    mrbatch-backup.json                 what this is: {"format": 1, "created": …}
    blobs/<ab>/<sha256>                 object bytes, one blob per content, shared by backups
    changes/<backup-id>/records.jsonl.gz  the state records the backup read from the feed
    changes/<backup-id>/objects.jsonl.gz  the object versions (and deletions) it read
    changes/<backup-id>/control.json      the control-plane snapshot
    index/<backup-id>.json              the backup's entry, written last: its commit point
    tmp/                                partial writes (a directory target only)

A directory is :class:`DirectoryTarget`, here; ``s3://bucket/prefix`` is the S3 target of
:mod:`mrbatch.backends.s3backup`, which the backend factory imports (with boto3) only when a
URL names it. Any other scheme is refused by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from ..durable import fsync_dir
from ..errors import MrbatchError, NotFoundError, UsageError

if TYPE_CHECKING:
    from ..config.workspace import Workspace

__all__ = [
    "FORMAT",
    "MARKER",
    "BackupError",
    "BackupTarget",
    "DirectoryTarget",
    "blob_name",
    "open_target",
]

FORMAT = 1
MARKER = "mrbatch-backup.json"
_BLOCK = 1 << 20


class BackupError(MrbatchError):
    """A backup or restore could not be made, or was refused (the message says which)."""

    code = "backup"


class BackupTarget(Protocol):
    """What a backup needs from the place it is kept."""

    location: str

    def initialized(self) -> bool:
        """True when the target holds the marker of a backup target."""
        ...

    def initialize(self) -> None:
        """Make this a backup target (write the marker). Refuses a place that holds other
        things. Idempotent."""
        ...

    def write(self, name: str, chunks: Iterable[bytes]) -> int:
        """Store ``name`` whole or not at all; returns its size."""
        ...

    def read(self, name: str) -> bytes:
        """The file's bytes. Raises NotFoundError when absent."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Names of complete files starting with ``prefix``, sorted."""
        ...

    def has_blob(self, sha256: str) -> bool: ...

    def put_blob(self, sha256: str, stream: BinaryIO) -> int:
        """Store the bytes of ``stream`` as blob ``sha256``, checking that they hash to it
        (nothing is stored otherwise: BackupError). Returns the size."""
        ...

    def open_blob(self, sha256: str) -> BinaryIO:
        """Raises NotFoundError when the blob is absent."""
        ...


def blob_name(sha256: str) -> str:
    return f"blobs/{sha256[:2]}/{sha256}"


def open_target(dest: str, *, create: bool = False, ws: Workspace | None = None) -> BackupTarget:
    """The target named by ``dest``: a directory path, or ``s3://bucket/prefix`` (reached with
    the settings of ``ws``'s ``[s3]`` section, or the environment's without a workspace).

    ``create``: make the directory and the marker if needed (a backup); otherwise the target
    must exist and be one (a restore): UsageError naming what is wrong."""
    if "://" in dest:
        from .. import backends

        opened: BackupTarget | None = backends.open_backup_target(dest, ws, create=create)
        if opened is None:
            scheme = dest.split("://", 1)[0]
            raise UsageError(
                f"backup target {dest!r}: {scheme}:// is not a kind of backup target",
                hint="give a directory or an S3 prefix, s3://BUCKET/PREFIX",
            )
        return opened
    target = DirectoryTarget(Path(dest).expanduser())
    if create:
        target.initialize()
    elif not target.root.is_dir():
        raise UsageError(
            f"backup target {dest}: no such directory",
            hint="give the directory `mrbatch backup --to` wrote",
        )
    elif not target.initialized():
        raise UsageError(
            f"backup target {dest}: not an mrbatch backup (no {MARKER})",
            hint="give the directory `mrbatch backup --to` wrote",
        )
    return target


class DirectoryTarget:
    """A backup target in a local (or mounted) directory: temp file, fsync, rename."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.location = str(self.root)

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"bad name in a backup target: {name!r}")
        return self.root.joinpath(*parts)

    def initialized(self) -> bool:
        return (self.root / MARKER).is_file()

    def initialize(self) -> None:
        if self.initialized():
            return
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"backup target {self.root}: not a directory")
        if self.root.is_dir() and any(self.root.iterdir()):
            raise UsageError(
                f"backup target {self.root}: the directory holds other files and no {MARKER}",
                hint="give an empty or new directory, or one `mrbatch backup` wrote",
            )
        self.root.mkdir(parents=True, exist_ok=True)
        marker = {"format": FORMAT, "created": time.time(), "kind": "mrbatch backup"}
        self.write(MARKER, [json.dumps(marker).encode()])

    def _commit(self, tmp: Path, target: Path) -> None:
        if not target.parent.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            _sync_entries(target.parent.parent)
        os.replace(tmp, target)
        _sync_entries(target.parent)

    def _tmp(self) -> Path:
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(exist_ok=True)
        return tmp_dir / f"{uuid.uuid4().hex}.part"

    def write(self, name: str, chunks: Iterable[bytes]) -> int:
        target, tmp, size = self._path(name), self._tmp(), 0
        try:
            with open(tmp, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            self._commit(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def read(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"backup target {self.location}: no {name}") from None

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        names = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(n for n in names if n.startswith(prefix) and not n.startswith("tmp/"))

    def has_blob(self, sha256: str) -> bool:
        return self._path(blob_name(sha256)).is_file()

    def put_blob(self, sha256: str, stream: BinaryIO) -> int:
        digest, target, tmp, size = hashlib.sha256(), self._path(blob_name(sha256)), self._tmp(), 0
        try:
            with open(tmp, "wb") as out:
                while block := stream.read(_BLOCK):
                    digest.update(block)
                    out.write(block)
                    size += len(block)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise BackupError(
                    f"the bytes read for blob {sha256[:12]} hash to {digest.hexdigest()[:12]}",
                    hint="the source object changed or is damaged; run the backup again",
                )
            self._commit(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def open_blob(self, sha256: str) -> BinaryIO:
        try:
            return open(self._path(blob_name(sha256)), "rb")
        except FileNotFoundError:
            raise NotFoundError(
                f"backup target {self.location}: blob {sha256[:12]} is missing",
                hint="the backup is damaged; restore from another copy of it",
            ) from None

    def blobs(self) -> Iterator[tuple[str, int]]:
        """Every blob and its size (for reports and tests)."""
        base = self.root / "blobs"
        if base.is_dir():
            for path in sorted(base.rglob("*")):
                if path.is_file():
                    yield path.name, path.stat().st_size


def _sync_entries(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system a backup lands on syncs directories
        fsync_dir(directory)
