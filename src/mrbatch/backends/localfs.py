"""The embedded object store: one directory per region's bucket.

Bytes live in content-addressed blobs (``blobs/ab/abcdef…``, named by SHA-256); an SQLite index
maps each key to its current blob. The index row is the commit point of a write: a blob is
written completely under a temporary name and renamed into place before the row that points to
it is committed, so a crash at any moment leaves either the old version or the new one. Because
blobs are immutable, a version (its SHA-256) stays readable after the key moves on, and ``copy``
costs one index row.

The index doubles as the change feed: every change gets the next ``seq``; the trigger and the
replicators read rows with ``seq`` above their cursor. Deletions are kept as tombstones so they
replicate too.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..durable import fsync_file
from ..errors import ConflictError, NotFoundError
from ..model.keys import check_key
from ..ports import ObjectInfo, Purged
from .blobfiles import blob_file, write_blob
from .sqlite_util import SqliteFile

if TYPE_CHECKING:
    from ..config.workspace import Workspace

__all__ = ["LocalObjectStore", "open_store"]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key      TEXT PRIMARY KEY,
    sha256   TEXT NOT NULL,
    size     INTEGER NOT NULL,
    modified REAL NOT NULL,
    origin   TEXT NOT NULL,
    epoch    INTEGER NOT NULL DEFAULT 0,
    deleted  INTEGER NOT NULL DEFAULT 0,
    meta     TEXT NOT NULL DEFAULT '{}',
    seq      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_seq ON objects (seq);
"""


def _prefix_end(prefix: str) -> str:
    # Every key starting with prefix sorts in [prefix, prefix + U+10FFFF).
    return prefix + "\U0010ffff"


