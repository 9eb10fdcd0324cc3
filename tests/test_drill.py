"""Drills and recovery reports, end to end on a live deployment: `mrbatch drill` loads the
deployment, fails over under the load, fails back, verifies; each switch and the drill write a
report into the hash chain; `plan history` lists the drill's plans apart; a freeze or a missed
budget fails the drill, which still fails back."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mrbatch import backends
from mrbatch.config.workspace import Workspace
from mrbatch.recovery.drill import blocked
from mrbatch.recovery.runbook import Runbook
from mrbatch.runtime import supervisor
from mrbatch.runtime.replication import region_backlog
from tests.conftest import Deployment, make_workspace
from tests.helpers import mrbatch, put


@pytest.fixture
def dep(tmp_path: Path):  # type: ignore[no-untyped-def]
    ws = make_workspace(
        tmp_path / "ws",
        chunk_rows=200,
        failover={"min_switch_interval": "1s", "max_wait": "10s"},
        reports={"settle": "20s"},
    )
    with Deployment(ws) as deployment:
        yield deployment


def _reports(ws: Workspace) -> list[dict]:  # type: ignore[type-arg]
    listed = mrbatch(ws, "report", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)  # type: ignore[no-any-return]


def test_a_drill_fails_over_under_load_fails_back_and_reports(dep: Deployment) -> None:
    ws = dep.ws
    home, away = ws.regions
    out = ws.root / "drill.json"
    result = mrbatch(ws, "drill", "--files", "4", "--rows", "300", "--report", str(out), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    drill = json.loads(result.stdout)
    assert drill["kind"] == "drill" and drill["passed"] is True and drill["failures"] == []
    assert [p["plan"] for p in drill["plans"]] == ["failover", "failback"]
    assert all(p["outcome"] == "succeeded" and p["met"] for p in drill["plans"])
    assert drill["load"]["accepted"] == 4 and drill["load"]["completed"] == 4
    assert drill["verify"]["ok"] and drill["parity"]["ok"]
    assert json.loads(out.read_text())["hash"] == drill["hash"]
    routing = backends.open_control_plane(ws).routing()
    assert routing.active_region == home and routing.epoch == 3  # it failed back
    assert routing.regions == {home: "ACTIVE", away: "STANDBY"}

    # Three reports, chained: the failover's, the failback's, then the drill's naming both.
    reports = _reports(ws)
    assert [r["kind"] for r in reports] == ["failover", "failback", "drill"]
    assert [p["report_hash"] for p in drill["plans"]] == [r["hash"] for r in reports[:2]]
    shown = json.loads(mrbatch(ws, "report", "show", "1", "--json").stdout)
    events = {t["event"]: t for t in shown["timeline"]}
    assert shown["drill"] == drill["drill"] and shown["trigger"] == "drill"
    assert shown["mode"] == "graceful"
    for event in ("command", "decided", "fenced", "activated", "ended"):
        assert events[event]["at"] is not None, event
    assert events["fenced"]["at"] <= events["activated"]["at"]
    assert shown["rto"]["from_command"] == shown["rto"]["from_detection"]  # planned: no failure
    assert shown["rto"]["met"]
    # the verdict as of the switch (the load goes on; the drill's final verify is the gate)
    assert shown["verify"]["counts"]["lost"] == 0 and shown["verify"]["counts"]["duplicated"] == 0
    assert shown["parity"]["differences"] == []
    assert shown["approvals"][0]["by"] == "--yes"
    for item in shown["in_flight"]:  # what was in flight at the fence, and what became of it
        assert item["status"] in ("COMPLETED", "FAILED") and item["terminal_at"], item
    files = sorted((ws.data_dir / "reports").glob("0000000*"))
    assert len(files) == 6  # JSON and Markdown of each
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    markdown = next(f for f in files if f.name.startswith("00000001") and f.suffix == ".md")
    assert "## Timeline" in markdown.read_text() and shown["hash"] in markdown.read_text()
    verified = mrbatch(ws, "report", "verify")
    assert verified.returncode == 0 and "chain intact: 3 report(s)" in verified.stdout

    # plan history keeps drills apart from real recoveries
    history = json.loads(mrbatch(ws, "plan", "history", "--json").stdout)
    assert [(e["kind"], e["drill"]) for e in history] == [("drill", drill["drill"])] * 2
    text = mrbatch(ws, "plan", "history").stdout
    assert text.index("Recovery executions (0)") < text.index("Drill executions (2)")
    only = json.loads(mrbatch(ws, "plan", "history", "--kind", "recovery", "--json").stdout)
    assert only == []

    # A freeze stops the next drill before it changes anything.
    assert mrbatch(ws, "drill", "freeze", "--reason", "release day").returncode == 0
    frozen = mrbatch(ws, "drill", "--files", "1")
    assert frozen.returncode == 1 and "frozen" in frozen.stderr and "release day" in frozen.stderr
    assert backends.open_control_plane(ws).routing().epoch == 3
    assert mrbatch(ws, "drill", "unfreeze").returncode == 0

    # A budget no switch can meet: the drill fails (exit 1) and still fails back.
    text = ws.config_path.read_text().replace('# rto_budget = "60s"', 'rto_budget = "1ms"')
    ws.config_path.write_text(text)
    missed = mrbatch(ws, "drill", "--files", "0", "--json")
    assert missed.returncode == 1, missed.stdout + missed.stderr
    failed = json.loads(missed.stdout)
    assert failed["passed"] is False
    assert any("over the budget" in reason for reason in failed["failures"]), failed["failures"]
    assert backends.open_control_plane(ws).routing().active_region == home
    assert mrbatch(ws, "report", "verify").returncode == 0  # six reports, still one chain


def test_the_chain_names_an_edit_and_a_gap(dep: Deployment) -> None:
    ws = dep.ws
    home, away = ws.regions
    for plan, target in (("failover", away), ("failback", home), ("failover", away)):
        execution = Runbook(ws, plan, target, yes=True, force=True).execute()
        assert execution.outcome == "succeeded", execution.reason
    assert mrbatch(ws, "report", "verify").returncode == 0
    reports = sorted((ws.data_dir / "reports").glob("*.json"))
    assert len(reports) == 3
    first = reports[0]
    body = json.loads(first.read_text())
    body["outcome"] = "failed"  # an edit after the fact
    first.write_text(json.dumps(body, indent=2))
    edited = mrbatch(ws, "report", "verify", "--json")
    assert edited.returncode == 1
    problems = json.loads(edited.stdout)["problems"]
    assert {(p["seq"], p["kind"]) for p in problems} == {(1, "edited")}, problems

    def remove(seq: int) -> None:  # from both places it is kept
        path = reports[seq - 1]
        path.unlink()
        path.with_suffix(".md").unlink()
        with sqlite3.connect(ws.control_path) as db:
            db.execute("DELETE FROM documents WHERE name = ?", (f"report/{seq:08d}",))

    remove(2)
    gap = json.loads(mrbatch(ws, "report", "verify", "--json").stdout)
    assert (2, "gap") in {(p["seq"], p["kind"]) for p in gap["problems"]}, gap
    remove(3)  # cut off the end: the plan that wrote it still names it
    cut = mrbatch(ws, "report", "verify")
    assert cut.returncode == 1
    text = " ".join(cut.stdout.split())
    assert "chain BROKEN" in text and "report 3 is missing (the report of plan/" in text


def test_a_drill_waits_for_the_backlog_and_the_runs_in_flight(tmp_path: Path) -> None:
    """`blocked()` against a real workspace, without a deployment: a process that stands for
    every region, replicator and gateway (its pid recorded as `mrbatch up` records it), the
    active region's heartbeat and the replication backlog of a real upload."""
    ws = make_workspace(tmp_path / "ws", drill={"max_backlog": 2, "max_runs_in_flight": 2})
    home, away = ws.regions
    assert "not fully up" in (blocked(ws, scheduled=False) or "")
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        for proc in supervisor.expected(ws):
            supervisor._write_pid_file(ws, proc, stand_in.pid, ["stand-in"])
        # Two changes to copy (the reference data init put in each region): at the bound.
        assert sum(region_backlog(ws, r).total for r in ws.regions) == 2
        assert blocked(ws, scheduled=False) is None
        control = backends.open_control_plane(ws)
        control.heartbeat(home, stand_in.pid, {"runs_in_flight": 2})
        control.heartbeat(away, stand_in.pid, {"runs_in_flight": 50})  # not the active one
        assert blocked(ws, scheduled=False) is None
        control.heartbeat(home, stand_in.pid, {"runs_in_flight": 3})
        assert blocked(ws, scheduled=True) == (
            f"3 runs in flight in {home}, above drill.max_runs_in_flight 2"
        )
        control.heartbeat(home, stand_in.pid, {"runs_in_flight": 0})
        put(ws, "input/waiting.csv", b"a\n1\n")  # its bytes and ledger entry: more to copy
        pending = sum(region_backlog(ws, r).total for r in ws.regions)
        assert pending > 2
        assert blocked(ws, scheduled=False) == (
            f"replication backlog {pending} above drill.max_backlog 2"
        )
    finally:
        stand_in.kill()
        stand_in.wait()
