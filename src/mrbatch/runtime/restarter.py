"""Keeping a deployment alive: start a region, replicator or gateway process again when it dies
(a crash, SIGKILL, the OOM killer).

This runs in the supervisor daemon that ``mrbatch up --detach`` starts, or in ``mrbatch up``
itself in the foreground. Every ``[supervisor] poll_interval`` it looks at each process by the
pid and start time ``runtime.supervisor`` recorded. A death is noticed, its exit status recorded
(known when the process was started here) and a restart scheduled after a pause that doubles
with each death in a row (``retry.Backoff``, capped at ``restart_max_backoff``) and is back to
``restart_backoff`` once the process has stayed up for ``stable_after``. A process that someone
else started meanwhile (a chaos experiment restoring it, a second ``up``) is adopted, never
started twice: every start goes through the start lock. With ``restart = false`` a death is
recorded and the process stays down.

What it knows is written after every pass to ``<data dir>/run/restarts.json`` (a temp file
renamed into place, so a reader never sees half of it): per process the restarts, the deaths in
a row, the last exit, when it died, the pause and when the restart is due, when it was started
again. ``mrbatch status`` reads it. A supervisor that starts while the deployment is running
continues the counts; one that starts a deployment from nothing starts them at zero.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..config.reload import ConfigWatcher
from ..config.workspace import Workspace
from ..retry import Backoff
from . import supervisor
from .supervisor import Proc

__all__ = ["ProcessRecord", "Restarter", "read_state", "state_file"]

log = logging.getLogger("mrbatch.supervisor")

# Small enough (below 1/3) that with a factor of 2 every pause is longer than the one before,
# up to the cap; large enough that processes that died together do not all restart in step.
JITTER = 0.2
# The longest pause after passes of the loop itself failed (an unwritable run dir, say).
LOOP_MAX_BACKOFF = 30.0


def state_file(ws: Workspace) -> Path:
    return ws.run_dir / "restarts.json"


def read_state(ws: Workspace) -> dict[str, Any]:
    """The supervisor's last written state; empty if it never wrote one."""
    try:
        data = json.loads(state_file(ws).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class ProcessRecord:
    """What the supervisor knows of one process (its entry in restarts.json). Times are
    seconds since the epoch."""

    pid: int | None = None
    restarts: int = 0  # started again by the supervisor after a death
    deaths: int = 0  # deaths in a row, without staying up stable_after in between
    last_exit: str | None = None  # "killed by SIGKILL", "exit status 1", "unknown (...)"
    exit_code: int | None = None
    exit_signal: str | None = None
    died_at: float | None = None
    pause: float | None = None  # the backoff after the last death
    next_due: float | None = None  # when the restart is due; None: none is waiting
    restarted_at: float | None = None
    up_since: float | None = None

    @classmethod
    def resumed(cls, data: Any) -> ProcessRecord:
        """The counts and last exit of a previous supervisor's record (not its pid: that is
        looked up afresh)."""
        if not isinstance(data, dict):
            return cls()
        names = {f.name for f in dataclasses.fields(cls)} - {"pid", "next_due", "up_since"}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError:
            return cls()


@dataclass
class _Watch:
    """One process as the loop follows it, on the monotonic clock."""

    record: ProcessRecord = field(default_factory=ProcessRecord)
    pid: int | None = None  # the pid last seen running
    up_since: float = 0.0
    due: float | None = 0.0  # when to start it; 0: at once (it was never seen running)
    after_death: bool = False  # the start that is due is a restart


def describe_exit(code: int | None) -> tuple[str, int | None, str | None]:
    """Text, exit code and signal name of a ``Popen.returncode``."""
    if code is None:
        return "unknown (not started by this supervisor)", None, None
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}", None, name
    return f"exit status {code}", code, None


