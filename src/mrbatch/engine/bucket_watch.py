"""What every region process, active or not, does with its own bucket: each input version that
appears there (written to it directly, bypassing the access point, or one whose
acknowledgement was cut short, or replicated in) gets its ``Accepted`` record if it has none,
so it is processed all the same; and the bytes of versions the region waits for are noticed as
soon as they arrive. A large input (the size from which uploads find the chunks), and one
replicated in from another region, is given :data:`UPLOAD_RECORD_WAIT` seconds for its own
record to arrive first; a small one written moments ago, :data:`FRESH_INPUT_WAIT`."""

from __future__ import annotations

import logging
import time

from ..access.ledger import accept
from ..access.splithint import HINT_FROM_BYTES
from ..model.keys import INPUT, VERSIONS, run_id_for
from ..model.records import accepted_pk
from ..ports import ObjectInfo, ObjectStore, StateTable

__all__ = ["TRIGGER_CURSOR", "BucketWatch"]

log = logging.getLogger("mrbatch.region")
TRIGGER_CURSOR = "trigger"
_BATCH = 500
# How long an input may wait for its own record (see _accept_seen) before the watcher records it.
UPLOAD_RECORD_WAIT = 2.0
# How long a small input written to this region moments ago may wait for its upload's record.
FRESH_INPUT_WAIT = 1.0


class BucketWatch:
    """Follows one region's bucket: its change feed from a cursor kept in the region's state
    table, and a full listing of ``input/`` every rescan interval (the safety net)."""

    def __init__(self, region: str, store: ObjectStore, table: StateTable) -> None:
        self.region = region
        self.store = store
        self.table = table
        self._cursor: int | None = None
        self._last_scan = 0.0
        # Inputs given time for their own record (see _accept_seen): info, when to record.
        self._waiting: dict[tuple[str, str], tuple[ObjectInfo, float]] = {}

    def poll(self, rescan_interval: float) -> set[str]:
        """Record what appeared since the last poll; the run ids whose version bytes
        (``versions/<run-id>/…``) arrived meanwhile."""
        now = time.monotonic()
        for info, until in list(self._waiting.values()):
            if now >= until:
                self._accept_seen(info, now, wait=False)
        if now - self._last_scan >= rescan_interval:
            # Position first, then list: anything written meanwhile is seen by the feed too.
            cursor = self.store.last_seq()
            for info in self.store.list(INPUT):
                self._accept_seen(info, now)
            self._save_cursor(cursor)
            self._last_scan = now
            return set()
        arrived: set[str] = set()
        changes = self.store.changes(self._position(), limit=_BATCH)
        for info in changes:
            if info.deleted:
                continue
            if info.key.startswith(INPUT):
                self._accept_seen(info, now)
            elif info.key.startswith(VERSIONS):
                arrived.add(info.key[len(VERSIONS) :].split("/", 1)[0])
        if changes:
            self._save_cursor(changes[-1].seq)
        return arrived

    def _accept_seen(self, info: ObjectInfo, now: float, *, wait: bool = True) -> None:
        seen = (info.key, info.sha256)
        if self.table.get(accepted_pk(run_id_for(*seen))) is not None:
            self._waiting.pop(seen, None)
            return
        if wait and (info.size >= HINT_FROM_BYTES or info.origin != self.region):
            # A large input may be an upload through the access point that is about to record
            # it with the chunks it found (access.splithint); recorded here first, the run
            # would split again. An input replicated in is usually followed by its record
            # (objects replicate before records); recorded here first, this region's record
            # (its clock, its name) would win the merge and change the version's place in
            # the acceptance order. Bytes written to the bucket directly, an acknowledgement
            # cut short, or a record that never comes, are recorded here once the wait is over.
            self._waiting.setdefault(seen, (info, now + UPLOAD_RECORD_WAIT))
            return
        if wait and time.time() - info.modified < FRESH_INPUT_WAIT:
            # An upload through the access point writes the bytes, then their record: seen in
            # between (under load, it was), the version was recorded here as written to the
            # bucket directly. Inputs found by a rescan, or after a restart, are older.
            self._waiting.setdefault(seen, (info, now + FRESH_INPUT_WAIT))
            return
        self._waiting.pop(seen, None)
        accept(self.store, self.table, info, source="bucket")
        log.info("%s: recorded %s (sha256 %s) as accepted", self.region, info.key, info.sha256[:12])

    def _position(self) -> int:
        if self._cursor is None:
            self._cursor = self.table.get_cursor(TRIGGER_CURSOR)
        return self._cursor

    def _save_cursor(self, value: int) -> None:
        if value != self._cursor:
            self.table.set_cursor(TRIGGER_CURSOR, value)
            self._cursor = value
