"""The embedded control plane: the routing control in one SQLite file shared by all regions.

It plays Route 53 ARC's part: a routing control (which region is ACTIVE, under which epoch) and
safety rules evaluated inside the same transaction as the change, so a refused switch changes
nothing. ``caller`` is the region a process acts for (the factory's fault wrapper fails its
calls while a ``control`` fault is armed for that region, as a partition from the control
plane would).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConflictError, NotFoundError, SafetyRuleError, UsageError
from ..ports import Heartbeat, RegionState, Routing
from .sqlite_util import SqliteFile

if TYPE_CHECKING:
    import sqlite3

    from ..config.workspace import Workspace

__all__ = ["EPOCH_PREFIX", "SqliteControlPlane", "open_control_plane"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS routing (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    epoch         INTEGER NOT NULL,
    active_region TEXT NOT NULL,
    phase         TEXT NOT NULL,
    switched_at   REAL NOT NULL,
    plan_id       TEXT
);
CREATE TABLE IF NOT EXISTS regions (name TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS heartbeats (
    region TEXT PRIMARY KEY, pid INTEGER, at REAL NOT NULL, info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (name TEXT PRIMARY KEY, body TEXT NOT NULL);
"""
PHASES = ("ACTIVE", "FAILOVER")
# The epoch log: one document per epoch naming the region made ACTIVE in it, written in the
# same transaction as the change, so `mrbatch verify` can check who was allowed to publish.
EPOCH_PREFIX = "epoch/"


def _log_epoch(
    db: sqlite3.Connection, epoch: int, region: str, at: float, plan_id: str | None
) -> None:
    body = {"epoch": epoch, "region": region, "at": at, "plan_id": plan_id}
    db.execute(
        "INSERT INTO documents (name, body) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET body = excluded.body",
        (f"{EPOCH_PREFIX}{epoch:08d}", json.dumps(body)),
    )