class Restarter:
    """The supervisor's loop over the deployment's processes."""

    def __init__(
        self, ws: Workspace, stop: threading.Event, *, rng: random.Random | None = None
    ) -> None:
        self.ws = ws
        self.stop = stop
        self.rng = rng or random.Random()
        self._configure(ws)
        self.watcher = ConfigWatcher(ws, "supervisor")
        self.watches = {proc: _Watch() for proc in supervisor.expected(ws)}
        self.started_at = time.time()
        self.passes = 0
        self.failures = 0

    def _configure(self, ws: Workspace) -> None:
        self.ws = ws
        self.config = ws.config.supervisor
        self.backoff = Backoff(
            self.config.restart_backoff,
            self.config.restart_max_backoff,
            jitter=JITTER,
            rng=self.rng,
        )
        self.loop_backoff = Backoff(self.config.poll_interval, LOOP_MAX_BACKOFF, rng=self.rng)

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        """The supervisor daemon's life: start what is missing, then keep it all running until
        ``stop`` is set (by SIGTERM from ``mrbatch down``)."""
        log.info("supervising %s (pid %d)", self.ws.config_path, os.getpid())
        try:
            try:
                self.start_missing()
            except Exception:  # the passes start whatever is still missing
                log.exception("starting the deployment failed")
            while not self.stop.is_set():
                self.stop.wait(self.step())
        finally:
            log.info("stopping: no process is started again")
            try:
                self._save(running=False)
            finally:
                supervisor.release_supervisor(self.ws)

    def start_missing(self) -> dict[Proc, tuple[int, bool]]:
        """Start every process that is not running (not counted as a restart) and watch them
        all; the result of ``supervisor.start``."""
        if any(supervisor.running(self.ws).values()):
            self._resume()  # the deployment was up: continue the counts of who supervised it
        started = supervisor.start(self.ws, stop_requested=self.stop)
        now = time.monotonic()
        for proc, (pid, new) in started.items():
            if new:
                log.info("started %s (pid %d)", proc.label, pid)
            self._adopt(proc, pid, now)
        self._save()
        return started

    def step(self) -> float:
        """One pass over every process; returns the pause before the next. A failing pass is
        logged and retried after a growing pause, never fatal."""
        try:
            edited = self.watcher.poll()
            if edited is not None:  # [supervisor] edited: restart, backoffs, poll interval
                self._configure(edited)
            for proc in self.watches:
                if self.stop.is_set():
                    break
                self._check(proc, time.monotonic())
            # A child that ended unwatched (its pid file removed under it) is no zombie; the
            # watched ones are left for _died, which kills what is left of their group first.
            supervisor.reap(keep={w.pid for w in self.watches.values() if w.pid is not None})
            self.passes += 1
            self._save()
        except Exception:
            self.failures += 1
            log.exception("supervisor pass failed (%d in a row)", self.failures)
            return self.loop_backoff.delay(self.failures)
        self.failures = 0
        return self.config.poll_interval

    # ------------------------------------------------------------------ one process
    def _check(self, proc: Proc, now: float) -> None:
        watch = self.watches[proc]
        pid = supervisor.pid_of(self.ws, proc)
        if pid is not None:
            if pid != watch.pid:
                self._adopt(proc, pid, now)  # started by us, by someone else, or seen first
            elif watch.record.deaths and now - watch.up_since >= self.config.stable_after:
                watch.record.deaths = 0
                log.info("%s has stayed up: the next restart pauses the least", proc.label)
        elif watch.pid is not None:
            self._died(proc, watch, now)
        elif watch.due is not None and now >= watch.due:
            self._start(proc, watch, now)

    def _adopt(self, proc: Proc, pid: int, now: float) -> None:
        watch = self.watches[proc]
        watch.pid, watch.up_since, watch.due, watch.after_death = pid, now, None, False
        record = watch.record
        record.pid, record.next_due, record.up_since = pid, None, time.time()

    def _died(self, proc: Proc, watch: _Watch, now: float) -> None:
        assert watch.pid is not None
        code = supervisor.exit_status(watch.pid, stop=self.stop)
        record = watch.record
        record.last_exit, record.exit_code, record.exit_signal = describe_exit(code)
        record.pid, record.up_since, record.died_at = None, None, time.time()
        record.deaths += 1
        if self.config.restart:
            self._schedule(watch, now)
            log.warning(
                "%s (pid %d) died: %s; starting it again in %.2fs (death %d in a row)",
                proc.label,
                watch.pid,
                record.last_exit,
                record.pause,
                record.deaths,
            )
        else:
            watch.due, record.pause, record.next_due = None, None, None
            log.warning(
                "%s (pid %d) died: %s; it stays down ([supervisor] restart = false)",
                proc.label,
                watch.pid,
                record.last_exit,
            )
        watch.pid = None

    def _schedule(self, watch: _Watch, now: float) -> None:
        pause = self.backoff.delay(watch.record.deaths)
        watch.due, watch.after_death = now + pause, True
        watch.record.pause = round(pause, 3)
        watch.record.next_due = time.time() + pause

    def _start(self, proc: Proc, watch: _Watch, now: float) -> None:
        try:
            started = supervisor.start(self.ws, only=[proc], stop_requested=self.stop)
        except OSError as exc:  # cannot fork, cannot open its log: try again, later each time
            watch.record.deaths += 1
            self._schedule(watch, now)
            log.error(
                "cannot start %s: %s; trying again in %.2fs", proc.label, exc, watch.record.pause
            )
            return
        if proc not in started:
            return  # stopping: nothing is started any more
        pid, new = started[proc]
        if new and watch.after_death:
            watch.record.restarts += 1
            watch.record.restarted_at = time.time()
            log.warning(
                "started %s again (pid %d), restart %d", proc.label, pid, watch.record.restarts
            )
        elif new:
            log.info("started %s (pid %d)", proc.label, pid)
        self._adopt(proc, pid, now)

    # ------------------------------------------------------------------ the state file
    def _resume(self) -> None:
        previous = read_state(self.ws).get("processes")
        if not isinstance(previous, dict):
            return
        for proc, watch in self.watches.items():
            watch.record = ProcessRecord.resumed(previous.get(proc.label))

    def _save(self, *, running: bool = True) -> None:
        state = {
            "pid": os.getpid(),
            "running": running,
            "restart": self.config.restart,
            "version": __version__,
            "config": self.watcher.report(),
            "started_at": self.started_at,
            "checked_at": time.time(),
            "passes": self.passes,
            "processes": {
                proc.label: dataclasses.asdict(watch.record) for proc, watch in self.watches.items()
            },
        }
        path = state_file(self.ws)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, path)
