"""Chaos experiments against a running deployment (the processes ``mrbatch up`` started).

Faults are injected the way FIS injects them into real infrastructure: through the workspace's
fault file, which every region, replicator and gateway process re-reads on each call, or by
SIGKILL of a pool worker whose parent is the region process the supervisor recorded. Nothing is
simulated in-process.

An experiment: check the deployment is up -> start a small load (so files are in flight when
the fault hits) -> inject -> hold for ``duration`` while watching the stop conditions and
gathering evidence that the fault bit -> restore -> wait (bounded) until every file is terminal
and the regions have converged -> ``verify`` -> report.

Restoring is guaranteed three ways: a ``finally`` disarms every fault the experiment armed
(Ctrl-C and SIGTERM only set a flag that ends the hold at once); every fault is armed with the
experiment's duration as its own expiry, so even a SIGKILLed experiment heals on time; and a
process of the deployment that was alive at the start and died meanwhile is started again.

Stop conditions end the fault early: ``interrupted`` (a signal), ``deployment-down`` (a region
or replicator process died that the experiment did not mean to kill), ``run-failed`` (a run of
the experiment's load FAILED). ``deadline`` is the normal end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import backends
from ..config.workspace import Workspace
from ..errors import MrbatchError, UsageError
from ..faults import Fault, FaultPoints
from ..runtime import supervisor
from ..runtime.replication import backlog
from .loadgen import LoadGenerator, LoadOptions
from .verify import VerifyReport, verify
from .workers import beats, kill_worker

__all__ = [
    "EXPERIMENTS",
    "ChaosOptions",
    "ChaosReport",
    "Experiment",
    "run_experiment",
]


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    points: tuple[str, ...] = ()
    kills_workers: bool = False


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "region-outage",
            "the region's storage, state table and control-plane access all fail"
            " (the reference's network deny)",
            ("storage", "state", "control"),
        ),
        Experiment("storage-outage", "the region's bucket fails", ("storage",)),
        Experiment("state-outage", "the region's state table fails", ("state",)),
        Experiment(
            "kill-worker",
            "SIGKILL of a pool worker of the region while it holds chunk tasks",
            kills_workers=True,
        ),
        Experiment(
            "replication-stall",
            "replication of objects and records stops, then resumes",
            ("replication",),
        ),
        Experiment(
            "partition",
            "the regions cannot replicate to each other; each still reaches its own storage",
            ("partition",),
        ),
    )
}


@dataclass(frozen=True)
class ChaosOptions:
    experiment: str
    region: str | None = None
    duration: float = 5.0
    files: int = 4
    rows: int | None = None  # default: 2,000 (kill-worker: 100,000, so chunks are in flight)
    seed: int = 1
    recover_timeout: float = 120.0
    kill_interval: float = 1.0


@dataclass
class ChaosReport:
    experiment: str
    region: str | None
    peer: str | None
    duration: float
    started_at: float
    stop_reason: str = "deadline"
    stop_conditions: list[str] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    observed: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)
    recovered: bool = False
    time_to_recover: float | None = None
    verify: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        counts = self.verify.get("counts", {})
        return (
            self.stop_reason == "deadline"
            and self.recovered
            and bool(self.verify.get("ok"))
            and counts.get("lost", 1) == 0
            and counts.get("duplicated", 1) == 0
            and self.load.get("failed", 1) == 0
        )

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["ok"] = self.ok
        counts = self.verify.get("counts", {})
        data["summary"] = {
            "files_in": self.load.get("accepted", 0),
            "completed": self.load.get("completed", 0),
            "failed": self.load.get("failed", 0),
            "pending": self.load.get("pending", 0),
            "lost": counts.get("lost"),
            "duplicates": counts.get("duplicated"),
            "violations": len(self.verify.get("violations", [])),
            "time_to_recover": self.time_to_recover,
        }
        return data


class _Run:
    """One experiment in progress."""

    def __init__(
        self,
        ws: Workspace,
        options: ChaosOptions,
        stop: threading.Event,
        echo: Callable[[str], None],
    ) -> None:
        if options.experiment not in EXPERIMENTS:
            raise UsageError(
                f"unknown experiment {options.experiment!r}",
                hint=f"experiments: {', '.join(EXPERIMENTS)}",
            )
        self.ws = ws
        self.options = options
        self.spec = EXPERIMENTS[options.experiment]
        self.stop = stop
        self.echo = echo
        self.faults = FaultPoints(ws.faults_path)
        self.armed: list[Fault] = []
        self.t0 = time.monotonic()
        self._next_poll = 0.0
        routing = backends.open_control_plane(ws).routing()
        self.active = routing.active_region
        region = ws.check_region(options.region) if options.region else None
        if options.experiment == "replication-stall":
            self.region = region  # None: every region's replication stalls
        else:
            self.region = region or self.active
        others = [r for r in ws.regions if r != (self.region or self.active)]
        self.peer = others[0] if others and options.experiment == "partition" else None
        if options.experiment == "partition" and self.peer is None:
            raise UsageError("a partition needs two regions")
        self.alive_at_start = {p: pid for p, pid in supervisor.running(ws).items() if pid}
        self.report = ChaosReport(
            experiment=options.experiment,
            region=self.region,
            peer=self.peer,
            duration=options.duration,
            started_at=time.time(),
            stop_conditions=["deadline", "interrupted", "deployment-down", "run-failed"],
        )

    def at(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def event(self, what: str, **details: Any) -> None:
        self.report.events.append({"t": self.at(), "what": what, **details})
        self.echo(f"[{self.at():7.2f}s] {what}")

    # ------------------------------------------------------------------ preconditions
    def check_up(self) -> None:
        needed = [supervisor.Proc("region", r) for r in self.ws.regions]
        needed += [supervisor.Proc("replicator", r) for r in self.ws.regions]
        down = [p.label for p in needed if p not in self.alive_at_start]
        if down:
            raise UsageError(
                f"the deployment is not up: {', '.join(down)} not running",
                hint="start it with `mrbatch up --detach`, then run the experiment",
            )

    def lost_processes(self) -> list[supervisor.Proc]:
        now = supervisor.running(self.ws)  # another pid: it died and the supervisor restarted it
        return [p for p, pid in self.alive_at_start.items() if now.get(p) != pid]

    # ------------------------------------------------------------------ inject / restore
    def inject(self) -> None:
        duration = self.options.duration
        for point in self.spec.points:
            fault = self.faults.arm(
                point,
                region=self.region,
                peer=self.peer,
                duration=duration,
                note=f"chaos {self.spec.name}",
            )
            self.armed.append(fault)
            self.report.faults.append(
                {
                    "point": point,
                    "region": self.region,
                    "peer": self.peer,
                    "id": fault.id,
                    "armed_at": self.at(),
                    "expires_after": duration,
                    "disarmed_at": None,
                }
            )
        if self.armed:
            where = self.region or "every region"
            self.event(f"armed {', '.join(self.spec.points)} in {where} for {duration:g}s")

    def restore(self) -> None:
        entries = {entry["id"]: entry for entry in self.report.faults}
        for fault in self.armed:
            self.faults.disarm(fault.id)
            entries[fault.id]["disarmed_at"] = self.at()
        if self.armed:
            self.event("disarmed every fault of the experiment")
        self.armed = []
        lost = [p for p in self.lost_processes() if supervisor.pid_of(self.ws, p) is None]
        if lost:
            supervisor.start(self.ws, only=lost)
            self.event(f"restarted {', '.join(p.label for p in lost)}")

    # ------------------------------------------------------------------ observing
    def observe(self, load: LoadGenerator) -> str | None:
        """Gather evidence; return the stop condition that fired, if any."""
        obs = self.report.observed
        if self.stop.is_set():
            return "interrupted"
        lost = self.lost_processes()
        if lost:
            return "deployment-down"
        if time.monotonic() >= self._next_poll:
            load.poll()  # reads every region's runs: not on every tick
            self._next_poll = time.monotonic() + 0.5
        if any(r.status == "FAILED" for r in load.report.results):
            return "run-failed"
        seen = beats(self.ws)
        target = self.region or self.active
        beat = seen.get(target)
        if beat is not None:
            age = round(time.time() - beat.at, 3)
            obs["max_heartbeat_age"] = max(obs.get("max_heartbeat_age", 0.0), age)
        pairs = [(a, b) for a in self.ws.regions for b in self.ws.regions if a != b]
        for source, dest in pairs:
            try:
                pending = backlog(self.ws, source, dest).total
            except MrbatchError:
                continue
            name = f"max_backlog_{source}->{dest}"
            obs[name] = max(obs.get(name, 0), pending)
        return None

    def stats(self, region: str) -> dict[str, Any]:
        beat = beats(self.ws).get(region)
        if beat is None:
            return {}
        return {
            "loop_errors": beat.info.get("loop_errors", 0),
            **{k: v for k, v in (beat.info.get("stats") or {}).items()},
        }

    def kill_one(self) -> bool:
        """SIGKILL one worker of the region if it holds chunk tasks now; True when it did."""
        assert self.region is not None
        kills = self.report.observed.setdefault("kills", [])
        kill = kill_worker(self.ws, self.region, turn=len(kills))
        if kill is None:
            return False
        kill["at"] = self.at()
        kills.append(kill)
        self.event(
            f"SIGKILL worker {kill['pid']} of {self.region}"
            f" ({kill['chunks_in_flight']} chunk task(s) held)"
        )
        return True

    # ------------------------------------------------------------------ the run
    def hold(self, load: LoadGenerator) -> None:
        opts = self.options
        end = time.monotonic() + opts.duration
        next_kill = 0.0
        # A kill-worker experiment waits (bounded) for chunk work to be in flight.
        grace = end + (10.0 if self.spec.kills_workers else 0.0)
        while True:
            now = time.monotonic()
            kills = len(self.report.observed.get("kills", []))
            if now >= end and (not self.spec.kills_workers or kills or now >= grace):
                break
            reason = self.observe(load)
            if reason is not None:
                self.report.stop_reason = reason
                self.event(f"stop condition: {reason}")
                return
            may_kill = self.spec.kills_workers and now >= next_kill and (now < end or not kills)
            if may_kill and self.kill_one():
                next_kill = now + opts.kill_interval
            self.stop.wait(0.05 if self.spec.kills_workers else 0.2)
        if self.spec.kills_workers and not self.report.observed.get("kills"):
            self.report.stop_reason = "no-work"
            self.event("no chunk task was in flight to kill")

    def settle(self, load: LoadGenerator, restored_at: float) -> None:
        deadline = restored_at + self.options.recover_timeout
        while not self.stop.is_set():
            unfinished = load.poll()
            if unfinished == 0:
                quick = verify(self.ws, deep=False)
                if quick.counts["pending"] == 0 and quick.diverged == 0:
                    self.report.recovered = True
                    self.report.time_to_recover = round(time.monotonic() - restored_at, 3)
                    self.event(f"recovered {self.report.time_to_recover:.2f}s after the restore")
                    return
            if time.monotonic() >= deadline:
                self.event(f"not recovered within {self.options.recover_timeout:g}s")
                return
            self.stop.wait(0.2)

    def execute(self) -> ChaosReport:
        self.check_up()
        opts = self.options
        rows = opts.rows or (100_000 if self.spec.kills_workers else 2_000)
        files = max(1, opts.files)
        load_stop = threading.Event()
        load = LoadGenerator(
            self.ws,
            LoadOptions(
                files=files,
                interval=opts.duration / files,
                rows=rows,
                seed=opts.seed,
                prefix=f"input/chaos/{opts.experiment}",
                timeout=opts.recover_timeout,
            ),
            stop=load_stop,
            tag=time.strftime("%Y%m%dT%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}",
        )
        before = {r: self.stats(r) for r in self.ws.regions}
        uploader = threading.Thread(target=load.upload_all, name="chaos-load", daemon=True)
        self.event(f"experiment {opts.experiment}: {self.spec.description}")
        uploader.start()
        restored_at = time.monotonic()
        try:
            # Inject once the first file is accepted, so work is in flight when it bites.
            while not load.report.results or load.report.results[0].uploaded_at is None:
                if self.stop.wait(0.02) or not uploader.is_alive():
                    break
            self.inject()
            self.hold(load)
        finally:
            self.restore()
            restored_at = time.monotonic()
            if self.stop.is_set():
                load_stop.set()
        uploader.join()
        accepted = [r for r in load.report.results if r.sha256]
        self.event(f"{len(accepted)} file(s) accepted, waiting for them and for convergence")
        if not self.stop.is_set():
            self.settle(load, restored_at)
        load.poll(every=True)  # every file as it is now, in the report
        load.report.ended = time.time()
        self.report.load = {k: v for k, v in load.report.to_dict().items() if k != "results"}
        self.report.load["keys"] = [r.key for r in accepted]
        by_region: dict[str, int] = {}
        for r in accepted:
            by_region[r.region or "?"] = by_region.get(r.region or "?", 0) + 1
        self.report.observed["uploads_by_region"] = by_region
        after = {r: self.stats(r) for r in self.ws.regions}
        self.report.observed["stats_delta"] = {
            region: {
                k: after[region].get(k, 0) - before[region].get(k, 0)
                for k in (
                    "loop_errors",
                    "chunk_executions_failed",
                    "files_reconciled",
                    "pool_restarts",
                )
            }
            for region in self.ws.regions
        }
        result: VerifyReport = verify(self.ws, deep=True, wait=0 if self.stop.is_set() else 5)
        self.report.verify = result.to_dict()
        self.event(
            f"verify: {'ok' if result.ok else 'VIOLATIONS'} {result.counts}"
            f" ({len(result.violations)} violation(s))"
        )
        return self.report


def run_experiment(
    ws: Workspace,
    options: ChaosOptions,
    *,
    stop: threading.Event | None = None,
    echo: Callable[[str], None] | None = None,
) -> ChaosReport:
    """Run one experiment against the running deployment of ``ws`` and return its report.
    Raises UsageError when the deployment is not up or the experiment is unknown. ``stop``
    set by a signal handler ends the fault at once; everything is restored either way."""
    return _Run(ws, options, stop or threading.Event(), echo or (lambda _line: None)).execute()
