"""Observability: samples of a deployment over time, and its metrics in Prometheus format.

A :class:`Sampler` reads the live deployment (routing control, heartbeats of the region
processes and replicators, replication backlog and lag: the same sources as ``mrbatch status``)
once a ``interval``, and keeps the last ``size`` samples in a ring buffer, so a dashboard opened
now still shows the last minutes. Region processes report their counters in their heartbeats;
those restart from zero when a process restarts, so the sampler folds every restart into a base
it adds back: its counters never go down while the gateway runs.

:class:`DeploymentCollector` exposes a sample (plus durable counts read from the state tables
and the plan log) through prometheus-client, with the reference dashboard's metrics per region.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import backends
from ..config.workspace import Workspace
from ..errors import MrbatchError
from ..ports import RegionState
from ..recovery.plan import Execution, history
from ..retry import Backoff
from . import views

__all__ = [
    "APP_STATES",
    "REGION_COUNTERS",
    "DeploymentCollector",
    "MonotonicCounters",
    "Sampler",
    "app_state",
    "plan_summaries",
]

log = logging.getLogger("mrbatch.metrics")

# Counter name (as in the region's heartbeat ``stats``) -> help text. The first seven are the
# reference dashboard's charts; the others are ours.
REGION_COUNTERS: dict[str, str] = {
    "files_split": "Input files split into chunks",
    "files_processed": "Files processed to the end (published and mailed)",
    "executions_started": "Orchestrator executions (file runs) started",
    "executions_succeeded": "Orchestrator executions that completed",
    "executions_failed": "Orchestrator executions that failed",
    "chunk_executions_started": "Chunk executions started",
    "chunk_executions_succeeded": "Chunk executions that succeeded",
    "chunk_executions_failed": "Chunk executions that failed (each attempt)",
    "files_reconciled": "Runs taken over from another region or epoch and re-driven",
    "rows_processed": "Rows read by completed runs",
    "rows_rejected": "Rows rejected by completed runs",
    "fenced_refusals": "Publishes or mails refused because the region could not confirm its epoch",
    "reference_preparations": "Reference versions sent to a worker to prepare ahead of chunks",
    "loop_errors": "Errors caught by the region's main loop",
}
APP_STATES = ("healthy", "degraded", "failover-in-progress", "unknown")


class MonotonicCounters:
    """Counters that survive restarts of the process reporting them.

    ``update(source, pid, values)`` returns the values plus everything earlier incarnations of
    ``source`` had counted: a new pid, or any value going down, is a restart, and the last
    values seen before it are added to the source's base. Increments made after a process's
    last report and before it died are lost (they were never reported)."""

    def __init__(self) -> None:
        self._base: dict[str, dict[str, float]] = {}
        self._last: dict[str, tuple[int | None, dict[str, float]]] = {}

    def update(self, source: str, pid: int | None, values: Mapping[str, float]) -> dict[str, float]:
        base = self._base.setdefault(source, {})
        previous = self._last.get(source)
        if previous is not None:
            old_pid, old_values = previous
            restarted = old_pid != pid or any(
                values.get(name, 0.0) < value for name, value in old_values.items()
            )
            if restarted:
                for name, value in old_values.items():
                    base[name] = base.get(name, 0.0) + value
        self._last[source] = (pid, dict(values))
        names = set(base) | set(values)
        return {name: base.get(name, 0.0) + values.get(name, 0.0) for name in sorted(names)}


def app_state(sample: Mapping[str, Any], heartbeat_timeout: float) -> str:
    """The application's state as clients should see it: ``failover-in-progress`` while a
    recovery plan holds the routing control in its FAILOVER phase, ``degraded`` when the active
    region's process is down or silent, ``unknown`` without a control plane, else ``healthy``."""
    if sample.get("active_region") is None:
        return "unknown"
    if sample.get("phase") != "ACTIVE":
        return "failover-in-progress"
    active = sample.get("regions", {}).get(sample["active_region"], {})
    age = active.get("heartbeat_age")
    if not active.get("alive") or age is None or age > heartbeat_timeout:
        return "degraded"
    return "healthy"


