"""Built-in replicators: objects and state records flow between regions asynchronously.

One replicator per destination region pulls from every other region: it follows the source's
change feed from a cursor kept in the destination's state table, applies each change with the
convergence rule (higher epoch wins, then the later write), and moves the cursor only after the
change is applied, so a crash repeats at most one batch and applying twice is harmless.
Changes that came from the destination itself are skipped, so nothing ping-pongs.

A source's feed can be rebuilt (``mrbatch restore`` refills a region whose data was lost; its
feed restarts at low positions). The replicator reads it again from the start, instead of
skipping the new changes as seen, when the source's *feed generation* (a cursor of the source
replica, :data:`GENERATION_CURSOR`, set by a restore) differs from the one this destination
last followed, or the feed ends before this destination's cursor (a region wiped and refilled
by other means). A destination rebuilt itself gets back its *own* changes from the others:
while a *reclaim* flag set by the restore is up for a source (:func:`reclaim_name`), changes
that originated in the destination are applied too (the merge rule keeps the newer), until
the replicator has read that source's feed to its end once.

Chunk outputs (``runs/<id>/out/…``, ``…/rejected/…``: a third of the bytes a run writes) are
not copied, only their deletions (so collecting a run also removes what another region wrote
for it before a takeover): only the region running a chunk reads its output; one taking over a
run runs again the chunks whose outputs it lacks, and ``verify`` does not compare them.

Backlog and lag come from the same cursors: the backlog of region R is the number of changes
in R not yet applied in some other region, its lag the age of the oldest of them. With
``backends.replication = "native"`` the provider copies (S3 Cross-Region Replication, DynamoDB
global tables; chunk outputs as it is configured to) and the replicators copy nothing: they
move each cursor past a change once it arrived in the destination (the same version or a later
one there; chunk outputs are not waited for), so backlog and lag mean the same thing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import __version__, backends
from ..config.reload import ConfigWatcher
from ..config.workspace import Workspace
from ..errors import MrbatchError, NotFoundError, UnavailableError
from ..faults import FaultPoints
from ..model.keys import is_chunk_intermediate
from ..ports import ObjectInfo, ObjectStore, Record, StateTable
from ..retry import Backoff

__all__ = [
    "GENERATION_CURSOR",
    "KINDS",
    "Backlog",
    "Replicator",
    "backlog",
    "cursor_name",
    "generation_name",
    "reclaim_name",
    "region_backlog",
]

log = logging.getLogger("mrbatch.replication")
_COUNT_CAP = 100_000


KINDS = ("objects", "records")
# A cursor of a region's own replica: which life of its change feeds this is (0 until a
# restore rebuilds them). Never replicated, like every cursor.
GENERATION_CURSOR = "feed:generation"


def cursor_name(kind: str, source: str) -> str:
    return f"replication:{kind}<-{source}"


def generation_name(source: str) -> str:
    """The destination's note of which generation of ``source``'s feeds its cursors follow."""
    return f"replication:generation<-{source}"


def reclaim_name(kind: str, source: str) -> str:
    """Set (1) after a restore: apply this destination's own changes found in ``source``."""
    return f"replication:{kind}-reclaim<-{source}"


@dataclass(frozen=True)
class Backlog:
    objects: int
    records: int
    oldest: float | None  # the writer's clock of the oldest unreplicated change

    @property
    def total(self) -> int:
        return self.objects + self.records

    def lag(self, now: float) -> float:
        return 0.0 if self.oldest is None else max(0.0, now - self.oldest)


