"""The ports: small protocols every backend implements, and the values they exchange.

Each method's docstring states whether it is idempotent and what "not found" looks like. The
contract test suites in ``tests/contracts/`` run the same assertions against every backend.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol, runtime_checkable

__all__ = [
    "ControlPlane",
    "Executor",
    "Heartbeat",
    "Mail",
    "Notifier",
    "ObjectInfo",
    "ObjectStore",
    "Purged",
    "Record",
    "RegionState",
    "Routing",
    "StateTable",
    "WebhookSender",
]


# --------------------------------------------------------------------------- object store


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one version of an object.

    ``version`` names the bytes: their SHA-256 in every store (S3's too, never a bucket's own
    VersionId), so a version recorded in one region can be passed back to ``open`` in any region
    holding it, to read exactly those bytes even after the key moved on.
    ``epoch`` is the routing epoch the writer held (0 for user uploads); replication keeps the
    version of higher ``rank``. ``seq`` is the position in the store's change feed
    (0 from ``head`` and ``list`` where knowing it would cost a request per object: S3).
    """

    key: str
    size: int
    sha256: str
    version: str
    modified: float
    origin: str
    epoch: int = 0
    seq: int = 0
    deleted: bool = False
    meta: Mapping[str, str] = field(default_factory=dict)

    @property
    def rank(self) -> tuple[int, float, str]:  # the higher epoch, then the later write, then origin
        return (self.epoch, self.modified, self.origin)


@dataclass(frozen=True)
class Purged:
    """What ``ObjectStore.purge`` freed."""

    tombstones: int = 0
    versions: int = 0
    bytes: int = 0


@runtime_checkable
class ObjectStore(Protocol):
    """One region's bucket. Writes are atomic: a reader sees the old bytes or the new, never a
    part. Keys are ``/``-separated relative paths (no ``..``, no leading ``/``)."""

    region: str

    def put(
        self,
        key: str,
        data: bytes | BinaryIO | Iterable[bytes],
        *,
        meta: Mapping[str, str] | None = None,
        epoch: int = 0,
        durable: bool = False,
    ) -> ObjectInfo:
        """Store ``data`` under ``key``. Idempotent: writing the same bytes and meta again
        changes nothing (no new version, no change-feed entry). With ``durable`` the object is
        on stable storage when this returns (an acknowledgement or a publish depends on it);
        otherwise it survives a crash of the process, and what a power loss takes is
        recomputed (intermediates). A durable write also makes durable which version every
        key written earlier to this store names (not those versions' bytes: a durable write
        of the same bytes does that), as a write-ahead log's sync covers what came before."""
        ...

    def open(self, key: str, *, version: str | None = None) -> BinaryIO:
        """A binary stream of the object (of ``version`` when given).
        Raises NotFoundError when the key (or that version) does not exist."""
        ...

    def get(self, key: str, *, version: str | None = None) -> bytes:
        """The whole object. Raises NotFoundError like ``open``."""
        ...

    def get_range(self, key: str, start: int, length: int, *, version: str | None = None) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end). NotFoundError like ``open``."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """The current version's info, or None when the key does not exist (or is deleted)."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Live objects whose key starts with ``prefix``, in key order."""
        ...

    def copy(
        self,
        src: str,
        dst: str,
        *,
        version: str | None = None,
        meta: Mapping[str, str] | None = None,
        epoch: int = 0,
        durable: bool = False,
    ) -> ObjectInfo:
        """Copy ``src`` (of ``version``) to ``dst``. Idempotent like ``put``, ``durable``
        as for ``put``. Raises NotFoundError when the source does not exist."""
        ...

    def delete(self, key: str) -> bool:
        """Remove ``key``; True when something was deleted, False when it did not exist."""
        ...

    def changes(
        self, after: int, *, prefix: str = "", limit: int = 1000
    ) -> builtins.list[ObjectInfo]:
        """Changes (writes and deletions, newest version of each key) with ``seq > after``, in
        seq order. The trigger and the replicators follow this feed."""
        ...

    def last_seq(self) -> int:
        """The newest position of the change feed (0 for an empty store)."""
        ...

    def apply_replica(self, info: ObjectInfo, data: BinaryIO | None) -> bool:
        """Merge a version replicated from another region (``data`` is None for a deletion):
        it wins when its ``rank`` is higher than the stored version's, and keeps
        ``info.origin`` so it is not replicated back. Idempotent; True when applied."""
        ...

    def sync(self) -> None:
        """Make every change committed so far survive a power loss, as a durable write does
        (a replicator syncs before it moves a cursor, kept elsewhere, past its changes)."""
        ...

    def purge(self, older_than: float) -> Purged:
        """Free what no live key needs any more: deletion tombstones written before
        ``older_than``, and the bytes of versions superseded before it. Local. Idempotent."""
        ...


