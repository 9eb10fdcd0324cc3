"""Named fault points that tests and chaos experiments arm, instead of monkeypatching internals.

Faults live in ``<data_dir>/faults.json`` so that running region, replicator and gateway
processes see them: each process re-reads the file when its modification time changes. A fault
names a ``point`` and optionally a ``region`` and an expiry; production code asks
``FaultPoints.check(point, region)`` at the places where the real dependency would fail.

Points used by the code:

``storage``      every object-store call of the region fails (UnavailableError)
``state``        every state-table call of the region fails
``control``      every control-plane call made by the region fails
``replication``  replication into or out of the region stalls
``replication:objects`` / ``replication:records``  only that half of replication stalls
``partition``    replication between ``region`` and ``peer`` stalls (both directions)
``crash:<name>`` the process calling ``crash_point(<name>)`` exits at once (like SIGKILL)
``chunk-error``  chunk tasks of the region raise (a poisoned dependency)
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import UnavailableError

__all__ = ["Fault", "FaultPoints"]


@dataclass(frozen=True)
class Fault:
    point: str
    region: str | None = None
    peer: str | None = None
    until: float | None = None
    id: str = ""
    note: str = ""

    def matches(self, point: str, region: str | None, peer: str | None, now: float) -> bool:
        if self.point != point or (self.until is not None and now >= self.until):
            return False
        if point == "partition":
            # A partition cuts the link between two regions, whichever side asks.
            pair = {region, peer}
            return (self.region is None or self.region in pair) and (
                self.peer is None or self.peer in pair
            )
        return self.region is None or self.region == region


class FaultPoints:
    """The armed faults of one workspace, cheap to check on every call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._faults: tuple[Fault, ...] = ()

    # ------------------------------------------------------------------ reading
    def _load(self) -> tuple[Fault, ...]:
        # One stat() per check (about a microsecond): a fault armed by another process takes
        # effect on the very next call.
        try:
            st = self.path.stat()
            # Every write replaces the file, so the inode changes even within one mtime tick.
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            self._stamp, self._faults = None, ()
            return self._faults
        if stamp != self._stamp:
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                self._faults = tuple(Fault(**item) for item in raw.get("faults", []))
            except (OSError, ValueError, TypeError):
                self._faults = ()  # a half-written file is re-read on the next change
            self._stamp = stamp
        return self._faults

    def active(
        self, point: str, region: str | None = None, peer: str | None = None
    ) -> Fault | None:
        now = time.time()
        for fault in self._load():
            if fault.matches(point, region, peer, now):
                return fault
        return None

    def check(self, point: str, region: str | None = None, peer: str | None = None) -> None:
        """Raise UnavailableError when a fault is armed for ``point`` (and region)."""
        fault = self.active(point, region, peer)
        if fault is not None:
            where = f" in {fault.region}" if fault.region else ""
            raise UnavailableError(
                f"injected fault: {point}{where} is unavailable"
                + (f" ({fault.note})" if fault.note else ""),
                hint="a chaos experiment armed this fault; `mrbatch chaos` lists and clears it",
            )

    def crash_point(self, name: str, region: str | None = None) -> None:
        """Exit the process at once when ``crash:<name>`` is armed (simulates SIGKILL)."""
        if self.active(f"crash:{name}", region) is not None:
            os._exit(137)

    # ------------------------------------------------------------------ arming
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(".faults.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _write(self, faults: list[Fault]) -> None:
        tmp = self.path.with_name(f".faults.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps({"faults": [asdict(f) for f in faults]}, indent=1))
        os.replace(tmp, self.path)

    def all(self) -> list[Fault]:
        now = time.time()
        return [f for f in self._load() if f.until is None or f.until > now]

    def arm(
        self,
        point: str,
        *,
        region: str | None = None,
        peer: str | None = None,
        duration: float | None = None,
        note: str = "",
    ) -> Fault:
        fault = Fault(
            point=point,
            region=region,
            peer=peer,
            until=None if duration is None else time.time() + duration,
            id=uuid.uuid4().hex[:12],
            note=note,
        )
        with self._locked():
            self._write([*self.all(), fault])
        return fault

    def disarm(self, fault_id: str | None = None) -> int:
        """Remove one fault (or all when ``fault_id`` is None); returns how many were removed."""
        with self._locked():
            current = self.all()
            keep = [] if fault_id is None else [f for f in current if f.id != fault_id]
            self._write(keep)
        return len(current) - len(keep)

    @contextmanager
    def armed(self, point: str, **kwargs: Any) -> Iterator[Fault]:
        fault = self.arm(point, **kwargs)
        try:
            yield fault
        finally:
            self.disarm(fault.id)