class SqliteControlPlane:
    def __init__(self, path: Path, caller: str | None) -> None:
        self.caller = caller
        self._db = SqliteFile(path, _SCHEMA)

    def _read(self, db: sqlite3.Connection) -> Routing:
        row = db.execute("SELECT * FROM routing WHERE id = 1").fetchone()
        if row is None:
            raise NotFoundError(
                "the routing control is not initialized",
                hint="run `mrbatch init` (or `mrbatch up`, which initializes it)",
            )
        regions = {r["name"]: r["state"] for r in db.execute("SELECT * FROM regions ORDER BY name")}
        return Routing(
            epoch=row["epoch"],
            active_region=row["active_region"],
            regions=regions,
            phase=row["phase"],
            switched_at=row["switched_at"],
            plan_id=row["plan_id"],
        )

    # ------------------------------------------------------------------ the port
    def initialize(self, regions: list[str], active: str) -> Routing:
        if active not in regions:
            raise UsageError(f"active region {active!r} is not one of {regions}")
        with self._db.transaction() as db:
            if db.execute("SELECT 1 FROM routing WHERE id = 1").fetchone() is None:
                db.execute(
                    "INSERT INTO routing (id, epoch, active_region, phase, switched_at)"
                    " VALUES (1, 1, ?, 'ACTIVE', 0)",  # no switch yet: the anti-flap rule is free
                    (active,),
                )
                _log_epoch(db, 1, active, time.time(), None)
            for name in regions:
                state = RegionState.ACTIVE if name == active else RegionState.STANDBY
                db.execute(
                    "INSERT INTO regions (name, state) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (name, state),
                )
            return self._read(db)

    def routing(self) -> Routing:
        return self._read(self._db.connection())

    def confirm(self, region: str, epoch: int) -> bool:
        try:
            routing = self.routing()
        except NotFoundError:
            return False
        return (
            routing.epoch == epoch
            and routing.active_region == region
            and routing.regions.get(region) == RegionState.ACTIVE
            and routing.phase == "ACTIVE"
        )

    def switch(
        self,
        target: str,
        *,
        expected_epoch: int,
        min_interval: float,
        force: bool = False,
        phase: str = "ACTIVE",
        plan_id: str | None = None,
    ) -> Routing:
        if phase not in PHASES:
            raise UsageError(f"unknown phase {phase!r} (known: {', '.join(PHASES)})")
        with self._db.transaction() as db:
            current = self._read(db)
            if target not in current.regions:
                raise UsageError(f"unknown region {target!r}")
            if current.epoch != expected_epoch:
                raise ConflictError(
                    f"another switch ran first: the epoch is {current.epoch}, not {expected_epoch}",
                    hint="check `mrbatch status` and `mrbatch plan history`",
                )
            if current.active_region == target and current.regions[target] == RegionState.ACTIVE:
                raise SafetyRuleError(
                    f"rule 'one-active': {target} is already the active region",
                )
            since = time.time() - current.switched_at
            if since < min_interval and not force:
                raise SafetyRuleError(
                    f"rule 'min-switch-interval': the last switch was {since:.0f}s ago,"
                    f" the minimum is {min_interval:.0f}s ({min_interval - since:.0f}s left)",
                    hint="wait, or pass --force if flapping is what you want",
                )
            now = time.time()
            db.execute(
                "UPDATE routing SET epoch = ?, active_region = ?, phase = ?, switched_at = ?,"
                " plan_id = ? WHERE id = 1",
                (expected_epoch + 1, target, phase, now, plan_id),
            )
            # Exactly one ACTIVE region, in the same transaction (the assertion rule).
            db.execute(
                "UPDATE regions SET state = ? WHERE state = ? AND name != ?",
                (RegionState.FENCED, RegionState.ACTIVE, target),
            )
            db.execute("UPDATE regions SET state = ? WHERE name = ?", (RegionState.ACTIVE, target))
            _log_epoch(db, expected_epoch + 1, target, now, plan_id)
            after = self._read(db)
            active = [n for n, s in after.regions.items() if s == RegionState.ACTIVE]
            if active != [target]:
                raise SafetyRuleError(f"rule 'one-active': would leave {active} active")
            return after

    def set_phase(self, phase: str, *, expected_epoch: int) -> Routing:
        if phase not in PHASES:
            raise UsageError(f"unknown phase {phase!r} (known: {', '.join(PHASES)})")
        with self._db.transaction() as db:
            current = self._read(db)
            if current.epoch != expected_epoch:
                raise ConflictError(
                    f"the routing changed: epoch is {current.epoch}, not {expected_epoch}"
                )
            db.execute("UPDATE routing SET phase = ? WHERE id = 1", (phase,))
            return self._read(db)

    def set_region_state(self, region: str, state: str, *, expected_epoch: int) -> Routing:
        if state not in (RegionState.STANDBY, RegionState.FENCED):
            raise SafetyRuleError(
                f"rule 'one-active': only a switch makes a region {state}",
                hint="use `mrbatch failover --to REGION`",
            )
        with self._db.transaction() as db:
            current = self._read(db)
            if region not in current.regions:
                raise UsageError(f"unknown region {region!r}")
            if current.epoch != expected_epoch:
                raise ConflictError(
                    f"the routing changed: epoch is {current.epoch}, not {expected_epoch}"
                )
            if region == current.active_region:
                raise SafetyRuleError(
                    f"rule 'one-active': {region} is the active region; it can only be"
                    " replaced by a switch, never left without a successor"
                )
            db.execute("UPDATE regions SET state = ? WHERE name = ?", (state, region))
            return self._read(db)

    def heartbeat(self, region: str, pid: int | None, info: Mapping[str, Any]) -> None:
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO heartbeats (region, pid, at, info) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (region) DO UPDATE SET pid = excluded.pid, at = excluded.at,"
                " info = excluded.info",
                (region, pid, time.time(), json.dumps(dict(info))),
            )

    def heartbeats(self) -> dict[str, Heartbeat]:
        rows = self._db.query("SELECT * FROM heartbeats")
        return {
            r["region"]: Heartbeat(r["region"], r["pid"], r["at"], json.loads(r["info"]))
            for r in rows
        }

    # ------------------------------------------------------------------ documents
    def put_document(self, name: str, body: Mapping[str, Any]) -> None:
        """Small JSON documents kept with the control plane (plan executions, say)."""
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO documents (name, body) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET body = excluded.body",
                (name, json.dumps(dict(body))),
            )

    def documents(self, prefix: str) -> dict[str, dict[str, Any]]:
        rows = self._db.query(
            "SELECT * FROM documents WHERE name >= ? AND name < ? ORDER BY name",
            (prefix, prefix + "\U0010ffff"),
        )
        return {r["name"]: json.loads(r["body"]) for r in rows}


def open_control_plane(ws: Workspace, caller: str | None = None) -> SqliteControlPlane:
    return SqliteControlPlane(ws.control_path, caller)