# --------------------------------------------------------------------------- state table


@dataclass(frozen=True)
class Record:
    """One state-table item: JSON ``body`` plus the metadata conditional writes and replication
    need. ``version`` increases by one on every local write; ``epoch`` is the routing epoch the
    writer held; ``writer`` the region that wrote it; ``updated`` the writer's clock."""

    pk: str
    kind: str
    body: Mapping[str, Any]
    version: int
    epoch: int
    writer: str
    updated: float
    seq: int = 0
    deleted: bool = False  # a tombstone: replicates like a write, hidden from get and scan

    @property
    def rank(self) -> tuple[int, float, str]:  # the higher epoch, then the later write, then writer
        return (self.epoch, self.updated, self.writer)


@runtime_checkable
class StateTable(Protocol):
    """One region's replica of the state table (FileRun, ChunkRun... records)."""

    region: str

    def get(self, pk: str) -> Record | None:
        """The record, or None when it does not exist."""
        ...

    def insert(
        self, pk: str, kind: str, body: Mapping[str, Any], *, epoch: int, durable: bool = False
    ) -> Record:
        """Create a record that must not exist yet (version 1).
        Raises ConflictError when ``pk`` exists: this is how a file is claimed once. With
        ``durable`` the record is on stable storage when this returns (a ledger entry: an
        acknowledgement depends on it); every write survives a crash of the process."""
        ...

    def update(
        self, pk: str, body: Mapping[str, Any], *, expected_version: int, epoch: int
    ) -> Record:
        """Replace the body if the stored version is ``expected_version`` (compare-and-set).
        Raises ConflictError when the version differs, NotFoundError when absent."""
        ...

    def scan(self, kind: str, *, prefix: str = "") -> Iterator[Record]:
        """Records of ``kind`` whose pk starts with ``prefix``, in pk order."""
        ...

    def changes(self, after: int, *, limit: int = 1000) -> list[Record]:
        """Records written (locally or by replication) with ``seq > after``, in seq order."""
        ...

    def apply_replica(self, record: Record) -> bool:
        """Merge a record from another region (a tombstone included): it wins when its
        ``rank`` is higher than the stored one's. Idempotent; True when applied."""
        ...

    def delete(self, pk: str, *, epoch: int) -> bool:
        """Delete the record: a tombstone that ``get`` and ``scan`` no longer show and that the
        change feed carries, so the deletion replicates (it wins the merge like a write).
        ``insert`` may create the pk again. True when something was deleted, False when there
        was no record. Idempotent."""
        ...

    def purge(self, older_than: float) -> int:
        """Forget tombstones written before ``older_than`` (their deletion has replicated by
        then); returns how many. Local to this replica. Idempotent."""
        ...

    def get_cursor(self, name: str) -> int:
        """A named position (replication, trigger) kept with this replica; 0 when unset."""
        ...

    def set_cursor(self, name: str, value: int) -> None:
        """Store a named position. Idempotent."""
        ...

    def last_seq(self) -> int:
        """The newest position of the change feed (0 for an empty table)."""
        ...

    def sync(self) -> None:
        """Make every write so far survive a power loss, as a durable write does."""
        ...


# --------------------------------------------------------------------------- control plane


class RegionState:
    ACTIVE = "ACTIVE"
    STANDBY = "STANDBY"
    FENCED = "FENCED"
    ALL = (ACTIVE, STANDBY, FENCED)


@dataclass(frozen=True)
class Routing:
    """The routing control: which region is active, under which epoch.

    ``phase`` is the application state clients see: ``ACTIVE`` normally, ``FAILOVER`` while a
    recovery plan is between fencing and activation (the target is already the only ACTIVE
    region, but it neither claims nor reconciles yet)."""

    epoch: int
    active_region: str
    regions: Mapping[str, str]
    phase: str
    switched_at: float
    plan_id: str | None = None


@dataclass(frozen=True)
class Heartbeat:
    """The latest heartbeat of a region (or replicator). ``lease_held``: whether the lease the
    sender keeps with the control plane is still alive (False once it expired: the sender
    stopped, or cannot reach the control plane); None for control planes without leases."""

    region: str
    pid: int | None
    at: float
    info: Mapping[str, Any] = field(default_factory=dict)
    lease_held: bool | None = None


