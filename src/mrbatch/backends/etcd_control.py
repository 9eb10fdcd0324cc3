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
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConflictError, NotFoundError, SafetyRuleError, UnavailableError, UsageError
from ..ports import Heartbeat, RegionState, Routing
from .etcd_client import AmbiguousWrite, EtcdClient, b64
from .etcd_lease import Promises, kvs, may_hold, prefix_range, put_request, routing_of

if TYPE_CHECKING:
    from ..config.workspace import Workspace

__all__ = ["EtcdControlPlane", "open_control_plane"]

log = logging.getLogger("mrbatch.control")
PHASES = ("ACTIVE", "FAILOVER")
EPOCH_PREFIX = "epoch/"


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
        self.promises = Promises(self.client, self._key, caller, max(1, math.ceil(lease_ttl)))

    @property
    def promise(self) -> float:
        """How long one of this region process's confirmations holds (half its lease)."""
        return self.promises.promise

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
        routing = routing_of(data)
        self.promises.maintain(routing)
        return routing

    # ------------------------------------------------------------------ confirm
    def confirm(self, region: str, epoch: int) -> bool:
        if region != self.caller:
            # An observer's question (the operator, a test): what the routing says now.
            try:
                return may_hold(self.routing(), region, epoch)
            except NotFoundError:
                return False
        for _ in range(3):
            answer = self.promises.confirm(region, epoch)
            if answer is not None:
                return answer
        raise UnavailableError(f"{region}: the routing kept changing while confirming")

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
                return routing_of(current)
            token = new["change"] = uuid.uuid4().hex
            puts = [put_request(self._key("routing"), new)]
            if log_epoch:
                puts.append(put_request(self._epoch_key(new["epoch"]), self._epoch_doc(new)))
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
                    return routing_of(after)
                raise UnavailableError(
                    f"{exc.message}; the routing shows it was not applied",
                    hint="nothing was changed; retry when etcd answers",
                ) from exc
            if won:
                return routing_of(new)
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
            self.client.txn(
                [created], [put_request(key, first), put_request(self._epoch_key(1), log_doc)]
            )
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
            current = routing_of(data)
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
        lease = self.promises.ensure()
        beat = {"pid": pid, "at": time.time(), "info": dict(info)}
        alive = {"pid": pid, "lease": lease}
        self.client.txn(
            [],
            [
                put_request(self._key("heartbeat", region), beat),
                put_request(self._key("alive", region), alive, lease),
            ],
        )

    def heartbeats(self) -> dict[str, Heartbeat]:
        _, responses = self.client.txn(
            [],
            [
                {"request_range": prefix_range(self._key("heartbeat", ""))},
                {"request_range": prefix_range(self._key("alive", ""))},
            ],
            write=False,
        )
        alive = {kv.key.rsplit("/", 1)[-1] for kv in kvs(responses[1])}
        beats: dict[str, Heartbeat] = {}
        for kv in kvs(responses[0]):
            name = kv.key[len(self._key("heartbeat", "")) :]
            body = json.loads(kv.value)
            beats[name] = Heartbeat(
                name, body.get("pid"), float(body["at"]), body.get("info", {}), name in alive
            )
        return beats

    # ------------------------------------------------------------------ documents
    def put_document(self, name: str, body: Mapping[str, Any]) -> None:
        try:
            self.client.txn([], [put_request(self._key("doc", name), body)])
        except AmbiguousWrite:
            self.client.txn([], [put_request(self._key("doc", name), body)])  # idempotent by name

    def documents(self, prefix: str) -> dict[str, dict[str, Any]]:
        base = self._key("doc", "")
        found = sorted(self.client.range(base + prefix, prefix=True), key=lambda kv: kv.key)
        return {kv.key[len(base) :]: json.loads(kv.value) for kv in found}


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
