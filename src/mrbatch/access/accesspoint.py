"""The access point: one endpoint over all regions' buckets (the Multi-Region Access Point's
role). Uploads go to the preferred healthy region (the active one, then the others in
configuration order); reads come from whichever region holds the object.

An upload under ``input/`` is acknowledged only when the region that took it has also kept the
version under its own key and written its ``Accepted`` record (:mod:`mrbatch.ledger`); when
either fails, the next region is tried, as for a failed write."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from .. import backends
from ..config.workspace import Workspace
from ..errors import MrbatchError, NotFoundError, UnavailableError
from ..model.keys import INPUT, check_input_key, check_key
from ..model.records import Accepted
from ..ports import ControlPlane, ObjectInfo, ObjectStore, StateTable
from .ledger import accept
from .splithint import Splitter

__all__ = ["AccessPoint", "Located"]

log = logging.getLogger("mrbatch.accesspoint")


@dataclass(frozen=True)
class Located:
    region: str
    info: ObjectInfo
    accepted: Accepted | None = None  # for an upload under input/: its ledger entry


class AccessPoint:
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._stores: dict[str, ObjectStore] = {}
        self._tables: dict[str, StateTable] = {}
        # The routing control, opened once per thread that uploads (opening it for every
        # upload was 0.38 ms of the load generator's 2.6 ms a small file); a thread's own, as
        # a client of the control plane need not be shared safely between threads.
        self._routing = threading.local()

    def store(self, region: str) -> ObjectStore:
        if region not in self._stores:
            self._stores[region] = backends.open_object_store(self.ws, region)
        return self._stores[region]

    def table(self, region: str) -> StateTable:
        if region not in self._tables:
            self._tables[region] = backends.open_state_table(self.ws, region)
        return self._tables[region]

    def preference(self) -> list[str]:
        """Regions in the order uploads and reads try them: active first."""
        order = list(self.ws.regions)
        try:
            control: ControlPlane | None = getattr(self._routing, "control", None)
            if control is None:
                control = self._routing.control = backends.open_control_plane(self.ws)
            active = control.routing().active_region
        except MrbatchError:
            return order  # without the routing control, configuration order it is
        return [active] + [r for r in order if r != active]

    def put(
        self,
        key: str,
        data: bytes | BinaryIO | Iterable[bytes],
        *,
        region: str | None = None,
        source: str = "put",
    ) -> Located:
        """Upload to the preferred healthy region (or exactly ``region``); falls back to the
        next region when one is unavailable. Streams ``data`` (it must be re-readable, i.e.
        bytes or a seekable file, for a fallback after a partial attempt)."""
        check_input_key(key)
        candidates = [self.ws.check_region(region)] if region else self.preference()
        errors: list[str] = []
        start = _position(data)
        for name in candidates:
            if start is not None and hasattr(data, "seek"):
                data.seek(start)
            splitter = Splitter.for_upload(self.ws.config, key, data)
            try:
                store = self.store(name)
                payload = splitter.reading(data) if splitter is not None else data
                info = store.put(key, payload, durable=True)  # acknowledged: on disk
                accepted = None
                if key.startswith(INPUT):
                    hint = splitter.finish(info.size) if splitter is not None else None
                    splitter = None
                    # Acknowledged means kept and recorded: every accepted version is processed.
                    split = hint.to_body() if hint is not None else None
                    accepted = accept(store, self.table(name), info, source=source, split=split)
            except UnavailableError as exc:
                errors.append(f"{name}: {exc}")
                log.warning(
                    "upload of %s to %s failed (%s); trying the next region", key, name, exc
                )
                if start is None and not isinstance(data, bytes | bytearray):
                    break  # a one-shot stream cannot be replayed into another region
                continue
            finally:
                if splitter is not None:
                    splitter.abandon()
            return Located(name, info, accepted)
        raise UnavailableError(
            f"no region accepted {key}: " + "; ".join(errors),
            hint="check `mrbatch status`; every region's bucket is unavailable",
        )

    def locate(self, key: str) -> Located:
        """Where ``key`` can be read from now: the first region (in preference order) holding
        it. Raises NotFoundError when no reachable region has it."""
        check_key(key)
        unavailable: list[str] = []
        for name in self.preference():
            try:
                info = self.store(name).head(key)
            except UnavailableError as exc:
                unavailable.append(f"{name}: {exc}")
                continue
            if info is not None:
                return Located(name, info)
        if unavailable and len(unavailable) == len(self.ws.regions):
            raise UnavailableError(f"no region can be read: {'; '.join(unavailable)}")
        raise NotFoundError(
            f"no region holds {key}"
            + (f" (unreachable: {'; '.join(unavailable)})" if unavailable else ""),
        )

    def open(self, key: str) -> tuple[Located, BinaryIO]:
        located = self.locate(key)
        stream = self.store(located.region).open(key, version=located.info.version)
        return located, stream


def _position(data: object) -> int | None:
    """Where a re-readable stream starts; None for bytes and one-shot streams (a pipe)."""
    tell = getattr(data, "tell", None)
    if tell is None or not getattr(data, "seekable", lambda: True)():
        return None
    try:
        return int(tell())
    except OSError:  # not seekable after all
        return None