@runtime_checkable
class ControlPlane(Protocol):
    """The routing control shared by all regions (Route 53 ARC's role).

    Safety rules hold for every change: exactly one ACTIVE region, epochs only grow, and two
    switches are at least ``min_interval`` apart unless forced."""

    def initialize(self, regions: list[str], active: str) -> Routing:
        """Create the routing control with ``active`` ACTIVE at epoch 1, others STANDBY.
        Idempotent: an existing control is returned unchanged."""
        ...

    def routing(self) -> Routing:
        """The current routing. Raises NotFoundError when not initialized,
        UnavailableError when unreachable."""
        ...

    def confirm(self, region: str, epoch: int) -> bool:
        """True iff ``region`` is ACTIVE, the current epoch is ``epoch`` and no failover is in
        progress. The fencing check made before every publish and notify. Asked by the
        region's own process, a control plane with leases may also raise UnavailableError
        when it cannot promise that yet (unreachable, or the previous active region may still
        be acting on its last confirmation): the caller waits and asks again."""
        ...

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
        """Make ``target`` the only ACTIVE region under epoch ``expected_epoch + 1``; the
        previous active region becomes FENCED. Compare-and-set on the epoch: raises
        ConflictError when the epoch moved (another switch won), SafetyRuleError naming the
        rule when one refuses (nothing changes then). In the same change it stores the
        document ``epoch/<epoch:08d>`` = ``{"epoch", "region", "at", "plan_id"}`` (``initialize``
        stores epoch 1): the epoch log ``mrbatch verify`` checks publishers against."""
        ...

    def set_phase(self, phase: str, *, expected_epoch: int) -> Routing:
        """Change the application phase within the current epoch (e.g. FAILOVER -> ACTIVE).
        Raises ConflictError when the epoch moved."""
        ...

    def set_region_state(self, region: str, state: str, *, expected_epoch: int) -> Routing:
        """Set a non-active region's state (FENCED -> STANDBY after failback, say). Refuses
        to touch the active region (SafetyRuleError). Raises ConflictError if the epoch moved."""
        ...

    def heartbeat(self, region: str, pid: int | None, info: Mapping[str, Any]) -> None:
        """Record that ``region``'s process is alive, with a few facts about it."""
        ...

    def heartbeats(self) -> dict[str, Heartbeat]:
        """The latest heartbeat of each region that sent one."""
        ...

    def put_document(self, name: str, body: Mapping[str, Any]) -> None:
        """Store a small JSON document (a plan execution log, say). Idempotent by name."""
        ...

    def documents(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Documents whose name starts with ``prefix``, by name; empty when none."""
        ...


# --------------------------------------------------------------------------- notifier


@dataclass(frozen=True)
class Mail:
    message_id: str
    sender: str
    to: tuple[str, ...]
    subject: str
    body: str


@runtime_checkable
class Notifier(Protocol):
    def send(self, mail: Mail) -> str:
        """Deliver ``mail``; returns where it went. Idempotent per ``message_id`` where the
        backend can tell (the outbox writes one file per id); raises UnavailableError when the
        mail server cannot be reached, so the caller retries."""
        ...

    def forget(self, message_id: str) -> bool:
        """Drop what this notifier keeps of a delivered message (the outbox's file), once its
        run is collected; True when something was dropped, False when it keeps nothing.
        Idempotent."""
        ...


class WebhookSender(Protocol):
    def post(
        self,
        url: str,
        body: Mapping[str, Any],
        *,
        idempotency_key: str,
        headers: Mapping[str, str],
        timeout: float,
    ) -> int:
        """POST ``body`` as JSON with ``Idempotency-Key``; the status when delivered (2xx).
        Raises UnavailableError when it may work later, MrbatchError when refused."""
        ...


# --------------------------------------------------------------------------- executor


@runtime_checkable
class Executor(Protocol):
    # The exceptions a task's future fails with when the worker process running it died (a
    # killed worker, not a failing task): the orchestrator retries those tasks without using
    # up an attempt. Empty when tasks do not run in worker processes.
    lost_worker_errors: tuple[type[BaseException], ...]

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` (a module-level function of picklable arguments) somewhere.
        A worker that dies makes the future fail; the executor replaces the worker."""
        ...

    def shutdown(self, *, cancel: bool = True) -> None:
        """Stop the workers; pending tasks are cancelled when ``cancel``. Idempotent."""
        ...

    def pids(self) -> list[int]:
        """The pids of the worker processes on this machine (chaos experiments signal them;
        empty when tasks run in this process or on other machines)."""
        ...