class LocalObjectStore:
    def __init__(self, root: Path, region: str) -> None:
        self.root = root
        self.region = region
        self._blobs = root / "blobs"
        self._tmp = root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._index = SqliteFile(root / "index.sqlite", _SCHEMA)
        # Paths as text on the hot path: pathlib's joins were 7% of a replicator's CPU.
        self._blobs_dir, self._tmp_dir = str(self._blobs), str(self._tmp)
        self._lock_path = str(root / "blobs.lock")
        self._lock_files = threading.local()

    # ------------------------------------------------------------------ helpers
    def _blob_file(self, sha256: str) -> str:
        return blob_file(self._blobs_dir, sha256)

    def _write_blob(
        self, data: bytes | BinaryIO | Iterable[bytes], *, durable: bool = True
    ) -> tuple[str, int]:
        return write_blob(self._blobs_dir, self._tmp_dir, data, durable=durable)

    @staticmethod
    def _info(row: sqlite3.Row) -> ObjectInfo:
        return ObjectInfo(
            key=row["key"],
            size=row["size"],
            sha256=row["sha256"],
            version=row["sha256"],
            modified=row["modified"],
            origin=row["origin"],
            epoch=row["epoch"],
            seq=row["seq"],
            deleted=bool(row["deleted"]),
            meta=json.loads(row["meta"]),
        )

    def _row(self, db: sqlite3.Connection, key: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = db.execute(
            "SELECT * FROM objects WHERE key = ?", (key,)
        ).fetchone()
        return row

    def _upsert(
        self,
        db: sqlite3.Connection,
        previous: sqlite3.Row | None,
        key: str,
        sha: str,
        size: int,
        *,
        modified: float,
        origin: str,
        epoch: int,
        deleted: bool,
        meta: Mapping[str, str],
    ) -> ObjectInfo:
        """Write ``key``'s row over ``previous`` (its row, read in the same transaction)."""
        if previous is not None and previous["sha256"] != sha:
            # The superseded version's retention window starts now, not when it was written.
            with contextlib.suppress(FileNotFoundError):
                os.utime(self._blob_file(previous["sha256"]))
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM objects").fetchone()[0]
        meta = dict(meta)
        db.execute(
            "INSERT INTO objects (key, sha256, size, modified, origin, epoch, deleted, meta, seq)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size,"
            " modified = excluded.modified, origin = excluded.origin, epoch = excluded.epoch,"
            " deleted = excluded.deleted, meta = excluded.meta, seq = excluded.seq",
            (key, sha, size, modified, origin, epoch, int(deleted), json.dumps(meta), seq),
        )
        return ObjectInfo(key, size, sha, sha, modified, origin, epoch, seq, deleted, meta)

    def _commit(
        self,
        key: str,
        sha: str,
        size: int,
        meta: Mapping[str, str],
        epoch: int,
        durable: bool = False,
    ) -> ObjectInfo:
        with self._index.transaction(durable=durable) as db:
            row = self._row(db, key)
            if (
                row is not None
                and not row["deleted"]
                and row["sha256"] == sha
                and json.loads(row["meta"]) == dict(meta)
                and row["epoch"] == epoch
            ):
                return self._info(row)  # same bytes, same meta: nothing changes
            return self._upsert(
                db,
                row,
                key,
                sha,
                size,
                modified=time.time(),
                origin=self.region,
                epoch=epoch,
                deleted=False,
                meta=meta,
            )

    # ------------------------------------------------------------------ the port
    def put(
        self,
        key: str,
        data: bytes | BinaryIO | Iterable[bytes],
        *,
        meta: Mapping[str, str] | None = None,
        epoch: int = 0,
        durable: bool = False,
    ) -> ObjectInfo:
        check_key(key)
        with self._blob_lock(fcntl.LOCK_SH):
            sha, size = self._write_blob(data, durable=durable)
            return self._commit(key, sha, size, meta or {}, epoch, durable)

    def open(self, key: str, *, version: str | None = None) -> BinaryIO:
        sha = version
        if sha is None:
            info = self.head(key)
            if info is None:
                raise NotFoundError(f"{self.region}: no object {key!r}")
            sha = info.sha256
        try:
            return open(self._blob_file(sha), "rb")
        except FileNotFoundError:
            raise NotFoundError(f"{self.region}: no object {key!r} version {sha[:12]}") from None

    def get(self, key: str, *, version: str | None = None) -> bytes:
        with self.open(key, version=version) as stream:
            return stream.read()

    def get_range(self, key: str, start: int, length: int, *, version: str | None = None) -> bytes:
        with self.open(key, version=version) as stream:
            stream.seek(start)
            return stream.read(length)

    def head(self, key: str) -> ObjectInfo | None:
        rows = self._index.query("SELECT * FROM objects WHERE key = ? AND deleted = 0", (key,))
        return self._info(rows[0]) if rows else None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        rows = self._index.query(
            "SELECT * FROM objects WHERE key >= ? AND key < ? AND deleted = 0 ORDER BY key",
            (prefix, _prefix_end(prefix)),
        )
        return iter([self._info(row) for row in rows])

    def copy(
        self,
        src: str,
        dst: str,
        *,
        version: str | None = None,
        meta: Mapping[str, str] | None = None,
        epoch: int = 0,
        durable: bool = False,
    ) -> ObjectInfo:
        check_key(dst)
        with self._blob_lock(fcntl.LOCK_SH):
            if version is None:
                info = self.head(src)
                if info is None:
                    raise NotFoundError(f"{self.region}: no object {src!r} to copy")
                version, size = info.sha256, info.size
            else:
                try:
                    size = os.stat(self._blob_file(version)).st_size
                except FileNotFoundError:
                    raise NotFoundError(
                        f"{self.region}: no object {src!r} version {version[:12]} to copy"
                    ) from None
            if durable:
                fsync_file(self._blob_file(version))  # an intermediate's bytes, now kept
            return self._commit(dst, version, size, meta or {}, epoch, durable)

    def delete(self, key: str) -> bool:
        with self._index.transaction() as db:
            row = self._row(db, key)
            if row is None or row["deleted"]:
                return False
            self._upsert(
                db,
                row,
                key,
                row["sha256"],
                0,
                modified=time.time(),
                origin=self.region,
                epoch=row["epoch"],
                deleted=True,
                meta={},
            )
            return True

    def changes(
        self, after: int, *, prefix: str = "", limit: int = 1000
    ) -> builtins.list[ObjectInfo]:
        rows = self._index.query(
            # "+key": walk the seq index from ``after`` (the new changes only); on the key index
            # SQLite would read and sort every key under the prefix, each poll.
            "SELECT * FROM objects WHERE seq > ? AND +key >= ? AND +key < ? ORDER BY seq LIMIT ?",
            (after, prefix, _prefix_end(prefix), limit),
        )
        return [self._info(row) for row in rows]

    def apply_replica(self, info: ObjectInfo, data: BinaryIO | None) -> bool:
        with self._blob_lock(fcntl.LOCK_SH):
            return self._apply_replica(info, data)

    def _apply_replica(self, info: ObjectInfo, data: BinaryIO | None) -> bool:
        current = self._index.query("SELECT * FROM objects WHERE key = ?", (info.key,))
        if current and info.rank <= self._info(current[0]).rank:
            return False
        if not info.deleted and not os.path.exists(self._blob_file(info.sha256)):
            # Content-addressed: bytes already here (the same output under two keys, say)
            # need not cross the link again.
            if data is None:
                raise ValueError("a replicated write needs its bytes")
            sha, _ = self._write_blob(data)
            if sha != info.sha256:
                raise ConflictError(
                    f"{self.region}: replica of {info.key!r} arrived corrupted"
                    f" (sha256 {sha[:12]} != {info.sha256[:12]})"
                )
        with self._index.transaction() as db:
            row = self._row(db, info.key)
            if row is not None and info.rank <= self._info(row).rank:
                return False
            self._upsert(
                db,
                row,
                info.key,
                info.sha256,
                info.size,
                modified=info.modified,
                origin=info.origin,
                epoch=info.epoch,
                deleted=info.deleted,
                meta=info.meta,
            )
            return True

    def purge(self, older_than: float) -> Purged:
        """Tombstones older than ``older_than`` leave the index; then every blob no index row
        points at and written before ``older_than`` is deleted (younger ones may belong to a
        write whose row is not committed yet), and so are abandoned temporary files."""
        with self._index.transaction() as db:
            # Never the row holding the newest position: the next write takes MAX(seq) + 1,
            # and a position the replicators have passed must never be given out again.
            tombstones = db.execute(
                "DELETE FROM objects WHERE deleted = 1 AND modified < ?"
                " AND seq < (SELECT MAX(seq) FROM objects)",
                (older_than,),
            ).rowcount
        versions = freed = 0
        # Exclusive: no put, copy or replica may point a row at a blob while it goes.
        with self._blob_lock(fcntl.LOCK_EX):
            used = {row[0] for row in self._index.query("SELECT DISTINCT sha256 FROM objects")}
            for blob in self._blobs.glob("*/*"):
                if blob.name in used:
                    continue
                stat = blob.stat()
                if stat.st_mtime < older_than:
                    blob.unlink()
                    versions, freed = versions + 1, freed + stat.st_size
        for part in self._tmp.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if part.stat().st_mtime < older_than:
                    part.unlink()
        return Purged(tombstones=int(tombstones), versions=versions, bytes=freed)

    @contextlib.contextmanager
    def _blob_lock(self, mode: int) -> Iterator[None]:
        # The lock file stays open, one per thread (closed with the thread's locals when it
        # ends): a lock belongs to an open file, so threads sharing one would not exclude each
        # other (a purge and a put). Opening it for every write cost 10 us of 20-80.
        lock: BinaryIO | None = getattr(self._lock_files, "file", None)
        if lock is None:
            lock = self._lock_files.file = open(self._lock_path, "ab")  # noqa: SIM115
        fcntl.flock(lock, mode)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    def sync(self) -> None:
        self._index.sync()

    # ------------------------------------------------------------------ extras
    def last_seq(self) -> int:
        return int(self._index.query("SELECT COALESCE(MAX(seq), 0) FROM objects")[0][0])

    def blob_path(self, version: str) -> Path:
        """Where the bytes of ``version`` are on disk (the gateway serves files from here)."""
        path = Path(self._blob_file(version))
        if not path.exists():
            raise NotFoundError(f"{self.region}: no blob {version[:12]}")
        return path


def open_store(ws: Workspace, region: str) -> LocalObjectStore:
    return LocalObjectStore(ws.region_dir(region) / "bucket", region)
