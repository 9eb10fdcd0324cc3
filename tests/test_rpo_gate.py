"""The RPO gate and the two modes, on a live deployment: the gate lists exactly the accepted
inputs the target lacks (also when the source cannot be read), refuses a switch above the loss
budget with nothing changed, lets it through once the loss of each item is approved (durably,
per key, while it waits), and each item is closed when its file arrives. Graceful waits for
replication without a bound until the plan is switched to ungraceful, and the switch is logged."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mrbatch import backends
from mrbatch.config.initialize import sample_bytes
from mrbatch.config.workspace import Workspace
from mrbatch.faults import FaultPoints
from mrbatch.model.records import ACCEPTED, RunStatus
from mrbatch.recovery.plan import Execution, PlanContext, StepFailed, history
from mrbatch.recovery.rpo import budget_problem, rpo_gate, snapshot
from tests.conftest import Deployment, make_workspace
from tests.helpers import eventually, finished, mrbatch, put

SMALL = b"\n".join(sample_bytes("orders.csv").split(b"\n")[:301]) + b"\n"


def _running(ws: Workspace) -> Execution | None:
    return next((e for e in history(ws) if e.outcome == "running"), None)


def _start(ws: Workspace, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mrbatch.cli.main", *args],
        cwd=ws.root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_gate_lists_refuses_approves_per_key_and_closes(tmp_path: Path) -> None:
    ws = make_workspace(
        tmp_path / "ws",
        failover={"min_switch_interval": "1s", "max_wait": "1s"},
        rpo={"max_files": 0},
        reports={"settle": "2s"},
    )
    with Deployment(ws):
        old, new = ws.regions
        faults = FaultPoints(ws.faults_path)
        faults.arm("chunk-error", region=old)  # the old region cannot finish it before the switch
        stall = faults.arm("replication:objects", region=new, note="bytes lag behind")
        info = put(ws, "input/late.csv", SMALL)
        # FAILED in the old region before any switch (its chunk attempts take a few seconds):
        # a run still in flight at the fence would be taken over and completed by the new one.
        failed = finished(ws, info, timeout=60)
        assert failed.status is RunStatus.FAILED and failed.region == old, failed
        eventually(
            lambda: list(backends.open_state_table(ws, new).scan(ACCEPTED)),
            30,
            "the ledger entry to reach the standby",
        )
        # The list, with the source readable and then with the source's state down.
        seen = snapshot(ws, old, new)
        assert [i["key"] for i in seen["items"]] == ["input/late.csv"]
        assert seen["items"][0]["known_to_target"] and seen["source_readable"]
        down = faults.arm("state", region=old)
        blind = snapshot(ws, old, new)
        assert [i["key"] for i in blind["items"]] == ["input/late.csv"]
        assert blind["source_readable"] is False and old in blind["source_error"]
        faults.disarm(down.id)

        # Above the budget (0 files): refused before the fence, nothing changed.
        refused = mrbatch(ws, "failover", "--yes", "--json")
        assert refused.returncode == 1
        execution = json.loads(refused.stdout)
        assert execution["outcome"] == "aborted" and "rpo-gate" in execution["reason"]
        assert "input/late.csv" in execution["reason"]
        assert backends.open_control_plane(ws).routing().epoch == 1

        # The gate waits for per-key approvals; one given over the CLI lets the switch through.
        text = ws.config_path.read_text().replace('timeout = "0s"', 'timeout = "60s"')
        ws.config_path.write_text(text)
        proc = _start(ws, "failover", "--yes", "--json")
        try:
            waiting = (
                eventually(
                    lambda: (
                        (e := _running(ws))
                        and e.waiting
                        and e.waiting.get("step") == "rpo-gate"
                        and e
                    ),
                    60,
                    "the gate to wait for approvals",
                )
                if proc.poll() is None
                else pytest.fail(str(proc.communicate()))
            )
            assert waiting.waiting["keys"] == ["input/late.csv"]  # type: ignore[index]
            approve = mrbatch(ws, "plan", "approve", waiting.id, "--key", "late.csv")
            assert approve.returncode == 0, approve.stderr
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        done = json.loads(out)
        assert backends.open_control_plane(ws).routing().epoch == 2, err
        gate = next(s for s in done["steps"] if s["name"] == "rpo-gate")
        assert gate["outcome"] == "warning" and "approved" in gate["message"]
        wait = next(s for s in done["steps"] if s["name"] == "wait-replication")
        assert [i["key"] for i in wait["evidence"]["left_behind"]] == ["input/late.csv"]
        item = done["rpo"]["items"][0]
        assert item["key"] == "input/late.csv" and item["state"] == "approved"
        assert item["approved"]["via"] == "cli"

        # The file arrives: the watcher closes the item (the run FAILED in the old region before
        # the switch, so nothing claims it again: a redrive can, now that the bytes are here).
        arrival = time.time()
        faults.disarm(stall.id)
        new_store = backends.open_object_store(ws, new)
        eventually(lambda: new_store.head(item["object_key"]), 30, "the bytes to arrive")
        watch = mrbatch(ws, "watch", "--iterations", "1")
        assert watch.returncode == 0, watch.stdout + watch.stderr
        after = next(e for e in history(ws) if e.id == done["id"])
        closed = after.rpo["items"][0]
        assert closed["state"] == "closed" and closed["closed_in"] == new
        assert arrival <= closed["closed_at"] <= time.time()
        assert closed["run_status"] == "FAILED" and closed["previous_state"] == "approved"
        assert info.key == closed["key"]


def test_graceful_waits_until_switched_to_ungraceful(tmp_path: Path) -> None:
    ws = make_workspace(
        tmp_path / "ws",
        failover={"min_switch_interval": "1s", "max_wait": "1s"},
        reports={"settle": "2s"},
    )
    with Deployment(ws):
        _old, new = ws.regions
        faults = FaultPoints(ws.faults_path)
        stall = faults.arm("replication", region=new, note="nothing replicates")
        put(ws, "input/stuck.csv", SMALL)
        proc = _start(ws, "failover", "--yes", "--mode", "graceful", "--json")
        try:
            waiting = eventually(
                lambda: (
                    (e := _running(ws))
                    and e.waiting
                    and e.waiting.get("step") == "replication"
                    and e
                ),
                60,
                "the graceful wait",
            )
            time.sleep(1.5)  # longer than max_wait: graceful does not give up
            assert proc.poll() is None
            assert waiting.mode == "graceful"
            switched = mrbatch(ws, "plan", "ungraceful", "--json")
            assert switched.returncode == 0, switched.stderr
            out, _err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        faults.disarm(stall.id)
        done = json.loads(out)
        assert done["mode"] == "ungraceful" and done["outcome"] == "succeeded"
        change = done["mode_changes"][0]
        assert (change["from"], change["mode"], change["via"]) == ("graceful", "ungraceful", "cli")
        wait = next(s for s in done["steps"] if s["name"] == "wait-replication")
        assert wait["outcome"] == "warning" and wait["evidence"]["waited_seconds"] >= 1.5
        assert "left behind: input/stuck.csv" in wait["message"]
        report = json.loads(mrbatch(ws, "report", "show", "1", "--json").stdout)
        assert report["mode_changes"][0]["mode"] == "ungraceful"
        assert [i["key"] for i in report["at_risk"]] == ["input/stuck.csv"]


def _gate(ws: Workspace, *accept_loss: str) -> PlanContext:
    source, target = ws.regions
    execution = Execution(
        id=f"test-{len(accept_loss)}", plan="failover", target=target, source=source,
        started=time.time(), desired_rto=60.0,
    )  # fmt: skip
    return PlanContext(
        ws=ws, plan="failover", target=target, source=source, execution=execution, yes=True,
        force=True, max_wait=1.0, confirm=lambda _q: True, echo=lambda _m: None,
        accept_loss=accept_loss,
    )  # fmt: skip


def test_the_byte_budget_and_accept_loss_by_key_or_run_id(tmp_path: Path) -> None:
    """The gate itself against a workspace whose standby has received nothing (no replicator
    runs): 1,100 bytes at risk against a budget of 1KB; ``--accept-loss`` of either input
    (by its key without ``input/``, or by its run id) brings the rest within it."""
    ws = make_workspace(tmp_path / "ws", rpo={"max_bytes": "1KB"})  # approval.timeout 0s
    big = put(ws, "input/big.csv", b"a\n" + b"x" * 597 + b"\n")
    small = put(ws, "input/small.csv", b"a\n" + b"y" * 497 + b"\n")
    assert (big.size, small.size) == (600, 500)
    with pytest.raises(StepFailed) as refused:
        rpo_gate(_gate(ws))
    assert str(refused.value).startswith(
        "1100 bytes would be left behind (budget 1000): input/big.csv, input/small.csv;"
    ), refused.value

    outcome, message, evidence = rpo_gate(_gate(ws, "big.csv"))
    assert outcome == "warning", message
    assert message.startswith("2 input(s) (1100 bytes) not in") and "1 approved" in message
    states = {i["key"]: i["state"] for i in evidence["items"]}
    assert states == {"input/big.csv": "approved", "input/small.csv": "open"}
    granted = next(i for i in evidence["items"] if i["key"] == "input/big.csv")["approved"]
    assert granted["via"] == "--accept-loss"

    small_run = next(i for i in evidence["items"] if i["key"] == "input/small.csv")["run_id"]
    outcome, message, evidence = rpo_gate(_gate(ws, small_run))
    assert outcome == "warning" and "1 approved" in message, message
    assert {i["key"] for i in evidence["items"] if i["state"] == "approved"} == {"input/small.csv"}
    # Exactly at the budget is within it; a byte over is not.
    assert budget_problem(ws, [{"size": 1000}]) is None
    assert budget_problem(ws, [{"size": 600}, {"size": 401}]) == (
        "1001 bytes would be left behind (budget 1000)"
    )
