"""Drills: recovery practised on the live deployment, without a person at a terminal.

A drill puts a load through the access point, fails over to the standby while the load runs,
waits for the files, fails back to the region it started from — always, whatever happened
before — waits again and runs ``verify``. It passes only when ``verify`` is clean, every
accepted file completed, nothing was left at risk and each switch met its RTO budget
(``drill.rto_budget``, default ``failover.desired_rto``). Each switch writes its own recovery
report, and the drill one more that names them; the plans it ran are marked with the drill's id
so ``plan history`` lists them apart from real recoveries.

A drill does not start while ``drill.freeze`` (or ``mrbatch drill freeze``) says so, while
replication has more than ``drill.max_backlog`` changes to copy, while the active region
drives more than ``drill.max_runs_in_flight`` runs, or while a plan is in progress; ``watch``
starts one every ``drill.every``, inside ``drill.windows`` when any are set.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .. import backends
from ..config.workspace import Workspace
from ..errors import MrbatchError
from ..proof.loadgen import LoadGenerator, LoadOptions
from ..proof.verify import verify
from ..runtime import supervisor
from ..runtime.replication import region_backlog
from .answers import operator, switch_mode
from .audit import write_drill_report
from .operations import failover_target
from .parity import parity
from .plan import DRILL_PREFIX, Execution
from .runbook import Runbook

__all__ = [
    "DRILL_PREFIX",
    "FREEZE_DOC",
    "DrillBlocked",
    "blocked",
    "due",
    "freeze",
    "last_drill",
    "run_drill",
]

FREEZE_DOC = "drill-freeze"


class DrillBlocked(MrbatchError):
    """A drill may not start now; the message says what blocks it."""

    code = "drill_blocked"


def freeze(ws: Workspace, frozen: bool, *, reason: str | None = None) -> dict[str, Any]:
    """Stop (or allow again) every drill from starting, at run time."""
    body = {"frozen": frozen, "by": operator(), "at": time.time(), "reason": reason}
    backends.open_control_plane(ws).put_document(FREEZE_DOC, body)
    return body


def last_drill(ws: Workspace) -> dict[str, Any] | None:
    docs = backends.open_control_plane(ws).documents(DRILL_PREFIX)
    return max(docs.values(), key=lambda d: d.get("started", 0), default=None)


def due(ws: Workspace, now: float) -> bool:
    every = ws.config.drill.every
    if not every:
        return False
    last = last_drill(ws)
    return last is None or now - float(last.get("started", 0)) >= every


def blocked(ws: Workspace, *, scheduled: bool, now: float | None = None) -> str | None:
    """Why a drill cannot start now, or None."""
    now = time.time() if now is None else now
    settings = ws.config.drill
    if settings.freeze:
        return "drills are frozen (drill.freeze = true)"
    control = backends.open_control_plane(ws)
    switch = control.documents(FREEZE_DOC).get(FREEZE_DOC)
    if switch and switch.get("frozen"):
        why = f": {switch['reason']}" if switch.get("reason") else ""
        return f"drills are frozen by {switch.get('by')} (`mrbatch drill unfreeze`){why}"
    if scheduled and settings.windows:
        when = datetime.fromtimestamp(now, UTC)
        if not any(w.contains(when) for w in settings.parsed_windows()):
            return f"outside the drill windows ({', '.join(settings.windows)}, UTC)"
    routing = control.routing()
    if routing.phase != "ACTIVE":
        return f"a recovery plan is in progress (phase {routing.phase})"
    down = [p.label for p, pid in supervisor.running(ws).items() if pid is None]
    if down:
        return f"the deployment is not fully up: {', '.join(down)} not running"
    backlog = sum(region_backlog(ws, region).total for region in ws.regions)
    if backlog > settings.max_backlog:
        return f"replication backlog {backlog} above drill.max_backlog {settings.max_backlog}"
    beat = control.heartbeats().get(routing.active_region)
    flying = int((beat.info.get("runs_in_flight") or 0) if beat else 0)
    if flying > settings.max_runs_in_flight:
        return (
            f"{flying} runs in flight in {routing.active_region}, above"
            f" drill.max_runs_in_flight {settings.max_runs_in_flight}"
        )
    return None


class _Drill:
    def __init__(
        self,
        ws: Workspace,
        *,
        files: int,
        rows: int,
        mode: str,
        trigger: str,
        echo: Callable[[str], None],
    ) -> None:
        self.ws = ws
        self.echo = echo
        self.mode = mode
        self.id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.routing = backends.open_control_plane(ws).routing()
        self.home = self.routing.active_region
        self.away = failover_target(ws, None)
        self.budget = ws.config.drill.rto_budget or ws.config.failover.desired_rto
        self.deadline = time.monotonic() + ws.config.drill.timeout
        self.stop = threading.Event()
        self.load = LoadGenerator(
            ws,
            LoadOptions(
                files=files,
                rows=rows,
                interval=0.1,
                seed=int(time.time()) % 100_000,
                prefix=f"input/drill/{self.id}",
                timeout=ws.config.drill.timeout,
            ),
            stop=self.stop,
            tag="drill",
        )
        self.record: dict[str, Any] = {
            "drill": self.id,
            "trigger": trigger,
            "mode": mode,
            "home": self.home,
            "away": self.away,
            "started": time.time(),
            "state": "running",
            "plans": [],
            "failures": [],
        }

    def save(self) -> None:
        try:
            backends.open_control_plane(self.ws).put_document(DRILL_PREFIX + self.id, self.record)
        except MrbatchError:
            pass

    def _watchdog(self, runbook: Runbook) -> threading.Timer:
        """At the drill's deadline, a graceful wait still going on is switched to ungraceful."""
        left = max(0.0, self.deadline - time.monotonic())

        def expire() -> None:
            try:
                switch_mode(self.ws, runbook.ctx.execution.id, "ungraceful", by="drill timeout")
            except MrbatchError:
                pass

        timer = threading.Timer(left, expire)
        timer.daemon = True
        timer.start()
        return timer

    def switch(self, plan: str, target: str) -> Execution:
        self.echo(f"drill {self.id}: {plan} to {target} ({self.mode})")
        runbook = Runbook(
            self.ws,
            plan,
            target,
            yes=True,
            force=True,  # a drill switches back on purpose: the anti-flap rule is waived
            mode=self.mode,
            trigger="drill",
            drill=self.id,
            detected=(None, None),
            echo=lambda line: self.echo("  " + line),
        )
        timer = self._watchdog(runbook)
        try:
            execution = runbook.execute()
        finally:
            timer.cancel()
        rto = execution.rto_seconds
        met = rto is not None and rto <= self.budget
        report = execution.report or {}
        self.record["plans"].append(
            {
                "plan": plan,
                "execution": execution.id,
                "outcome": execution.outcome,
                "rto": rto,
                "budget": self.budget,
                "met": met,
                "at_risk": len(
                    [i for i in execution.rpo.get("items", []) if i["state"] != "closed"]
                )
                + len(execution.at_risk),
                "report_seq": report.get("seq"),
                "report_hash": report.get("hash"),
            }
        )
        if execution.outcome != "succeeded":
            self.fail(f"{plan} {execution.outcome}: {execution.reason}")
        elif not met:
            self.fail(f"{plan} RTO {rto}s over the budget {self.budget:.0f}s")
        self.save()
        return execution

    def fail(self, reason: str) -> None:
        self.echo(f"drill {self.id}: FAIL {reason}")
        self.record["failures"].append(reason)

    def wait_uploaded(self, fraction: float) -> None:
        wanted = int(self.load.options.files * fraction)
        while len(self.load.report.results) < wanted and time.monotonic() < self.deadline:
            if not self.uploader.is_alive():
                return
            time.sleep(0.05)

    def wait_files(self) -> bool:
        return self.load.wait(timeout=max(0.0, self.deadline - time.monotonic()))

    def run(self) -> dict[str, Any]:
        self.save()
        self.echo(f"drill {self.id}: {self.home} -> {self.away} -> {self.home}, under load")
        self.uploader = threading.Thread(target=self.load.upload_all, name="drill-load")
        self.uploader.start()
        try:
            self.wait_uploaded(1 / 3)
            over = self.switch("failover", self.away)
            if over.fenced_at is not None:
                self.wait_uploaded(2 / 3)
                if not self.wait_files():
                    self.fail("the files in flight did not finish after the failover")
        except BaseException:
            self.stop.set()  # interrupted: no more uploads, but still fail back
            raise
        finally:
            # always fail back, whatever happened
            try:
                active = backends.open_control_plane(self.ws).routing().active_region
                if active != self.home:
                    self.switch("failback", self.home)
            except MrbatchError as exc:
                self.fail(f"failback could not run: {exc}")
            self.uploader.join()
        if not self.wait_files():
            self.fail("not every file of the drill's load finished in time")
        self.load.report.ended = time.time()
        load = {k: v for k, v in self.load.report.to_dict().items() if k != "results"}
        self.record["load"] = load
        for what in ("failed", "refused", "pending"):
            if load.get(what):
                self.fail(f"{load[what]} file(s) of the load {what}")
        result = verify(self.ws, deep=True, wait=10)
        checked = result.to_dict()
        self.record["verify"] = {
            "ok": checked["ok"],
            "counts": checked["counts"],
            "violations": checked["violations"][:50],
        }
        if not result.ok:
            self.fail(f"verify found {len(checked['violations'])} violation(s)")
        self.record["parity"] = parity(self.ws)
        if any(p["at_risk"] for p in self.record["plans"]):
            self.fail("inputs were left at risk")
        self.record.update(ended=time.time(), passed=not self.record["failures"])
        self.record["state"] = "passed" if self.record["passed"] else "failed"
        stored = write_drill_report(self.ws, self.record)
        self.record["report"] = {"seq": stored["seq"], "hash": stored["hash"], **stored["files"]}
        self.save()
        self.echo(
            f"drill {self.id}: {'PASSED' if self.record['passed'] else 'FAILED'}"
            f" (report {stored['seq']}: {stored['files']['markdown']})"
        )
        return {**stored, "report": self.record["report"]}


def run_drill(
    ws: Workspace,
    *,
    files: int | None = None,
    rows: int | None = None,
    mode: str | None = None,
    trigger: str = "command",
    force: bool = False,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one drill (see the module doc) and return its report. Refuses to start while
    :func:`blocked` says so, unless ``force``."""
    settings = ws.config.drill
    why = None if force else blocked(ws, scheduled=trigger == "watch")
    if why is not None:
        raise DrillBlocked(f"no drill now: {why}", hint="--force starts one anyway")
    drill = _Drill(
        ws,
        files=settings.files if files is None else files,
        rows=settings.rows if rows is None else rows,
        mode=mode or settings.mode,
        trigger=trigger,
        echo=echo or (lambda _line: None),
    )
    return drill.run()
