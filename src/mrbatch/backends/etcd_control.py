"""The control plane on an etcd cluster: what two real regions can share (Route 53 ARC's role).

Keys, under ``etcd.prefix``: ``routing`` (one JSON document: epoch, active region, every
region's state, phase), ``doc/<name>`` (the epoch log ``doc/epoch/<n>``, plan logs),
``heartbeat/<name>`` (the latest heartbeat, kept), ``alive/<name>`` (attached to the sender's
lease: present while it lives) and ``holder/<region>`` (attached to the lease of the region
process that confirmed it may publish; see below).

Every change of the routing is one transaction that compares the routing key's
``mod_revision`` with the one read, so the safety rules are checked against exactly the state
that is replaced, and the epoch log entry is written in the same transaction. Reads are
linearizable (through a quorum).

Self-fencing. A region process holds a lease, renewed by its own calls (so a process cut off
from etcd, or stuck, loses it). ``confirm`` by a region for itself is a promise that holds for
``lease_ttl / 2`` seconds: it is given only while the lease has at least that long to run, after
a linearizable read that shows the region ACTIVE in that epoch, and once the region is the
``holder`` (a key on its lease). A region becomes holder only while no other region is one,
and gives it up when it sees it is no longer active and its last promise has run out; or its
lease expires, which is no earlier than its own promises end. So the new region's first
confirmation comes after every promise of the old one has ended. docs/DESIGN.md has the
argument.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConflictError, NotFoundError, SafetyRuleError, UnavailableError, UsageError
from ..ports import Heartbeat, RegionState, Routing
from .etcd_client import AmbiguousWrite, EtcdClient, KeyValue, b64, prefix_end

if TYPE_CHECKING:
    from ..config.workspace import Workspace

__all__ = ["EtcdControlPlane", "open_control_plane"]

log = logging.getLogger("mrbatch.control")
PHASES = ("ACTIVE", "FAILOVER")
EPOCH_PREFIX = "epoch/"


def _routing(data: Mapping[str, Any]) -> Routing:
    return Routing(
        epoch=int(data["epoch"]),
        active_region=str(data["active_region"]),
        regions=dict(sorted(data["regions"].items())),
        phase=str(data["phase"]),
        switched_at=float(data["switched_at"]),
        plan_id=data.get("plan_id"),
    )


def _put(key: str, body: Mapping[str, Any], lease: int = 0) -> dict[str, Any]:
    request: dict[str, Any] = {"key": b64(key), "value": b64(json.dumps(dict(body)))}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def _kvs(response: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue.parse(kv) for kv in response.get("response_range", {}).get("kvs", [])]


class EtcdControlPlane:
    def __init__(
        self,
        endpoints: list[str],
        *,
        prefix: str,
        lease_ttl: float,
        timeout: float,
        caller: str | None,
    ) -> None:
        self.caller = caller
        self.client = EtcdClient(endpoints, timeout=timeout)
        self.prefix = prefix.rstrip("/") + "/"
        self.lease_ttl = max(1, math.ceil(lease_ttl))
        # A confirmation holds this long; the lease must have at least this long to run.
        self.promise = self.lease_ttl / 2
        self._lock = threading.RLock()
        self._lease: int | None = None
        self._valid_until = 0.0  # monotonic: the lease cannot expire on etcd before this
        self._renewed = 0.0
        self._holding: int | None = None  # the epoch this process holds the holder key for
        self._promised_until = 0.0  # monotonic: the end of the last promise made
        self._fenced_logged = False

    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    # ------------------------------------------------------------------ reading
    def _read(self) -> tuple[dict[str, Any], int]:
        found = self.client.range(self._key("routing"))
        if not found:
            raise NotFoundError(
                "the routing control is not initialized",
                hint="run `mrbatch init` (or `mrbatch up`, which initializes it)",
            )
        return json.loads(found[0].value), found[0].mod_revision

    def routing(self) -> Routing:
        data, _ = self._read()
        routing = _routing(data)
        self._maintain(routing)
        return routing

    # ------------------------------------------------------------------ the lease
    def _ensure_lease(self) -> int:
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

    def _maintain(self, routing: Routing) -> None:
        """Renew the lease when due, and give up the holder key once this region is no longer
        active and its last promise has run out. Errors here are not the caller's."""
        if self._lease is None:
            return
        try:
            self._ensure_lease()
            holding = self._holding
            done = time.monotonic() >= self._promised_until
            if holding is not None and done and not _may_hold(routing, self.caller, holding):
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

    # ------------------------------------------------------------------ confirm
    def confirm(self, region: str, epoch: int) -> bool:
        if region != self.caller:
            # An observer's question (the operator, a test): what the routing says now.
            try:
                return _may_hold(self.routing(), region, epoch)
            except NotFoundError:
                return False
        with self._lock:
            for _ in range(3):
                answer = self._confirm_self(region, epoch)
                if answer is not None:
                    return answer
        raise UnavailableError(f"{region}: the routing kept changing while confirming")

    def _confirm_self(self, region: str, epoch: int) -> bool | None:
        """True: a promise for ``self.promise`` seconds; False: not active in ``epoch``;
        None: the routing changed between the read and becoming holder (ask again)."""
        lease = self._ensure_lease()
        _, responses = self.client.txn(
            [],
            [
                {"request_range": {"key": b64(self._key("routing"))}},
                {"request_range": _prefix_range(self._key("holder", ""))},
            ],
            write=False,
        )
        routing_kvs, holders = _kvs(responses[0]), _kvs(responses[1])
        if not routing_kvs:
            return False
        routing, revision = _routing(json.loads(routing_kvs[0].value)), routing_kvs[0].mod_revision
        if not _may_hold(routing, region, epoch):
            self._maintain(routing)
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
            won, _ = self.client.txn([unchanged], [_put(mine, body, lease)])
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

    # ------------------------------------------------------------------ changes
    def _change(
        self, mutate: Callable[[dict[str, Any]], dict[str, Any] | None], *, log_epoch: bool
    ) -> Routing:
        """Read the routing, let ``mutate`` check the rules and return the new document (None:
        nothing to change), and write it only if the routing key is still the one read."""
        while True:
            current, revision = self._read()
            new = mutate(dict(current))
            if new is None:
                return _routing(current)
            token = new["change"] = uuid.uuid4().hex
            puts = [_put(self._key("routing"), new)]
            if log_epoch:
                puts.append(_put(self._epoch_key(new["epoch"]), self._epoch_doc(new)))
            compare = {
                "key": b64(self._key("routing")),
                "target": "MOD",
                "mod_revision": str(revision),
                "result": "EQUAL",
            }
            try:
                won, _ = self.client.txn([compare], puts)
            except AmbiguousWrite as exc:
                after, _ = self._read()
                if after.get("change") == token:
                    return _routing(after)
                raise UnavailableError(
                    f"{exc.message}; the routing shows it was not applied",
                    hint="nothing was changed; retry when etcd answers",
                ) from exc
            if won:
                return _routing(new)
            # Something changed the routing between the read and the write: check again.

    def _epoch_key(self, epoch: int) -> str:
        return self._key("doc", f"{EPOCH_PREFIX}{epoch:08d}")

    @staticmethod
    def _epoch_doc(data: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "epoch": data["epoch"],
            "region": data["active_region"],
            "at": data["switched_at"] or time.time(),
            "plan_id": data.get("plan_id"),
        }

    def initialize(self, regions: list[str], active: str) -> Routing:
        if active not in regions:
            raise UsageError(f"active region {active!r} is not one of {regions}")
        states = {n: RegionState.ACTIVE if n == active else RegionState.STANDBY for n in regions}
        first = {
            "epoch": 1,
            "active_region": active,
            "regions": states,
            "phase": "ACTIVE",
            "switched_at": 0.0,
            "plan_id": None,
            "change": uuid.uuid4().hex,
        }
        key = self._key("routing")
        created = {"key": b64(key), "target": "CREATE", "create_revision": "0", "result": "EQUAL"}
        log_doc = {**self._epoch_doc(first), "at": time.time()}
        try:
            self.client.txn([created], [_put(key, first), _put(self._epoch_key(1), log_doc)])
        except AmbiguousWrite:
            pass  # read below: either way the routing exists now or the read fails

        def add_missing(data: dict[str, Any]) -> dict[str, Any] | None:
            missing = [n for n in regions if n not in data["regions"]]
            if not missing:
                return None
            data["regions"] = {**data["regions"], **{n: RegionState.STANDBY for n in missing}}
            return data

        return self._change(add_missing, log_epoch=False)

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

        def apply(data: dict[str, Any]) -> dict[str, Any]:
            current = _routing(data)
            if target not in current.regions:
                raise UsageError(f"unknown region {target!r}")
            if current.epoch != expected_epoch:
                raise ConflictError(
                    f"another switch ran first: the epoch is {current.epoch}, not {expected_epoch}",
                    hint="check `mrbatch status` and `mrbatch plan history`",
                )
            if current.active_region == target and current.regions[target] == RegionState.ACTIVE:
                raise SafetyRuleError(f"rule 'one-active': {target} is already the active region")
            since = time.time() - current.switched_at
            if since < min_interval and not force:
                raise SafetyRuleError(
                    f"rule 'min-switch-interval': the last switch was {since:.0f}s ago,"
                    f" the minimum is {min_interval:.0f}s",
                    hint="wait, or pass --force if flapping is what you want",
                )
            states = {
                name: RegionState.FENCED if state == RegionState.ACTIVE else state
                for name, state in current.regions.items()
            }
            states[target] = RegionState.ACTIVE
            active = [n for n, s in states.items() if s == RegionState.ACTIVE]
            if active != [target]:  # the assertion rule, on the document about to be written
                raise SafetyRuleError(f"rule 'one-active': would leave {active} active")
            return {
                "epoch": expected_epoch + 1,
                "active_region": target,
                "regions": states,
                "phase": phase,
                "switched_at": time.time(),
                "plan_id": plan_id,
            }

        return self._change(apply, log_epoch=True)

    def set_phase(self, phase: str, *, expected_epoch: int) -> Routing:
        if phase not in PHASES:
            raise UsageError(f"unknown phase {phase!r} (known: {', '.join(PHASES)})")

        def apply(data: dict[str, Any]) -> dict[str, Any]:
            _same_epoch(data, expected_epoch)
            return {**data, "phase": phase}

        return self._change(apply, log_epoch=False)

    def set_region_state(self, region: str, state: str, *, expected_epoch: int) -> Routing:
        if state not in (RegionState.STANDBY, RegionState.FENCED):
            raise SafetyRuleError(
                f"rule 'one-active': only a switch makes a region {state}",
                hint="use `mrbatch failover --to REGION`",
            )

        def apply(data: dict[str, Any]) -> dict[str, Any]:
            if region not in data["regions"]:
                raise UsageError(f"unknown region {region!r}")
            _same_epoch(data, expected_epoch)
            if region == data["active_region"]:
                raise SafetyRuleError(
                    f"rule 'one-active': {region} is the active region; it can only be"
                    " replaced by a switch, never left without a successor"
                )
            return {**data, "regions": {**data["regions"], region: state}}

        return self._change(apply, log_epoch=False)

    # ------------------------------------------------------------------ heartbeats
    def heartbeat(self, region: str, pid: int | None, info: Mapping[str, Any]) -> None:
        lease = self._ensure_lease()
        beat = {"pid": pid, "at": time.time(), "info": dict(info)}
        alive = {"pid": pid, "lease": lease}
        self.client.txn(
            [],
            [
                _put(self._key("heartbeat", region), beat),
                _put(self._key("alive", region), alive, lease),
            ],
        )

    def heartbeats(self) -> dict[str, Heartbeat]:
        _, responses = self.client.txn(
            [],
            [
                {"request_range": _prefix_range(self._key("heartbeat", ""))},
                {"request_range": _prefix_range(self._key("alive", ""))},
            ],
            write=False,
        )
        alive = {kv.key.rsplit("/", 1)[-1] for kv in _kvs(responses[1])}
        beats: dict[str, Heartbeat] = {}
        for kv in _kvs(responses[0]):
            name = kv.key[len(self._key("heartbeat", "")) :]
            body = json.loads(kv.value)
            beats[name] = Heartbeat(
                name, body.get("pid"), float(body["at"]), body.get("info", {}), name in alive
            )
        return beats

    # ------------------------------------------------------------------ documents
    def put_document(self, name: str, body: Mapping[str, Any]) -> None:
        try:
            self.client.txn([], [_put(self._key("doc", name), body)])
        except AmbiguousWrite:
            self.client.txn([], [_put(self._key("doc", name), body)])  # idempotent by name

    def documents(self, prefix: str) -> dict[str, dict[str, Any]]:
        base = self._key("doc", "")
        found = sorted(self.client.range(base + prefix, prefix=True), key=lambda kv: kv.key)
        return {kv.key[len(base) :]: json.loads(kv.value) for kv in found}


def _may_hold(routing: Routing, region: str | None, epoch: int) -> bool:
    """Is ``region`` the active region of ``epoch``, in phase ACTIVE (the fencing check)?"""
    return (
        routing.epoch == epoch
        and routing.active_region == region
        and routing.regions.get(region or "") == RegionState.ACTIVE
        and routing.phase == "ACTIVE"
    )


def _prefix_range(prefix: str) -> dict[str, str]:
    return {"key": b64(prefix), "range_end": prefix_end(prefix)}


def _same_epoch(data: Mapping[str, Any], expected: int) -> None:
    if int(data["epoch"]) != expected:
        raise ConflictError(f"the routing changed: epoch is {data['epoch']}, not {expected}")


def open_control_plane(ws: Workspace, caller: str | None = None) -> EtcdControlPlane:
    etcd = ws.config.etcd
    return EtcdControlPlane(
        list(etcd.endpoints),
        prefix=etcd.prefix,
        lease_ttl=etcd.lease_ttl,
        timeout=etcd.timeout,
        caller=caller,
    )
