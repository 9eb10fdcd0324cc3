"""One region's process: trigger -> orchestrate -> execute, in one loop.

Every region watches its own bucket (:mod:`.bucket_watch`) and records each input version that
appears there without an ``Accepted`` record (a write that bypassed the access point, or one
whose acknowledgement was cut short). Only the ACTIVE region of the current epoch claims runs,
one for every ``Accepted`` record its state replica holds, and drives them. A standby (or
fenced) region keeps heartbeating and publishes nothing, so a fenced region that comes back
stays quiet until it is made active again.
The loop never dies on an error: it logs, backs off with jitter and goes on. Signal handlers
only set a flag.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, wait

from .. import __version__, backends
from ..access.ledger import accepted_in
from ..config.fingerprint import fingerprint as parity_hashes
from ..config.reload import ConfigWatcher
from ..config.workspace import Workspace
from ..errors import MrbatchError, UnavailableError
from ..maintain.gc import collect_garbage, purge_region, retention_window
from ..model.records import ACCEPTED, RUN, Accepted, FileRun, run_pk
from ..ports import Executor, Record, RegionState, Routing
from ..retry import Backoff
from .bucket_watch import BucketWatch
from .orchestrator import Orchestrator
from .takeover import Missing, Takeover, take_over

__all__ = ["RegionProcess", "is_active"]

log = logging.getLogger("mrbatch.region")
UNREACHABLE = "control-plane-unreachable"


def is_active(routing: Routing, region: str) -> bool:
    """May ``region`` claim and drive runs now?"""
    return (
        routing.active_region == region
        and routing.regions.get(region) == RegionState.ACTIVE
        and routing.phase == "ACTIVE"
    )


class RegionProcess:
    def __init__(self, ws: Workspace, region: str, *, executor: Executor | None = None) -> None:
        ws.check_region(region)
        self.ws = ws
        self.region = region
        self.timing = ws.config.timing
        # Edits of mrbatch.toml are applied while running (see config.reload).
        self.config = ConfigWatcher(ws, f"region {region}")
        self.store = backends.open_object_store(ws, region)
        self.table = backends.open_state_table(ws, region)
        self.bucket = BucketWatch(region, self.store, self.table)
        self.control = backends.open_control_plane(ws, caller=region)
        self.executor = executor or backends.open_executor(ws)
        self.orch = Orchestrator(
            ws,
            region,
            store=self.store,
            table=self.table,
            control=self.control,
            notifier=backends.open_notifier(ws),
            executor=self.executor,
            config=self.config.ref(),
        )
        self.stop = threading.Event()
        # The loop's pause after failing passes in a row (a healthy pass waits poll_interval).
        self.loop_backoff = Backoff(base=2 * self.timing.poll_interval, cap=5.0)
        self.state = "starting"
        self.fingerprint = parity_hashes(ws)  # reported in heartbeats: standby parity
        self.last_error: str | None = None
        self.loop_errors = 0
        self._last_heartbeat = 0.0
        # A change of state, epoch or configuration is reported at once.
        self._last_reported: tuple[str, int | None, str, str | None] = ("", None, "", None)
        self._last_rescan = 0.0
        self._state_cursor = 0
        # Runs this region should take over but cannot yet (their input has not arrived).
        self.waiting: dict[str, Missing] = {}
        self._last_waiting_retry = 0.0
        # Runs published elsewhere whose result must be shown at output/<p> once it arrives.
        self.showing: dict[str, Record] = {}
        # Accepted versions whose bytes have not arrived here yet, by run id.
        self.waiting_inputs: dict[str, Accepted] = {}
        self._last_inputs_retry = 0.0
        self._retry_now = False
        self.reconciled = 0
        self.ticks = 0
        self._last_gc = time.monotonic()  # the first pass one interval after the start
        self._gc_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ one pass
    def tick(self) -> None:
        self.ticks += 1
        edited = self.config.poll()
        if edited is not None:
            self.reconfigure(edited)
        try:
            routing = self.control.routing()
        except UnavailableError as exc:
            # Without the control plane we cannot confirm anything: pause, keep what we have.
            if self.state != UNREACHABLE:
                log.warning(
                    "region %s: the control plane cannot be reached (%s): no claim, publish or"
                    " mail until it answers (self-fenced)",
                    self.region,
                    exc,
                )
            self.state = UNREACHABLE
            self.last_error = str(exc)
            return
        if self.state == UNREACHABLE:
            log.warning("region %s: the control plane answers again", self.region)
        active = is_active(routing, self.region)
        if active:
            self.state = "active"
        elif routing.active_region == self.region:
            self.state = "activating"  # a plan fenced the old region and is catching up
        else:
            self.state = routing.regions.get(self.region, "unknown").lower()
        if active and self.orch.epoch != routing.epoch:
            self.orch.activate(routing)  # before the heartbeat, so it reports the new epoch
            self._last_rescan = 0.0  # a full scan of input/ whenever we become active
            self._state_cursor = 0  # and of the state table
            self.waiting.clear()
            self.waiting_inputs.clear()
            self.showing.clear()
        self._heartbeat(routing)
        self._maybe_collect(active)
        try:
            arrived = self.bucket.poll(self.timing.rescan_interval)
            if arrived & self.waiting_inputs.keys():
                self._retry_now = True  # bytes we waited for: claim them now, not on a retry
        except UnavailableError as exc:
            self.loop_errors += 1
            self.last_error = str(exc)
            log.warning("region %s: watching the bucket paused: %s", self.region, exc)
        if not active:
            if self.orch.epoch is not None:
                self.orch.deactivate(f"{self.region} is no longer ACTIVE (epoch {routing.epoch})")
            return
        self._adopt(routing)
        try:
            if self._retry_now:
                self._retry_now, self._last_inputs_retry = False, 0.0
            self._trigger(routing)
        except UnavailableError as exc:
            # No new claims while the bucket is down, but runs in flight keep going (their
            # chunk tasks wait for the bucket without using up their attempts).
            self.loop_errors += 1
            self.last_error = str(exc)
            log.warning("region %s: trigger paused: %s", self.region, exc)
        self.orch.step(routing)

    def _trigger(self, routing: Routing) -> None:
        """Claim every accepted version that has no run yet (the state feed brings new
        ``Accepted`` records to ``_adopt``; this is the periodic safety net under it and the
        retry of versions whose bytes had not arrived)."""
        now = time.monotonic()
        if now - self._last_rescan >= self.timing.rescan_interval:
            self._last_rescan = now
            for accepted in accepted_in(self.table):
                self._claim(accepted, routing)
            # Any unfinished run this region should be driving (or take over) and is not.
            for record in self.table.scan(RUN):
                if record.pk.removeprefix("run/") not in self.orch.runs:
                    self._consider(record, routing)
        elif self.waiting_inputs and now - self._last_inputs_retry >= 1.0:
            self._last_inputs_retry = now
            for accepted in list(self.waiting_inputs.values()):
                self._claim(accepted, routing)

    def _claim(self, accepted: Accepted, routing: Routing) -> None:
        """Claim one accepted version once its bytes are here (else wait for them)."""
        record = self.table.get(run_pk(accepted.run_id))
        if record is not None:
            self.waiting_inputs.pop(accepted.run_id, None)
            if record.pk.removeprefix("run/") in self.waiting:
                self._consider(record, routing)  # the input it was waiting for has arrived
            return
        info = self.store.head(accepted.object_key)
        if info is None:
            if accepted.run_id not in self.waiting_inputs:
                log.warning(
                    "%s (accepted by %s) cannot be claimed in %s yet: %s has not arrived",
                    accepted.key,
                    accepted.region,
                    self.region,
                    accepted.object_key,
                )
            self.waiting_inputs[accepted.run_id] = accepted
            return
        self.waiting_inputs.pop(accepted.run_id, None)
        self.orch.claim(accepted, info, routing)

    # ------------------------------------------------------------------ taking runs over
    def _adopt(self, routing: Routing) -> None:
        """Follow the state table: drive every unfinished run that is ours, take over every
        unfinished run of an older epoch or another region (continuous reconciliation)."""
        while True:
            changes = self.table.changes(self._state_cursor, limit=500)
            for record in changes:
                if record.deleted:
                    continue  # collected after its retention window: nothing to drive
                if record.kind == RUN:
                    self._consider(record, routing)
                elif record.kind == ACCEPTED:
                    self._claim(Accepted.from_record(record), routing)
            if changes:
                self._state_cursor = changes[-1].seq
            if len(changes) < 500:
                break
        now = time.monotonic()
        if (self.waiting or self.showing) and now - self._last_waiting_retry >= 1.0:
            self._last_waiting_retry = now
            for run_id in [*self.waiting, *self.showing]:
                latest = self.table.get(run_pk(run_id))
                if latest is not None:
                    self._consider(latest, routing)

    def _consider(self, record: Record, routing: Routing) -> None:
        run = FileRun.from_record(record)
        if run.status.terminal:
            self.waiting.pop(run.run_id, None)
            if self.orch.wants_failure_mail(run):
                self.orch.queue_failure_mail(run, record.version)
            if run.result_key and (run.region, run.epoch) != (self.region, routing.epoch):
                # Published elsewhere or earlier: output/<p> must still show the newest
                # accepted version, whatever replication let win meanwhile.
                if self.orch.show_newest(run, routing):
                    self.showing.pop(run.run_id, None)
                else:
                    self.showing[run.run_id] = record
            return
        if run.region == self.region and run.epoch == routing.epoch:
            self.waiting.pop(run.run_id, None)
            self.orch.adopt(run, record.version)
            return
        outcome = take_over(
            record,
            region=self.region,
            routing=routing,
            store=self.store,
            table=self.table,
            config=self.ws.config,
        )
        if isinstance(outcome, Missing):
            if run.run_id not in self.waiting:
                log.warning(
                    "run %s (%s) cannot resume in %s yet: its %s %s has not arrived",
                    run.run_id,
                    run.input_key,
                    self.region,
                    outcome.what,
                    outcome.key,
                )
            self.waiting[run.run_id] = outcome
        elif isinstance(outcome, Takeover):
            self.waiting.pop(run.run_id, None)
            self.reconciled += 1
            self.orch.stats["files_reconciled"] += 1
            fresh = self.table.get(record.pk)
            if fresh is not None:
                self.orch.adopt(FileRun.from_record(fresh), fresh.version)

    def reconfigure(self, ws: Workspace) -> None:
        """Apply an edited configuration (see config.reload): timing, retention, mail and the
        pipeline settings of the runs that start or are re-driven from now on."""
        notify_changed = ws.config.notify != self.ws.config.notify
        self.ws = ws
        self.fingerprint = parity_hashes(ws)  # what it runs with now: standby parity
        self.timing = ws.config.timing
        self.loop_backoff = Backoff(base=2 * self.timing.poll_interval, cap=5.0)
        self.orch.reconfigure(ws, self.config.ref())
        if notify_changed:
            self.orch.notifier = backends.open_notifier(ws)

    def _heartbeat(self, routing: Routing | None) -> None:
        now = time.monotonic()
        reported = (self.state, self.orch.epoch, self.config.digest, self.config.error)
        changed = reported != self._last_reported
        if not changed and now - self._last_heartbeat < self.timing.heartbeat_interval:
            return
        self._last_heartbeat = now
        self._last_reported = reported
        pids = self.executor.pids()
        try:
            self.control.heartbeat(
                self.region,
                os.getpid(),
                {
                    "state": self.state,
                    "runs_in_flight": len(self.orch.runs),
                    "epoch": self.orch.epoch,
                    "waiting": [m.to_dict() for m in self.waiting.values()]
                    + [
                        {
                            "run_id": a.run_id,
                            "input_key": a.key,
                            "region": a.region,
                            "what": "input",
                            "key": a.object_key,
                            "detail": {"sha256": a.sha256},
                        }
                        for a in self.waiting_inputs.values()
                    ],
                    "ticks": self.ticks,
                    "workers": pids,
                    # pool_restarts: workers lost and replaced (a killed worker breaks the pool)
                    "stats": {
                        **self.orch.stats,
                        "pool_restarts": getattr(self.executor, "restarts", 0),
                    },
                    "mail_retrying": self.orch.mail_retrying(),
                    "loop_errors": self.loop_errors,
                    "last_error": self.last_error,
                    **self.fingerprint,
                    "version": __version__,
                    "config": self.config.report(),
                },
            )
        except MrbatchError as exc:
            self.last_error = str(exc)

    def _maybe_collect(self, active: bool) -> None:
        """Every retention.interval, in a thread of its own so the loop never waits on it:
        the active region collects for the deployment, the others purge their own bucket."""
        retention = self.ws.config.retention
        now = time.monotonic()
        busy = self._gc_thread is not None and self._gc_thread.is_alive()
        if not retention.enabled or busy or now - self._last_gc < retention.interval:
            return
        self._last_gc = now

        def collect() -> None:
            try:
                if active:
                    collect_garbage(self.ws)
                else:
                    purge_region(
                        self.ws, self.region, time.time() - retention_window(self.ws), False
                    )
            except Exception:  # the next interval tries again; the loop must not die
                log.exception("region %s: garbage collection failed", self.region)

        self._gc_thread = threading.Thread(target=collect, name="gc", daemon=True)
        self._gc_thread.start()

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        log.info("region %s starting (pid %d)", self.region, os.getpid())
        self.executor.submit(os.getpid)  # start the workers now, not with the first file
        failures = 0
        try:
            while not self.stop.is_set():
                try:
                    self.tick()
                    failures = 0
                except Exception as exc:
                    failures += 1
                    self.loop_errors += 1
                    self.last_error = str(exc)
                    if isinstance(exc, MrbatchError):
                        log.warning("region %s: %s", self.region, exc)
                    else:
                        log.exception("region %s: loop error", self.region)
                self._wait(failures)
        finally:
            log.info("region %s stopping", self.region)
            self.orch.shutdown()
            self.executor.shutdown(cancel=True)

    def _wait(self, failures: int) -> None:
        timeout = self.loop_backoff.delay(failures) if failures else self.timing.poll_interval
        pending = [f for f in self.orch.futures() if not f.done()]
        if pending and not failures:
            wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
        else:
            self.stop.wait(timeout)