class Sampler:
    """Samples the deployment of ``ws`` (see the module docstring). Thread-safe.

    A sample is a JSON-ready dict: ``at``, ``active_region``, ``epoch``, ``phase``,
    ``app_state`` and per region ``state``, ``alive``, ``process_state``, ``heartbeat_age``,
    ``runs_in_flight``, ``backlog`` (+ ``backlog_objects``/``backlog_records``),
    ``lag_seconds``, ``replicator_alive``, ``counters`` (monotonic, see
    :data:`REGION_COUNTERS`) and ``replicated`` (objects/records applied into the region)."""

    def __init__(self, ws: Workspace, *, interval: float = 1.0, size: int = 600) -> None:
        self.ws = ws
        self.interval = interval
        self._samples: deque[dict[str, Any]] = deque(maxlen=size)
        self._counters = MonotonicCounters()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ sampling
    def sample(self) -> dict[str, Any]:
        """Read the deployment now; the sample is also appended to the history."""
        with self._lock:
            sample = self._read()
            self._samples.append(sample)
            return sample

    def latest(self, max_age: float | None = None) -> dict[str, Any]:
        """The newest sample if it is at most ``max_age`` (default: the interval) old, else a
        new one."""
        limit = self.interval if max_age is None else max_age
        with self._lock:
            newest = self._samples[-1] if self._samples else None
        if newest is not None and time.time() - newest["at"] <= limit:
            return newest
        return self.sample()

    def history(self, since: float | None = None) -> list[dict[str, Any]]:
        """Samples taken after ``since`` (all when None), oldest first."""
        with self._lock:
            samples = list(self._samples)
        if since is None:
            return samples
        return [s for s in samples if s["at"] > since]

    def _read(self) -> dict[str, Any]:
        status = views.status(self.ws)
        try:
            beats = backends.open_control_plane(self.ws).heartbeats()
        except MrbatchError:
            beats = {}
        regions: dict[str, Any] = {}
        for name, entry in status["regions"].items():
            beat = beats.get(name)
            stats = dict(beat.info.get("stats") or {}) if beat is not None else {}
            if beat is not None:
                stats["loop_errors"] = beat.info.get("loop_errors") or 0
            counts = {k: float(stats.get(k) or 0) for k in REGION_COUNTERS}
            replicator = beats.get(f"replicator:{name}")
            applied = dict(replicator.info.get("applied") or {}) if replicator else {}
            regions[name] = {
                "state": entry.get("state"),
                "alive": bool(entry.get("alive")),
                "process_state": entry.get("process_state"),
                "heartbeat_age": entry.get("heartbeat_age"),
                "runs_in_flight": entry.get("runs_in_flight"),
                "backlog": entry.get("backlog"),
                "backlog_objects": entry.get("backlog_objects"),
                "backlog_records": entry.get("backlog_records"),
                "lag_seconds": entry.get("lag_seconds"),
                "replicator_alive": bool(entry.get("replicator_alive")),
                "version": entry.get("version"),
                "replicator_version": entry.get("replicator_version"),
                "config_digest": (entry.get("config") or {}).get("digest"),
                "last_error": entry.get("last_error") or entry.get("error"),
                "counters": self._counters.update(
                    name, beat.pid if beat is not None else None, counts
                ),
                "replicated": self._counters.update(
                    f"replicator:{name}",
                    replicator.pid if replicator is not None else None,
                    {k: float(applied.get(k) or 0) for k in ("objects", "records")},
                ),
            }
        sample: dict[str, Any] = {
            "at": time.time(),
            "active_region": status.get("active_region"),
            "epoch": status.get("epoch"),
            "phase": status.get("phase"),
            "regions": regions,
            "versions": _versions(status),
            "verdict": status.get("verdict", {}).get("summary"),
        }
        if status.get("control_plane_error"):
            sample["error"] = status["control_plane_error"]
        sample["app_state"] = app_state(sample, self.ws.config.watch.heartbeat_timeout)
        return sample

    # ------------------------------------------------------------------ background
    def start(self) -> None:
        """Sample every ``interval`` in a background thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        failures = 0
        # Back off while sampling keeps failing, but never longer than 10 intervals.
        backoff = Backoff(base=2 * self.interval, cap=10 * self.interval)
        while True:
            try:
                self.sample()
                failures = 0
            except Exception:  # the dashboard must keep its history through a bad moment
                failures += 1
                log.exception("sampling the deployment failed")
            if self._stop.wait(backoff.delay(failures) if failures else self.interval):
                return


def _versions(status: Mapping[str, Any]) -> dict[str, str]:
    """The version of mrbatch every running process reports (label -> version), so a
    deployment running two versions shows it."""
    found: dict[str, str] = {}
    for name, entry in status.get("regions", {}).items():
        if entry.get("alive") and entry.get("version"):
            found[f"region:{name}"] = str(entry["version"])
        if entry.get("replicator_alive") and entry.get("replicator_version"):
            found[f"replicator:{name}"] = str(entry["replicator_version"])
    for label in ("gateway", "supervisor"):
        entry = status.get(label) or {}
        if entry.get("alive") and entry.get("version"):
            found[label] = str(entry["version"])
    return found


def _plan_summary(execution: Execution) -> dict[str, Any]:
    return {
        "id": execution.id,
        "plan": execution.plan,
        "source": execution.source,
        "target": execution.target,
        "started": execution.started,
        "ended": execution.ended,
        "outcome": execution.outcome,
        "reason": execution.reason,
        "rto_seconds": execution.rto_seconds,
        "desired_rto": execution.desired_rto,
        "epoch_before": execution.epoch_before,
        "epoch_after": execution.epoch_after,
        "at_risk": len(execution.at_risk),
        "steps": [
            {"name": s.name, "outcome": s.outcome, "seconds": s.seconds, "message": s.message}
            for s in execution.steps
        ],
    }


def plan_summaries(ws: Workspace, limit: int | None = None) -> list[dict[str, Any]]:
    """Recovery plan executions, newest first (``limit`` of them)."""
    executions = history(ws)
    executions.reverse()
    return [_plan_summary(e) for e in executions[:limit]]


class DeploymentCollector(Collector):
    """prometheus-client collector over a :class:`Sampler` and the durable records.

    Counters (``_total``) per region: the keys of :data:`REGION_COUNTERS`, and
    ``mrbatch_replication_applied_total{region,kind}``. Gauges: ``mrbatch_region_state
    {region,state}`` (1 for the region's state), ``mrbatch_region_up``,
    ``mrbatch_region_heartbeat_age_seconds``, ``mrbatch_region_runs_in_flight``,
    ``mrbatch_replication_backlog{region,kind}``, ``mrbatch_replication_lag_seconds``,
    ``mrbatch_routing_epoch``, ``mrbatch_app_state{state}``, ``mrbatch_runs{status}`` (from the
    state tables, so it survives every restart) and ``mrbatch_plan_executions{plan,outcome}``."""

    def __init__(self, ws: Workspace, sampler: Sampler) -> None:
        self.ws = ws
        self.sampler = sampler

    def collect(self) -> Iterable[Metric]:
        # A scrape reads the deployment now (a few milliseconds), never a second-old sample.
        sample = self.sampler.sample()
        regions: dict[str, Any] = sample["regions"]
        for name, text in REGION_COUNTERS.items():
            family = CounterMetricFamily(f"mrbatch_{name}", text, labels=["region"])
            for region, data in regions.items():
                family.add_metric([region], data["counters"].get(name, 0.0))
            yield family
        applied = CounterMetricFamily(
            "mrbatch_replication_applied",
            "Changes (objects, state records) replicated into the region",
            labels=["region", "kind"],
        )
        for region, data in regions.items():
            for kind, value in data["replicated"].items():
                applied.add_metric([region, kind], value)
        yield applied
        yield from self._region_gauges(regions)
        yield from self._routing_gauges(sample)
        yield from self._durable()

    @staticmethod
    def _region_gauges(regions: dict[str, Any]) -> Iterable[Metric]:
        state = GaugeMetricFamily(
            "mrbatch_region_state",
            "Routing state of each region (1 for its current state)",
            labels=["region", "state"],
        )
        up = GaugeMetricFamily(
            "mrbatch_region_up", "1 when the region's process is running", labels=["region"]
        )
        age = GaugeMetricFamily(
            "mrbatch_region_heartbeat_age_seconds",
            "Seconds since the region's process last reported",
            labels=["region"],
        )
        flight = GaugeMetricFamily(
            "mrbatch_region_runs_in_flight", "Runs the region is driving now", labels=["region"]
        )
        backlog = GaugeMetricFamily(
            "mrbatch_replication_backlog",
            "Changes in the region that another region has not applied yet",
            labels=["region", "kind"],
        )
        lag = GaugeMetricFamily(
            "mrbatch_replication_lag_seconds",
            "Age of the region's oldest change not yet replicated (0 when none)",
            labels=["region"],
        )
        for region, data in regions.items():
            for name in (RegionState.ACTIVE, RegionState.STANDBY, RegionState.FENCED):
                state.add_metric([region, str(name)], 1.0 if data["state"] == name else 0.0)
            up.add_metric([region], 1.0 if data["alive"] else 0.0)
            if data["heartbeat_age"] is not None:
                age.add_metric([region], data["heartbeat_age"])
            if data["runs_in_flight"] is not None:
                flight.add_metric([region], data["runs_in_flight"])
            for kind in ("objects", "records"):
                if data.get(f"backlog_{kind}") is not None:
                    backlog.add_metric([region, kind], data[f"backlog_{kind}"])
            if data["lag_seconds"] is not None:
                lag.add_metric([region], data["lag_seconds"])
        yield from (state, up, age, flight, backlog, lag)

    @staticmethod
    def _routing_gauges(sample: Mapping[str, Any]) -> Iterable[Metric]:
        if sample.get("epoch") is not None:
            yield GaugeMetricFamily(
                "mrbatch_routing_epoch", "The routing control's epoch", value=sample["epoch"]
            )
        app = GaugeMetricFamily(
            "mrbatch_app_state",
            "The application's state (1 for the current one)",
            labels=["state"],
        )
        for name in APP_STATES:
            app.add_metric([name], 1.0 if sample.get("app_state") == name else 0.0)
        yield app

    def _durable(self) -> Iterable[Metric]:
        runs = GaugeMetricFamily(
            "mrbatch_runs", "File runs by status, read from the state tables", labels=["status"]
        )
        try:
            counts: dict[str, int] = {}
            for run in views.all_runs(self.ws):
                counts[str(run.status)] = counts.get(str(run.status), 0) + 1
        except MrbatchError as exc:
            log.warning("metrics: runs cannot be counted: %s", exc)
        else:
            for status_name, count in sorted(counts.items()):
                runs.add_metric([status_name], count)
            yield runs
        plans = GaugeMetricFamily(
            "mrbatch_plan_executions",
            "Recovery plan executions by plan and outcome",
            labels=["plan", "outcome"],
        )
        try:
            tally: dict[tuple[str, str], int] = {}
            for execution in history(self.ws):
                key = (execution.plan, execution.outcome)
                tally[key] = tally.get(key, 0) + 1
        except MrbatchError as exc:
            log.warning("metrics: plan executions cannot be read: %s", exc)
        else:
            for (plan, outcome), count in sorted(tally.items()):
                plans.add_metric([plan, outcome], count)
            yield plans
