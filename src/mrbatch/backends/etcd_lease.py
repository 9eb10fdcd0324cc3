"""The promise behind an etcd region's own ``confirm``: its lease and the holder key.

A region process holds a lease, granted on its first heartbeat or confirmation and renewed by
its own calls (every read of the routing its loop makes): a process cut off from etcd — by the
network, by its ``control`` fault point, or stuck — cannot renew it. A confirmation is a promise
that the region may publish or mail for ``promise`` (half the lease) seconds. It is given only

- after a linearizable read shows the region ACTIVE in that epoch, in phase ACTIVE;
- while no other region holds the ``holder`` key, which the region then puts on its lease in a
  transaction that compares the routing's ``mod_revision`` with the one read;
- while the lease is known to last longer than the promise (the local deadline is measured
  from when the last renewal was *sent*, so etcd's own expiry is never earlier).

A region gives the holder key up when it sees it is no longer the active one and its last
promise has run out; otherwise the key goes with its lease. Either way, every promise of the
old region has ended before the new region's first one. docs/DESIGN.md has the argument.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import UnavailableError
from ..ports import RegionState, Routing
from .etcd_client import EtcdClient, KeyValue, b64, prefix_end

__all__ = ["Promises", "kvs", "may_hold", "prefix_range", "put_request", "routing_of"]

log = logging.getLogger("mrbatch.control")


def routing_of(data: Mapping[str, Any]) -> Routing:
    return Routing(
        epoch=int(data["epoch"]),
        active_region=str(data["active_region"]),
        regions=dict(sorted(data["regions"].items())),
        phase=str(data["phase"]),
        switched_at=float(data["switched_at"]),
        plan_id=data.get("plan_id"),
    )


def put_request(key: str, body: Mapping[str, Any], lease: int = 0) -> dict[str, Any]:
    request: dict[str, Any] = {"key": b64(key), "value": b64(json.dumps(dict(body)))}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def kvs(response: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue.parse(kv) for kv in response.get("response_range", {}).get("kvs", [])]


def may_hold(routing: Routing, region: str | None, epoch: int) -> bool:
    """Is ``region`` the active region of ``epoch``, in phase ACTIVE (the fencing check)?"""
    return (
        routing.epoch == epoch
        and routing.active_region == region
        and routing.regions.get(region or "") == RegionState.ACTIVE
        and routing.phase == "ACTIVE"
    )


def prefix_range(prefix: str) -> dict[str, str]:
    return {"key": b64(prefix), "range_end": prefix_end(prefix)}


class Promises:
    """One region process's lease, holder key and promises (``caller`` is its region)."""

    def __init__(
        self, client: EtcdClient, key: Callable[..., str], caller: str | None, lease_ttl: int
    ) -> None:
        self.client = client
        self._key = key
        self.caller = caller
        self.lease_ttl = lease_ttl
        # A confirmation holds this long; the lease must have at least this long to run.
        self.promise = lease_ttl / 2
        self._lock = threading.RLock()
        self._lease: int | None = None
        self._valid_until = 0.0  # monotonic: the lease cannot expire on etcd before this
        self._renewed = 0.0
        self._holding: int | None = None  # the epoch this process holds the holder key for
        self._promised_until = 0.0  # monotonic: the end of the last promise made
        self._fenced_logged = False

    @property
    def lease(self) -> int | None:
        return self._lease

    def ensure(self) -> int:
        """This process's lease, granted or renewed when due. Raises UnavailableError."""
        with self._lock:
            now = time.monotonic()
            if self._lease is not None and now - self._renewed < self.lease_ttl / 4:
                return self._lease
            sent = time.monotonic()
            if self._lease is not None:
                try:
                    ttl = self.client.keepalive(self._lease)
                except UnavailableError as exc:
                    if now >= self._valid_until - self.promise and not self._fenced_logged:
                        self._fenced_logged = True
                        log.warning(
                            "%s: self-fenced: the lease could not be renewed for %.1fs (%s);"
                            " publishing and mailing stop until the control plane answers",
                            self.caller,
                            now - self._renewed,
                            exc.message,
                        )
                    raise
                if ttl > 0:
                    self._valid_until, self._renewed = sent + ttl, sent
                    if self._fenced_logged:
                        log.warning("%s: the control plane answers again", self.caller)
                        self._fenced_logged = False
                    return self._lease
                self._lost("it expired")
            lease, ttl = self.client.grant(self.lease_ttl)
            self._lease, self._valid_until, self._renewed = lease, sent + ttl, sent
            self.lease_ttl, self.promise = ttl, ttl / 2
            if self._fenced_logged:
                log.warning("%s: the control plane answers again (new lease)", self.caller)
                self._fenced_logged = False
            return lease

    def _lost(self, why: str) -> None:
        if self._holding is not None or not self._fenced_logged:
            log.warning(
                "%s: lease lost (%s): this process cannot confirm it is ACTIVE, so it"
                " publishes and mails nothing until the control plane answers",
                self.caller,
                why,
            )
        self._lease, self._holding, self._fenced_logged = None, None, True

    def maintain(self, routing: Routing) -> None:
        """Renew the lease when due, and give up the holder key once this region is no longer
        active and its last promise has run out. Errors here are not the caller's."""
        if self._lease is None:
            return
        try:
            self.ensure()
            holding = self._holding
            done = time.monotonic() >= self._promised_until
            if holding is not None and done and not may_hold(routing, self.caller, holding):
                self._release()
        except UnavailableError as exc:
            log.debug("%s: lease upkeep failed: %s", self.caller, exc)

    def _release(self) -> None:
        assert self.caller is not None and self._lease is not None
        key = self._key("holder", self.caller)
        self.client.txn(
            [{"key": b64(key), "target": "LEASE", "lease": str(self._lease), "result": "EQUAL"}],
            [{"request_delete_range": {"key": b64(key)}}],
        )
        log.info("%s: released the holder key of epoch %s", self.caller, self._holding)
        self._holding = None

    def confirm(self, region: str, epoch: int) -> bool | None:
        with self._lock:
            return self._confirm(region, epoch)

    def _confirm(self, region: str, epoch: int) -> bool | None:
        """True: a promise for ``self.promise`` seconds; False: not active in ``epoch``;
        None: the routing changed between the read and becoming holder (ask again)."""
        lease = self.ensure()
        _, responses = self.client.txn(
            [],
            [
                {"request_range": {"key": b64(self._key("routing"))}},
                {"request_range": prefix_range(self._key("holder", ""))},
            ],
            write=False,
        )
        routing_kvs, holders = kvs(responses[0]), kvs(responses[1])
        if not routing_kvs:
            return False
        routing, revision = (
            routing_of(json.loads(routing_kvs[0].value)),
            routing_kvs[0].mod_revision,
        )
        if not may_hold(routing, region, epoch):
            self.maintain(routing)
            return False
        mine = self._key("holder", region)
        others = [kv for kv in holders if kv.key != mine]
        if others:
            other = others[0].key.rsplit("/", 1)[-1]
            raise UnavailableError(
                f"{region} cannot confirm epoch {epoch} yet: {other} may still act on a"
                f" confirmation it was given, until it lets go or its lease runs out"
                f" (at most {self.lease_ttl}s)",
                hint="this clears by itself; publishing resumes then",
            )
        held = next((kv for kv in holders if kv.key == mine), None)
        if held is None or held.lease != lease or json.loads(held.value).get("epoch") != epoch:
            body = {"epoch": epoch, "lease": lease, "pid": os.getpid(), "at": time.time()}
            unchanged = {
                "key": b64(self._key("routing")),
                "target": "MOD",
                "mod_revision": str(revision),
                "result": "EQUAL",
            }
            won, _ = self.client.txn([unchanged], [put_request(mine, body, lease)])
            if not won:
                return None
            log.info("%s: holds the right to publish in epoch %d", region, epoch)
        self._holding = epoch
        now = time.monotonic()
        if self._valid_until - now < self.promise:
            raise UnavailableError(
                f"{region}: its lease runs out in {self._valid_until - now:.2f}s, sooner than a"
                " confirmation lasts; not confirming until it is renewed"
            )
        self._promised_until = max(self._promised_until, now + self.promise)
        return True
