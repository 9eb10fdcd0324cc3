"""Chaos experiments and the load generator, run as a user would run them (the CLI) against
the real processes of a deployment. Every experiment must show evidence that its fault bit,
restore everything, and end with a clean verify: files in = completed, none lost or doubled."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mrbatch.config.workspace import Workspace
from mrbatch.faults import FaultPoints
from mrbatch.proof.loadgen import percentile
from mrbatch.proof.verify import verify
from mrbatch.runtime import supervisor
from tests.conftest import Deployment, make_workspace
from tests.helpers import eventually, mrbatch


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # Small chunks: a 6,000-row file is 24 chunk tasks, so workers hold many at once.
    ws = make_workspace(tmp_path_factory.mktemp("chaos") / "ws", chunk_rows=250)
    with Deployment(ws) as deployment:
        yield deployment


def chaos(ws: Workspace, experiment: str, *args: str) -> dict[str, Any]:
    # The experiment's own bound on recovery is well inside the command's and the test's: one
    # that does not recover reports it (with its events) instead of being cut short.
    result = mrbatch(ws, "chaos", experiment, "--json", "--recover-timeout", "45s", *args)
    report: dict[str, Any] = json.loads(result.stdout)
    why = {k: report.get(k) for k in ("stop_reason", "stop_conditions", "recovered")}
    why["verify_ok"] = report.get("verify", {}).get("ok")
    why["load_failed"] = report.get("load", {}).get("failed")
    assert result.returncode == 0, (
        json.dumps(why) + "\n" + json.dumps(report, indent=1)[-3000:] + result.stderr[-2000:]
    )
    return report


def test_load_reports_latency_and_rejections(dep: Deployment) -> None:
    ws = dep.ws
    result = mrbatch(
        ws, "load", "--files", "3", "--rows", "2000", "--invalid-fraction", "0.05",
        "--seed", "5", "--timeout", "60s", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert (data["accepted"], data["completed"], data["failed"], data["pending"]) == (3, 3, 0, 0)
    assert data["rejected_expected"] == data["rejected_got"] > 0
    lat = data["latency"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert data["files_per_second"] > 0 and data["rows_per_second"] > 0
    # Above the tolerated share of rejected rows a run FAILS: expected, and said so.
    over = mrbatch(ws, "load", "--files", "1", "--rows", "500", "--invalid-fraction", "0.4",
                   "--seed", "6", "--timeout", "60s", "--json")  # fmt: skip
    assert over.returncode == 0, over.stdout + over.stderr
    data = json.loads(over.stdout)
    assert data["failed"] == data["failed_expected"] == 1
    assert data["rejected_expected"] == data["rejected_got"]
    # Several uploads in flight at once: every file accepted once and followed to the end.
    many = mrbatch(ws, "load", "--files", "6", "--rows", "100", "--seed", "8",
                   "--concurrency", "3", "--timeout", "60s", "--json")  # fmt: skip
    assert many.returncode == 0, many.stdout + many.stderr
    data = json.loads(many.stdout)
    assert (data["accepted"], data["completed"], data["pending"]) == (6, 6, 0), data
    listed = json.loads(mrbatch(ws, "runs", "--json").stdout)
    keys = [r["input_key"] for r in listed if "-s8-" in r["input_key"]]
    assert len(keys) == len(set(keys)) == 6, keys  # each file once, none twice
    # Read as text through a pipe: the report alone, no progress bar and no markup names.
    plain = mrbatch(ws, "load", "--files", "1", "--rows", "100", "--seed", "7")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "1 of 1 file(s) accepted" in plain.stdout
    assert "━" not in plain.stdout + plain.stderr and "[progress" not in plain.stderr


def _fault_window(report: dict[str, Any]) -> None:
    """Every fault the experiment armed was disarmed by it, and nothing stays armed."""
    assert report["faults"], report
    for fault in report["faults"]:
        assert fault["disarmed_at"] is not None and fault["disarmed_at"] > fault["armed_at"]


def _clean(report: dict[str, Any], files: int) -> None:
    summary = report["summary"]
    assert report["ok"] and report["stop_reason"] == "deadline", report["events"]
    assert summary["files_in"] == summary["completed"] == files
    assert (summary["failed"], summary["lost"], summary["duplicates"]) == (0, 0, 0)
    assert summary["violations"] == 0 and report["verify"]["ok"]
    assert summary["time_to_recover"] is not None


@pytest.mark.parametrize("experiment", ["region-outage", "storage-outage", "state-outage"])
def test_outages_of_the_active_region(dep: Deployment, experiment: str) -> None:
    ws = dep.ws
    active = ws.regions[0]
    report = chaos(ws, experiment, "--duration", "2s", "--files", "3", "--rows", "2000")
    _clean(report, 3)
    _fault_window(report)
    points = {"region-outage": {"storage", "state", "control"}}.get(experiment)
    assert {f["point"] for f in report["faults"]} == (points or {experiment.split("-")[0]})
    assert all(f["region"] == active for f in report["faults"])
    assert not FaultPoints(ws.faults_path).all()
    observed = report["observed"]
    if experiment != "state-outage":
        # Uploads during the outage went to the other region through the access point.
        assert observed["uploads_by_region"].get(ws.regions[1], 0) >= 1, observed
    if experiment == "region-outage":
        assert observed["max_heartbeat_age"] > 1.0  # the region could not reach the control
    else:
        assert observed["stats_delta"][active]["loop_errors"] > 0  # its loop hit the fault


@pytest.mark.parametrize("experiment", ["replication-stall", "partition"])
def test_replication_faults(dep: Deployment, experiment: str) -> None:
    ws = dep.ws
    report = chaos(ws, experiment, "--duration", "1.5s", "--files", "3", "--rows", "2000")
    _clean(report, 3)
    _fault_window(report)
    backlogs = [v for k, v in report["observed"].items() if k.startswith("max_backlog_")]
    assert max(backlogs) > 0, report["observed"]  # changes piled up while the link was cut
    if experiment == "partition":
        assert report["peer"] == ws.regions[1] and report["faults"][0]["peer"] == ws.regions[1]


def test_kill_worker_while_it_holds_chunk_tasks(dep: Deployment) -> None:
    ws = dep.ws
    active = ws.regions[0]
    region_pid = supervisor.pid_of(ws, supervisor.Proc("region", active))
    # Enough chunk work that a worker holds some when the experiment looks (it fails with
    # "no-work" otherwise): 80 chunk tasks a file.
    report = chaos(ws, "kill-worker", "--duration", "2s", "--files", "2", "--rows", "20000")
    _clean(report, 2)
    kills = report["observed"]["kills"]
    assert kills and all(k["parent"] == region_pid for k in kills)
    assert all(k["chunks_in_flight"] > 0 for k in kills)
    # The region noticed the lost worker and replaced its pool (a worker killed between two
    # tasks fails no chunk, so the pool restart is the evidence that always holds), every file
    # still completed (above), and the region process itself survived.
    assert report["observed"]["stats_delta"][active]["pool_restarts"] >= 1
    assert supervisor.pid_of(ws, supervisor.Proc("region", active)) == region_pid


def test_ctrl_c_restores_everything(dep: Deployment) -> None:
    ws = dep.ws
    faults = FaultPoints(ws.faults_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mrbatch.cli.main", "chaos", "region-outage", "--duration",
         "120s", "--files", "2", "--rows", "1000", "--json"],
        cwd=ws.root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        eventually(lambda: len(faults.all()) == 3, 30, "the outage to be armed")
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 1, err
    assert faults.all() == []  # restored long before the faults' own 120 s expiry
    report = json.loads(out)
    assert report["stop_reason"] == "interrupted" and not report["ok"]
    _fault_window(report)
    healed = verify(ws, wait=60)
    assert healed.ok and healed.counts["pending"] == 0, healed.to_dict()["violations"]


def test_chaos_needs_a_running_deployment(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    result = mrbatch(ws, "chaos", "partition", "--duration", "1s")
    assert result.returncode == 2 and "not up" in result.stderr
    unknown = mrbatch(ws, "chaos", "meteor-strike")
    assert unknown.returncode == 2 and "unknown experiment" in unknown.stderr


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(20, 0, -1)]
    assert [percentile(values, q) for q in (0.5, 0.95, 0.99, 1.0)] == [10.0, 19.0, 20.0, 20.0]
    assert percentile([], 0.5) is None and percentile([3.0], 0.99) == 3.0
