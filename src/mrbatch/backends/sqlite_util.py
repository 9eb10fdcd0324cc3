"""SQLite plumbing shared by the embedded backends: one connection per thread, WAL journal so
readers never block the writer, a busy timeout so several processes can share a file, and
``BEGIN IMMEDIATE`` transactions for compare-and-set."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..durable import fsync_file
from ..errors import UnavailableError

__all__ = ["SqliteFile"]


class SqliteFile:
    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self._schema = schema
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        # executescript commits on its own; CREATE ... IF NOT EXISTS makes it idempotent.
        self.connection().executescript(schema)

    def connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            except sqlite3.Error as exc:
                raise UnavailableError(f"{self.path}: cannot open: {exc}") from exc
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a crash of the process; a durable transaction
            # switches to FULL for its commit (see ``transaction``).
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.synchronous = "NORMAL"
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front (no upgrade deadlocks).
        ``durable``: its commit is on stable storage when it returns (synchronous=FULL fsyncs
        the WAL), as an acknowledgement needs; otherwise it survives a crash of the process
        and a power loss may take the newest commits (0.45 ms against 0.02 ms a commit,
        measured here)."""
        db = self.connection()
        wanted = "FULL" if durable else "NORMAL"
        if getattr(self._local, "synchronous", None) != wanted:
            db.execute(f"PRAGMA synchronous={wanted}")
            self._local.synchronous = wanted
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise UnavailableError(f"{self.path}: busy or unavailable: {exc}") from exc
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    def sync(self) -> None:
        """Make every commit so far durable. Commits with synchronous=NORMAL wait in the WAL
        file for a checkpoint (which syncs it, then the database): one fsync of the WAL."""
        try:
            fsync_file(self.path.with_name(self.path.name + "-wal"))
        except FileNotFoundError:
            pass  # the last connection closed: checkpointed into the database and synced

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        try:
            return self.connection().execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            raise UnavailableError(f"{self.path}: query failed: {exc}") from exc

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
