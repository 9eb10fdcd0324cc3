"""Metrics of recovery readiness, read from the control plane on every scrape: the outcome of
the last continuous plan evaluation (``mrbatch watch`` stores it as ``evaluation/latest``),
standby parity, the drills by state and the plan executions waiting for a person."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import backends
from ..config.workspace import Workspace
from ..errors import MrbatchError
from .evaluation import EVALUATION_DOC, evaluation_summary

__all__ = ["EVALUATION_DOC", "RecoveryCollector", "evaluation_summary"]

log = logging.getLogger("mrbatch.metrics")


class RecoveryCollector(Collector):
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def collect(self) -> Iterable[Metric]:
        try:
            control = backends.open_control_plane(self.ws)
            evaluation = control.documents(EVALUATION_DOC).get(EVALUATION_DOC)
            drills = control.documents("drill/")
            plans = control.documents("plan/")
        except MrbatchError as exc:
            log.warning("metrics: recovery documents cannot be read: %s", exc)
            return
        summary = evaluation_summary(evaluation, time.time())
        if summary is not None and evaluation is not None:
            yield GaugeMetricFamily(
                "mrbatch_plan_evaluation_ok",
                "1 when the last plan evaluation (mrbatch watch) found every plan could run",
                value=1.0 if summary["ok"] else 0.0,
            )
            yield GaugeMetricFamily(
                "mrbatch_plan_evaluation_age_seconds",
                "Seconds since the last plan evaluation",
                value=float(summary["age_seconds"]),
            )
            checks = GaugeMetricFamily(
                "mrbatch_plan_evaluation_checks",
                "Checks of the last plan evaluation by status",
                labels=["status"],
            )
            for status in ("ok", "warning", "failed"):
                count = sum(c.get("status") == status for c in evaluation.get("checks") or [])
                checks.add_metric([status], float(count))
            yield checks
            yield GaugeMetricFamily(
                "mrbatch_standby_parity_ok",
                "1 when every region runs the same schema, reference data and configuration",
                value=1.0 if summary["parity_ok"] else 0.0,
            )
        by_state = GaugeMetricFamily(
            "mrbatch_drills", "Drills by state (running, passed, failed)", labels=["state"]
        )
        tally: dict[str, int] = {}
        for drill in drills.values():
            state = str(drill.get("state"))
            tally[state] = tally.get(state, 0) + 1
        for state, count in sorted(tally.items()):
            by_state.add_metric([state], float(count))
        yield by_state
        yield GaugeMetricFamily(
            "mrbatch_plans_waiting",
            "Plan executions waiting for an approval or for replication now",
            value=float(
                sum(1 for p in plans.values() if p.get("outcome") == "running" and p.get("waiting"))
            ),
        )
