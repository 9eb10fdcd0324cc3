"""The embedded state table: one SQLite file per region, one row per record.

Conditional writes are compare-and-set on ``version`` inside ``BEGIN IMMEDIATE``. Every write
(local or replicated) takes the next ``seq``, which is the change feed the replicators follow.
Cursors (replication and trigger positions) live in a separate table: they describe this replica
and are never replicated.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConflictError, NotFoundError
from ..ports import Record
from .sqlite_util import SqliteFile

if TYPE_CHECKING:
    from ..config.workspace import Workspace

__all__ = ["SqliteStateTable", "open_table"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    pk      TEXT PRIMARY KEY,
    kind    TEXT NOT NULL,
    body    TEXT NOT NULL,
    version INTEGER NOT NULL,
    epoch   INTEGER NOT NULL,
    writer  TEXT NOT NULL,
    updated REAL NOT NULL,
    seq     INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS records_seq ON records (seq);
CREATE INDEX IF NOT EXISTS records_kind ON records (kind, pk);
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SqliteStateTable:
    def __init__(self, path: Path, region: str) -> None:
        self.region = region
        self._db = SqliteFile(path, _SCHEMA)
        columns = {row["name"] for row in self._db.query("PRAGMA table_info(records)")}
        if "deleted" not in columns:  # a table made before records could be deleted
            with self._db.transaction() as db:
                db.execute("ALTER TABLE records ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0")

    @staticmethod
    def _record(row: sqlite3.Row) -> Record:
        return Record(
            pk=row["pk"],
            kind=row["kind"],
            body=json.loads(row["body"]),
            version=row["version"],
            epoch=row["epoch"],
            writer=row["writer"],
            updated=row["updated"],
            seq=row["seq"],
            deleted=bool(row["deleted"]),
        )

    @staticmethod
    def _next_seq(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM records").fetchone()[0])

    def _write(
        self,
        db: sqlite3.Connection,
        pk: str,
        kind: str,
        body: Mapping[str, Any],
        *,
        version: int,
        epoch: int,
        writer: str,
        updated: float,
        deleted: bool = False,
    ) -> Record:
        seq = self._next_seq(db)
        db.execute(
            "INSERT INTO records (pk, kind, body, version, epoch, writer, updated, seq, deleted)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (pk) DO UPDATE SET kind = excluded.kind, body = excluded.body,"
            " version = excluded.version, epoch = excluded.epoch, writer = excluded.writer,"
            " updated = excluded.updated, seq = excluded.seq, deleted = excluded.deleted",
            (
                pk,
                kind,
                json.dumps(dict(body), sort_keys=True),
                version,
                epoch,
                writer,
                updated,
                seq,
                int(deleted),
            ),
        )
        return Record(pk, kind, dict(body), version, epoch, writer, updated, seq, deleted)

    # ------------------------------------------------------------------ the port
    def get(self, pk: str) -> Record | None:
        rows = self._db.query("SELECT * FROM records WHERE pk = ? AND deleted = 0", (pk,))
        return self._record(rows[0]) if rows else None

    def insert(
        self, pk: str, kind: str, body: Mapping[str, Any], *, epoch: int, durable: bool = False
    ) -> Record:
        with self._db.transaction(durable=durable) as db:
            row = db.execute("SELECT version, deleted FROM records WHERE pk = ?", (pk,)).fetchone()
            if row is not None and not row["deleted"]:
                raise ConflictError(f"{self.region}: record {pk} exists already")
            return self._write(
                db,
                pk,
                kind,
                body,
                # Over a deletion the version goes on growing: replicas order by it too.
                version=1 if row is None else row["version"] + 1,
                epoch=epoch,
                writer=self.region,
                updated=time.time(),
            )

    def update(
        self, pk: str, body: Mapping[str, Any], *, expected_version: int, epoch: int
    ) -> Record:
        with self._db.transaction() as db:
            row = db.execute("SELECT * FROM records WHERE pk = ?", (pk,)).fetchone()
            if row is None or row["deleted"]:
                raise NotFoundError(f"{self.region}: no record {pk}")
            if row["version"] != expected_version:
                raise ConflictError(
                    f"{self.region}: record {pk} is at version {row['version']},"
                    f" not {expected_version}"
                )
            if epoch < row["epoch"]:
                # Higher epoch wins: a writer from an older epoch never overrides a newer one.
                raise ConflictError(
                    f"{self.region}: record {pk} was written in epoch {row['epoch']};"
                    f" a write from epoch {epoch} is stale"
                )
            return self._write(
                db,
                pk,
                row["kind"],
                body,
                version=expected_version + 1,
                epoch=epoch,
                writer=self.region,
                updated=time.time(),
            )

    def scan(self, kind: str, *, prefix: str = "") -> Iterator[Record]:
        rows = self._db.query(
            "SELECT * FROM records WHERE kind = ? AND pk >= ? AND pk < ? AND deleted = 0"
            " ORDER BY pk",
            (kind, prefix, prefix + "\U0010ffff"),
        )
        return iter([self._record(row) for row in rows])

    def changes(self, after: int, *, limit: int = 1000) -> list[Record]:
        rows = self._db.query(
            "SELECT * FROM records WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        )
        return [self._record(row) for row in rows]

    def apply_replica(self, record: Record) -> bool:
        with self._db.transaction() as db:
            row = db.execute("SELECT * FROM records WHERE pk = ?", (record.pk,)).fetchone()
            if row is not None and record.rank <= (row["epoch"], row["updated"], row["writer"]):
                return False
            self._write(
                db,
                record.pk,
                record.kind,
                record.body,
                version=record.version,
                epoch=record.epoch,
                writer=record.writer,
                updated=record.updated,
                deleted=record.deleted,
            )
            return True

    def delete(self, pk: str, *, epoch: int) -> bool:
        with self._db.transaction() as db:
            row = db.execute("SELECT * FROM records WHERE pk = ?", (pk,)).fetchone()
            if row is None or row["deleted"]:
                return False
            self._write(
                db,
                pk,
                row["kind"],
                {},
                version=row["version"] + 1,
                epoch=max(epoch, row["epoch"]),  # a deletion never loses to what it deletes
                writer=self.region,
                updated=time.time(),
                deleted=True,
            )
            return True

    def purge(self, older_than: float) -> int:
        with self._db.transaction() as db:
            # Never the row holding the newest position (see LocalObjectStore.purge).
            cursor = db.execute(
                "DELETE FROM records WHERE deleted = 1 AND updated < ?"
                " AND seq < (SELECT MAX(seq) FROM records)",
                (older_than,),
            )
            return int(cursor.rowcount)

    def get_cursor(self, name: str) -> int:
        rows = self._db.query("SELECT value FROM cursors WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else 0

    def set_cursor(self, name: str, value: int) -> None:
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO cursors (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    def sync(self) -> None:
        self._db.sync()

    # ------------------------------------------------------------------ extras
    def last_seq(self) -> int:
        return int(self._db.query("SELECT COALESCE(MAX(seq), 0) FROM records")[0][0])

    def close(self) -> None:
        self._db.close()


def open_table(ws: Workspace, region: str) -> SqliteStateTable:
    return SqliteStateTable(ws.region_dir(region) / "state.sqlite", region)