class Replicator:
    """Pulls changes from every other region into ``dest``."""

    def __init__(self, ws: Workspace, dest: str) -> None:
        self.ws = ws
        self.dest = dest
        self.sources = [r for r in ws.regions if r != dest]
        self.faults = FaultPoints(ws.faults_path)
        self.dest_store = backends.open_object_store(ws, dest)
        self.dest_table = backends.open_state_table(ws, dest)
        self.src_stores = {r: backends.open_object_store(ws, r) for r in self.sources}
        self.src_tables = {r: backends.open_state_table(ws, r) for r in self.sources}
        self.batch = ws.config.replication.batch
        self.control = backends.open_control_plane(ws, caller=dest)
        self.applied = {"objects": 0, "records": 0}
        self.errors: dict[str, str] = {}
        self.native = ws.config.backends.replication == "native"
        # This process is the only writer of its cursors (a restore that resets them from
        # outside also starts a new feed generation, which _check_generation sees on the next
        # pass and resets them here too): read each once, not on every pass (on S3 and
        # DynamoDB every read is a request).
        self._cursors: dict[str, int] = {}
        self._generations: dict[str, int] = {}  # source -> the generation our cursors follow
        self._reclaim: dict[tuple[str, str], bool] = {}  # (kind, source) -> flag is up
        self.config = ConfigWatcher(ws, f"replicator {dest}")

    def _cursor(self, name: str) -> int:
        if name not in self._cursors:
            self._cursors[name] = self.dest_table.get_cursor(name)
        return self._cursors[name]

    def _move(self, name: str, value: int) -> None:
        self.dest_table.set_cursor(name, value)
        self._cursors[name] = value

    def blocked(self, source: str, kind: str | None = None) -> str | None:
        """Why replication (of ``kind``: objects or records) from ``source`` cannot run now
        (a chaos fault), or None."""
        points = ["replication"] + ([f"replication:{kind}"] if kind else [])
        for region in (source, self.dest):
            for point in points:
                if self.faults.active(point, region):
                    return f"{point} stalled in {region}"
        if self.faults.active("partition", source, self.dest):
            return f"{source} and {self.dest} are partitioned"
        return None

    def run_once(self) -> int:
        """One pass over every source; returns how many changes were applied."""
        applied = 0
        for source in self.sources:
            if self.blocked(source):
                continue
            try:
                self._check_generation(source)
                if not self.blocked(source, "objects"):
                    applied += self._objects(source)
                if not self.blocked(source, "records"):
                    applied += self._records(source)
            except UnavailableError as exc:
                self.errors[source] = str(exc)
                log.warning("replication %s -> %s: %s", source, self.dest, exc)
            else:
                self.errors.pop(source, None)
        return applied

    def _check_generation(self, source: str) -> None:
        """Start over on ``source``'s feeds when they were rebuilt since we last read them."""
        try:
            current = self.src_tables[source].get_cursor(GENERATION_CURSOR)
        except UnavailableError:
            return  # its state table is out: objects may still flow; checked next pass
        name = generation_name(source)
        if source not in self._generations:
            self._generations[source] = self.dest_table.get_cursor(name)
        if current == self._generations[source]:
            return
        log.warning(
            "replication %s -> %s: %s's change feeds were rebuilt (generation %d, was %d);"
            " reading them again from the start",
            *(source, self.dest, source, current, self._generations[source]),
        )
        for kind in KINDS:
            self._move(cursor_name(kind, source), 0)
        self.dest_table.set_cursor(name, current)
        self._generations[source] = current

    def _went_back(self, source: str, kind: str, cursor: int, last: int) -> bool:
        """True (and the cursor reset) when ``source``'s feed ends before our cursor."""
        if last >= cursor:
            return False
        log.warning(
            "replication %s -> %s: %s's %s feed ends at %d, before our cursor %d (it was"
            " rebuilt); reading it again from the start",
            *(source, self.dest, source, kind, last, cursor),
        )
        self._move(cursor_name(kind, source), 0)
        return True

    def _reclaiming(self, kind: str, source: str) -> bool:
        if (kind, source) not in self._reclaim:
            self._reclaim[(kind, source)] = bool(
                self.dest_table.get_cursor(reclaim_name(kind, source))
            )
        return self._reclaim[(kind, source)]

    def _caught_up(self, kind: str, source: str, read: int) -> None:
        """A reclaim ends once ``source``'s feed has been read to its end."""
        if read < self.batch and self._reclaiming(kind, source):
            self.dest_table.set_cursor(reclaim_name(kind, source), 0)
            self._reclaim[(kind, source)] = False
            log.info("replication %s -> %s: own %s reclaimed", source, self.dest, kind)

    def _objects(self, source: str) -> int:
        src: ObjectStore = self.src_stores[source]
        name = cursor_name("objects", source)
        cursor = self._cursor(name)
        changes = src.changes(cursor, limit=self.batch)
        if not changes and cursor and self._went_back(source, "objects", cursor, src.last_seq()):
            return 0
        reclaim = self._reclaiming("objects", source)
        applied, read = 0, 0
        for info in changes:
            foreign = info.origin != self.dest
            if is_chunk_intermediate(info.key) and (self.native or not info.deleted):
                pass  # a chunk's output stays where the chunk ran (see the module)
            elif foreign and self.native:
                if not self._object_arrived(info):
                    break  # the provider has not copied it yet: look again next pass
            elif foreign or reclaim:
                # A reclaimed change of our own is copied even in native mode: the provider
                # does not copy back what was written before this region was rebuilt.
                applied += int(self._apply_object(src, info))
            cursor, read = info.seq, read + 1
        if cursor != self._cursors[name]:
            if applied:
                # The cursor (state table) and the changes (the store's index) are in two
                # files: the changes go to stable storage first, or a power loss could keep
                # the cursor without them, and those objects would never be copied again.
                self.dest_store.sync()
            self._move(name, cursor)
        if read == len(changes):  # not when native replication has yet to deliver one
            self._caught_up("objects", source, read)
        self.applied["objects"] += applied
        return applied

    def _records(self, source: str) -> int:
        src: StateTable = self.src_tables[source]
        name = cursor_name("records", source)
        cursor = self._cursor(name)
        changes = src.changes(cursor, limit=self.batch)
        if not changes and cursor and self._went_back(source, "records", cursor, src.last_seq()):
            return 0
        reclaim = self._reclaiming("records", source)
        applied, read = 0, 0
        for record in changes:
            foreign = record.writer != self.dest
            if foreign and self.native:
                if not self._record_arrived(record):
                    break
            elif foreign or reclaim:
                applied += int(self.dest_table.apply_replica(record))
            cursor, read = record.seq, read + 1
        if cursor != self._cursors[name]:
            self._move(name, cursor)
        if read == len(changes):
            self._caught_up("records", source, read)
        self.applied["records"] += applied
        return applied

    def _apply_object(self, src: ObjectStore, info: ObjectInfo) -> bool:
        if info.deleted:
            return self.dest_store.apply_replica(info, None)
        try:
            with src.open(info.key, version=info.version) as stream:
                return self.dest_store.apply_replica(info, stream)
        except NotFoundError:
            # Its bytes were collected; fine when the key has moved on since (a feed that
            # lists every write, as S3's does, names superseded versions): the newer change
            # comes later in the feed. Otherwise the source lost bytes it still shows.
            current = src.head(info.key)
            if current is not None and current.version == info.version:
                raise
            log.info(
                "replication: %s of %s is gone at the source; passed", info.key, info.version[:12]
            )
            return False

    def _object_arrived(self, info: ObjectInfo) -> bool:
        """The destination holds ``info``'s version of its key, or a later one."""
        held = self.dest_store.head(info.key)
        if held is None:
            return info.deleted
        return held.rank >= info.rank

    def _record_arrived(self, record: Record) -> bool:
        held = self.dest_table.get(record.pk)  # a tombstone reads as None
        if held is None:
            return record.deleted
        return held.rank >= record.rank

    def heartbeat(self, last_error: str | None) -> None:
        """Tell the control plane this replicator is alive (readiness checks look for it)."""
        try:
            self.control.heartbeat(
                f"replicator:{self.dest}",
                os.getpid(),
                {
                    "applied": dict(self.applied),
                    "blocked": {s: why for s in self.sources if (why := self.blocked(s))},
                    "errors": dict(self.errors),
                    "last_error": last_error,
                    "version": __version__,
                    "config": self.config.report(),
                },
            )
        except MrbatchError as exc:
            log.warning("replicator %s: heartbeat failed: %s", self.dest, exc)

    def run_forever(self, stop: threading.Event) -> None:
        """Replicate until ``stop.is_set()``; errors are logged and retried with backoff."""
        interval = self.ws.config.replication.interval
        beat_every = self.ws.config.timing.heartbeat_interval
        failures = 0
        backoff = Backoff(base=2 * interval, cap=5.0)
        last_beat = 0.0
        last_error: str | None = None
        while not stop.is_set():
            edited = self.config.poll()
            if edited is not None:  # an edit of mrbatch.toml: interval, batch, heartbeat
                self.ws = edited
                self.batch = edited.config.replication.batch
                interval = edited.config.replication.interval
                beat_every = edited.config.timing.heartbeat_interval
                backoff = Backoff(base=2 * interval, cap=5.0)
                last_beat = 0.0  # report the configuration it now runs with at once
            if time.monotonic() - last_beat >= beat_every:
                self.heartbeat(last_error)
                last_beat = time.monotonic()
            try:
                busy = self.run_once()
                failures = 0
                last_error = None
            except MrbatchError as exc:
                failures += 1
                busy = 0
                last_error = str(exc)
                log.warning("replication into %s: %s", self.dest, exc)
            except Exception as exc:
                failures += 1
                busy = 0
                last_error = repr(exc)
                log.exception("replication into %s failed", self.dest)
            if busy and not failures:
                continue  # more may be waiting: go again at once
            stop.wait(backoff.delay(failures) if failures else interval)


