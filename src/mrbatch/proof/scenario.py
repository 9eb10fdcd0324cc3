"""A seeded scenario: a random schedule of faults, failovers and failbacks over a load, run
against a live deployment and ending in ``verify`` (a Jepsen-style nemesis schedule).

The schedule is a pure function of the seed (:func:`plan`): which events, in which order,
aimed at which role (the ``active`` or the ``standby`` region at the moment the event starts),
for how long, and the pauses between them. Running it gives different timings each time, but
the same seed always asks for the same things, so a failing seed can be replayed.

Events run one after another, never overlapping; each is healed before the next starts:

* the six chaos experiments of :mod:`mrbatch.chaos` (faults through the fault file, SIGKILL of
  a pool worker);
* ``failover`` and ``failback``: the recovery plans, run as the operator would (``--yes``,
  ``--force`` so the anti-flap rule does not refuse a scheduled switch);
* ``crash-failover``: SIGKILL of the active region's whole process group, failover, then the
  crashed region is started again and must stay quiet (fenced);
* ``conflicting-upload``: the regions are partitioned, one version of a key is uploaded to one
  region and another version of the same key to the other (the role says which region takes
  the first), and a second key to the standby alone; then the partition heals. Each accepted
  version must complete once, whichever lost replication's merge of the key.

At the end every fault is disarmed, every process that died is started again, the load's
files are waited for (bounded) and ``verify`` checks the whole history.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import backends
from ..access.accesspoint import AccessPoint
from ..config.workspace import Workspace
from ..errors import MrbatchError, UsageError
from ..faults import Fault, FaultPoints
from ..recovery.operations import failover_target
from ..recovery.runbook import Runbook
from ..runtime import supervisor
from .chaos import EXPERIMENTS
from .loadgen import LoadGenerator, LoadOptions
from .verify import verify
from .workers import kill_worker

__all__ = ["KINDS", "ScenarioOptions", "ScenarioReport", "Step", "plan", "run_scenario"]

RECOVERY_KINDS = ("failover", "failback", "crash-failover")
CONFLICT = "conflicting-upload"
KINDS = (*EXPERIMENTS, *RECOVERY_KINDS, CONFLICT)


@dataclass(frozen=True)
class ScenarioOptions:
    seed: int
    events: int = 4
    files: int = 8
    rows: int = 2_000
    max_fault: float = 2.0
    max_gap: float = 1.0
    recover_timeout: float = 120.0
    kinds: tuple[str, ...] = KINDS


@dataclass
class Step:
    index: int
    kind: str
    role: str  # active | standby | all: the region it aims at, resolved when it starts
    duration: float
    gap: float  # pause before it starts
    region: str | None = None
    started: float | None = None
    ended: float | None = None
    outcome: str = "planned"  # done | skipped | failed | interrupted
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan(options: ScenarioOptions) -> list[Step]:
    """The schedule for ``options.seed``: deterministic, a different mix for each seed. Kinds
    are drawn without repetition while there are unused ones, so a few events already cover
    faults and recovery plans."""
    rng = random.Random(options.seed)
    unknown = [k for k in options.kinds if k not in KINDS]
    if unknown:
        raise UsageError(f"unknown scenario event(s) {unknown}", hint=f"known: {', '.join(KINDS)}")
    pool: list[str] = []
    steps = []
    for index in range(options.events):
        if not pool:
            pool = list(options.kinds)
            rng.shuffle(pool)
        kind = pool.pop()
        if kind == "replication-stall":
            role = "all"
        elif kind in RECOVERY_KINDS or kind == "kill-worker":
            role = "active"
        elif kind == CONFLICT:
            role = rng.choice(["active", "standby"])  # the region taking the first version
        else:
            role = rng.choice(["active", "active", "standby"])
        duration = round(rng.uniform(0.5, options.max_fault), 2)
        gap = round(rng.uniform(0.2, options.max_gap), 2)
        steps.append(Step(index=index, kind=kind, role=role, duration=duration, gap=gap))
    return steps


@dataclass
class ScenarioReport:
    seed: int
    schedule: list[Step]
    load: dict[str, Any] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)
    recovered: bool = False
    time_to_recover: float | None = None
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        counts = self.verify.get("counts", {})
        return (
            not self.interrupted
            and self.recovered
            and bool(self.verify.get("ok"))
            and counts.get("pending", 1) == 0
            and self.load.get("failed", 1) == 0
            and not any(s.outcome == "failed" for s in self.schedule)
        )

    def to_dict(self) -> dict[str, Any]:
        counts = self.verify.get("counts", {})
        return {
            "ok": self.ok,
            "seed": self.seed,
            "summary": {
                "events": len(self.schedule),
                "files_in": self.load.get("accepted", 0),
                "completed": self.load.get("completed", 0),
                "failed": self.load.get("failed", 0),
                "lost": counts.get("lost"),
                "duplicated": counts.get("duplicated"),
                "recovered": counts.get("recovered"),
                "violations": len(self.verify.get("violations", [])),
                "time_to_recover": self.time_to_recover,
                "seconds": round(self.seconds, 2),
            },
            "schedule": [s.to_dict() for s in self.schedule],
            "load": self.load,
            "verify": self.verify,
            "interrupted": self.interrupted,
        }


class _Runner:
    def __init__(
        self,
        ws: Workspace,
        options: ScenarioOptions,
        stop: threading.Event,
        echo: Callable[[str], None],
    ) -> None:
        self.ws = ws
        self.options = options
        self.stop = stop
        self.echo = echo
        self.faults = FaultPoints(ws.faults_path)
        self.armed: list[Fault] = []
        self.t0 = time.monotonic()
        self.report = ScenarioReport(seed=options.seed, schedule=plan(options))

    def at(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def routing_roles(self) -> tuple[str, str]:
        active = backends.open_control_plane(self.ws).routing().active_region
        standby = next(r for r in self.ws.regions if r != active)
        return active, standby

    # ------------------------------------------------------------------ events
    def fault(self, step: Step) -> None:
        spec = EXPERIMENTS[step.kind]
        region = None if step.role == "all" else step.region
        peer = next((r for r in self.ws.regions if r != region), None)
        for point in spec.points:
            self.armed.append(
                self.faults.arm(
                    point,
                    region=region,
                    peer=peer if point == "partition" else None,
                    duration=step.duration,
                    note=f"scenario seed {self.options.seed} step {step.index}",
                )
            )
        self.stop.wait(step.duration)
        self.heal()

    def conflict(self, step: Step, load: LoadGenerator) -> None:
        """Two versions of one key accepted on either side of a partition, plus a key only the
        standby has (see the module doc)."""
        assert step.region is not None
        active, standby = self.routing_roles()
        second = standby if step.region == active else active
        self.armed.append(
            self.faults.arm(
                "partition",
                region=active,
                peer=standby,
                duration=step.duration + 30,  # healed below; the expiry is only a backstop
                note=f"scenario seed {self.options.seed} step {step.index}",
            )
        )
        access = AccessPoint(self.ws)
        base = f"input/scenario/seed-{self.options.seed}/{load.tag}-conflict-{step.index:02d}"
        uploads = [
            (f"{base}.csv", step.region),
            (f"{base}.csv", second),
            (f"{base}-standby-only.csv", standby),
        ]
        accepted = []
        for n, (key, region) in enumerate(uploads):
            data, _invalid = load.generate(100_000 + 3 * step.index + n)
            located = access.put(key, data, region=region, source="scenario")
            accepted.append({"key": key, "region": located.region, "sha256": located.info.sha256})
        step.detail["uploads"] = accepted
        self.stop.wait(step.duration)
        self.heal()

    def kill(self, step: Step) -> None:
        assert step.region is not None
        end = time.monotonic() + step.duration
        kills: list[dict[str, Any]] = []
        while time.monotonic() < end and not self.stop.is_set():
            kill = kill_worker(self.ws, step.region, turn=len(kills))
            if kill is not None:
                kill["at"] = self.at()
                kills.append(kill)
                self.stop.wait(0.5)
            else:
                self.stop.wait(0.05)
        step.detail["kills"] = kills
        if not kills:
            step.detail["note"] = "no chunk task was in flight to kill"

    def recovery(self, step: Step) -> None:
        active, _standby = self.routing_roles()
        if step.kind == "failback":
            home = self.ws.regions[0]
            if active == home:
                step.outcome = "skipped"
                step.detail["note"] = f"{home} is already active"
                return
            plan_name, target = "failback", home
        else:
            plan_name, target = "failover", failover_target(self.ws, None)
        if step.kind == "crash-failover":
            pid = supervisor.kill(self.ws, supervisor.Proc("region", active))
            step.detail["killed"] = {"region": active, "pid": pid, "at": self.at()}
        execution = Runbook(
            self.ws, plan_name, target, yes=True, force=True, max_wait=5.0, settle=5.0
        ).execute()
        step.detail.update(
            plan=plan_name,
            target=target,
            outcome=execution.outcome,
            reason=execution.reason,
            rto_seconds=execution.rto_seconds,
            epoch=[execution.epoch_before, execution.epoch_after],
            at_risk=len(execution.at_risk),
        )
        if execution.outcome != "succeeded":
            step.outcome = "failed"
        if step.kind == "crash-failover":
            supervisor.start(self.ws, only=[supervisor.Proc("region", active)])
            step.detail["restarted"] = active

    def execute_step(self, step: Step, load: LoadGenerator) -> None:
        if self.stop.wait(step.gap):
            step.outcome = "interrupted"
            return
        active, standby = self.routing_roles()
        step.region = {"active": active, "standby": standby}.get(step.role)
        step.started = self.at()
        step.outcome = "done"
        self.echo(f"[{step.started:7.2f}s] {step.kind} ({step.region or 'all'}) {step.duration}s")
        try:
            if step.kind in RECOVERY_KINDS:
                self.recovery(step)
            elif step.kind == CONFLICT:
                self.conflict(step, load)
            elif EXPERIMENTS[step.kind].kills_workers:
                self.kill(step)
            else:
                self.fault(step)
        except MrbatchError as exc:
            step.outcome = "failed"
            step.detail["error"] = str(exc)
        step.ended = self.at()
        if self.stop.is_set():
            step.outcome = "interrupted"

    # ------------------------------------------------------------------ restoring
    def heal(self) -> None:
        for fault in self.armed:
            self.faults.disarm(fault.id)
        self.armed = []

    def revive(self) -> list[str]:
        dead = [p for p, pid in supervisor.running(self.ws).items() if pid is None]
        if dead:
            supervisor.start(self.ws, only=dead)
        return [p.label for p in dead]

    def run(self) -> ScenarioReport:
        down = [p.label for p, pid in supervisor.running(self.ws).items() if pid is None]
        if down:
            raise UsageError(
                f"the deployment is not up: {', '.join(down)} not running",
                hint="start it with `mrbatch up --detach`",
            )
        opts = self.options
        span = sum(s.gap + s.duration for s in self.report.schedule)
        load = LoadGenerator(
            self.ws,
            LoadOptions(
                files=opts.files,
                interval=span / opts.files if opts.files else 0.0,
                rows=opts.rows,
                seed=opts.seed,
                prefix=f"input/scenario/seed-{opts.seed}",
                timeout=opts.recover_timeout,
            ),
            stop=self.stop,
            tag=time.strftime("%Y%m%dT%H%M%S"),
        )
        uploader = threading.Thread(target=load.upload_all, name="scenario-load", daemon=True)
        uploader.start()
        try:
            for step in self.report.schedule:
                self.execute_step(step, load)
                if self.stop.is_set():
                    break
        finally:
            self.heal()
            revived = self.revive()
            if revived:
                self.echo(f"restarted {', '.join(revived)}")
        uploader.join()
        healed = time.monotonic()
        self.report.interrupted = self.stop.is_set()
        while not self.stop.is_set():
            if load.poll() == 0:
                quick = verify(self.ws, deep=False)
                if quick.counts["pending"] == 0 and quick.diverged == 0:
                    self.report.recovered = True
                    self.report.time_to_recover = round(time.monotonic() - healed, 3)
                    break
            if time.monotonic() - healed > opts.recover_timeout:
                break
            self.stop.wait(0.2)
        load.poll(every=True)  # every file as it is now, in the report
        load.report.ended = time.time()
        self.report.load = {k: v for k, v in load.report.to_dict().items() if k != "results"}
        result = verify(self.ws, deep=True, wait=0 if self.stop.is_set() else 5)
        self.report.verify = result.to_dict()
        self.report.seconds = time.monotonic() - self.t0
        self.echo(
            f"[{self.at():7.2f}s] verify: {'ok' if result.ok else 'VIOLATIONS'} {result.counts}"
        )
        return self.report


def run_scenario(
    ws: Workspace,
    options: ScenarioOptions,
    *,
    stop: threading.Event | None = None,
    echo: Callable[[str], None] | None = None,
) -> ScenarioReport:
    """Run ``plan(options)`` against the running deployment of ``ws``; see the module doc."""
    return _Runner(ws, options, stop or threading.Event(), echo or (lambda _line: None)).run()