def _count_pending(
    items: list[tuple[int, str, float]], dest: str | None
) -> tuple[int, float | None]:
    count, oldest = 0, None
    for _seq, origin, when in items:
        if origin == dest:
            continue
        count += 1
        oldest = when if oldest is None else min(oldest, when)
    return count, oldest


def backlog(ws: Workspace, source: str, dest: str) -> Backlog:
    """Changes in ``source`` that ``dest`` has not applied yet (all of them when ``source``'s
    feeds were rebuilt since ``dest`` read them; ``dest``'s own too while it reclaims them).

    Raises UnavailableError when either side cannot be read (then the backlog is unknown)."""
    dest_table = backends.open_state_table(ws, dest)
    store = backends.open_object_store(ws, source)
    table = backends.open_state_table(ws, source)
    rebuilt = table.get_cursor(GENERATION_CURSOR) != dest_table.get_cursor(generation_name(source))

    def start(kind: str, last_seq: Callable[[], int]) -> int:
        cursor = 0 if rebuilt else dest_table.get_cursor(cursor_name(kind, source))
        return 0 if cursor and last_seq() < cursor else cursor  # a feed gone backwards

    def own(kind: str) -> str | None:  # dest's own changes count too while it reclaims them
        return None if dest_table.get_cursor(reclaim_name(kind, source)) else dest

    obj_items = [
        (i.seq, i.origin, i.modified)
        for i in store.changes(start("objects", store.last_seq), limit=_COUNT_CAP)
        if i.deleted or not is_chunk_intermediate(i.key)  # never copied: no backlog
    ]
    rec_items = [
        (r.seq, r.writer, r.updated)
        for r in table.changes(start("records", table.last_seq), limit=_COUNT_CAP)
    ]
    objects, oldest_obj = _count_pending(obj_items, own("objects"))
    records, oldest_rec = _count_pending(rec_items, own("records"))
    oldest = min((t for t in (oldest_obj, oldest_rec) if t is not None), default=None)
    return Backlog(objects=objects, records=records, oldest=oldest)


def region_backlog(ws: Workspace, region: str) -> Backlog:
    """Everything ``region`` holds that some other region has not applied yet."""
    objects = records = 0
    oldest: float | None = None
    for dest in ws.regions:
        if dest == region:
            continue
        part = backlog(ws, region, dest)
        objects += part.objects
        records += part.records
        if part.oldest is not None:
            oldest = part.oldest if oldest is None else min(oldest, part.oldest)
    return Backlog(objects=objects, records=records, oldest=oldest)
