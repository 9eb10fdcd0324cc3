"""Failover, failback and reconciliation with real region processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mrbatch import backends
from mrbatch.config.initialize import sample_bytes
from mrbatch.config.workspace import Workspace
from mrbatch.faults import FaultPoints
from mrbatch.model.keys import is_chunk_intermediate
from mrbatch.model.records import CHUNK, ChunkRun, ChunkStatus, RunStatus
from mrbatch.observe import views
from mrbatch.ports import ObjectStore
from mrbatch.runtime import supervisor
from tests.conftest import Deployment, make_workspace
from tests.expected import expected_output
from tests.helpers import eventually, finished, loop_passes, mails, mrbatch, put, run_of

SAMPLE = sample_bytes("orders.csv")


def _deploy(tmp_path: Path, **overrides: object) -> Deployment:
    overrides.setdefault("chunk_rows", 400)  # 25 chunks per sample file
    overrides.setdefault("failover", {"min_switch_interval": "1s", "max_wait": "10s"})
    dep = Deployment(make_workspace(tmp_path / "ws", **overrides))
    dep.up()
    return dep


@pytest.fixture
def dep(tmp_path: Path):  # type: ignore[no-untyped-def]
    with _deploy(tmp_path) as deployment:
        yield deployment


def _done_chunks(ws: Workspace, region: str) -> int:
    table = backends.open_state_table(ws, region)
    return sum(ChunkRun.from_record(r).status is ChunkStatus.DONE for r in table.scan(CHUNK))


def _all_completed_once(ws: Workspace, bodies: dict[str, bytes]) -> None:
    runs = views.all_runs(ws)
    for key in bodies:
        mine = [r for r in runs if r.input_key == key]
        assert len(mine) == 1, f"{key}: {len(mine)} runs"
        assert mine[0].status is RunStatus.COMPLETED, mine[0].reason
    active = backends.open_control_plane(ws).routing().active_region
    store = backends.open_object_store(ws, active)
    for key, body in bodies.items():
        assert store.get(key.replace("input/", "output/", 1)) == expected_output(body), key
    subjects = [m["Message-ID"] for m in mails(ws)]
    assert len(subjects) == len(set(subjects)) == len(bodies)


def test_kill_the_active_region_mid_run_and_fail_over(dep: Deployment) -> None:
    ws = dep.ws
    old, new = ws.regions
    bodies = {f"input/mid-{i}.csv": SAMPLE for i in range(4)}
    infos = [put(ws, key, body) for key, body in bodies.items()]
    eventually(lambda: _done_chunks(ws, old) >= 10, 60, "some chunks to finish")
    dep.kill_region(old)
    done_before = set()
    for info in infos:
        run = run_of(ws, info.key, info.sha256)
        if run is not None and run.status.terminal:
            done_before.add(info.key)
    assert len(done_before) < len(infos), "the files finished before the kill: make them bigger"
    result = mrbatch(ws, "failover", "--yes", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    execution = json.loads(result.stdout)
    assert execution["outcome"] == "succeeded"
    assert execution["epoch_before"] == 1 and execution["epoch_after"] == 2
    assert execution["rto_seconds"] > 0  # the figure itself is measured in benchmarks/
    assert [s["name"] for s in execution["steps"]] == [
        "readiness",
        "approval",
        "rpo-gate",
        "fence",
        "wait-replication",
        "activate",
        "reconcile",
    ]
    for info in infos:
        run = finished(ws, info, timeout=80)
        if info.key not in done_before:  # in flight at the kill: finished by the new region
            assert run.region == new and run.epoch == 2, (run.region, run.epoch)
    _all_completed_once(ws, bodies)
    routing = backends.open_control_plane(ws).routing()
    assert routing.regions == {old: "FENCED", new: "ACTIVE"}
    redriven = [r for r in views.all_runs(ws) if r.redriven]
    assert redriven, "no run was taken over"


def test_inputs_still_in_the_backlog_are_reported_then_redriven(dep: Deployment) -> None:
    ws = dep.ws
    old, new = ws.regions
    faults = FaultPoints(ws.faults_path)
    faults.arm("chunk-error", region=old)  # the old region cannot finish the file before it dies
    stall = faults.arm("replication:objects", region=new, note="cross-region copy lagging")
    info = put(ws, "input/late.csv", SAMPLE)
    # the claim replicates (state), the input does not (objects)
    eventually(lambda: list(backends.open_state_table(ws, new).scan("run")), 30, "the run record")
    dep.kill_region(old)
    result = mrbatch(ws, "failover", "--yes", "--max-wait", "1s", "--json")
    assert result.returncode == 1  # succeeded with an at-risk input is not reported as success
    execution = json.loads(result.stdout)
    waited = next(s for s in execution["steps"] if s["name"] == "wait-replication")
    assert waited["outcome"] == "warning" and waited["evidence"]["objects"] > 0
    report = next(s for s in execution["steps"] if s["name"] == "reconcile")["evidence"]
    assert [m["input_key"] for m in report["missing"]] == ["input/late.csv"]
    assert report["at_risk"][0]["region"] == old and report["at_risk"][0]["what"] == "input"
    faults.disarm(stall.id)  # replication delivers the input: the new region picks it up
    run = finished(ws, info, timeout=60)
    assert run.status is RunStatus.COMPLETED and run.region == new
    _all_completed_once(ws, {"input/late.csv": SAMPLE})


def test_the_old_region_comes_back_quiet_and_converges(dep: Deployment) -> None:
    ws = dep.ws
    old, new = ws.regions
    first = put(ws, "input/before.csv", SAMPLE)
    finished(ws, first)
    dep.kill_region(old)
    assert mrbatch(ws, "failover", "--yes").returncode == 0
    second = put(ws, "input/after.csv", SAMPLE)
    assert finished(ws, second).region == new
    old_store = backends.open_object_store(ws, old)
    mine_before = {i.key for i in old_store.list() if i.origin == old}
    supervisor.start(ws, only=[supervisor.Proc("region", old)])
    eventually(
        lambda: backends.open_control_plane(ws).heartbeats()[old].info.get("state") == "fenced",
        30,
        "the old region to report itself fenced",
    )
    third = put(ws, "input/later.csv", SAMPLE)
    assert finished(ws, third).region == new
    loop_passes(ws, old)  # the fenced region runs its loop, and writes nothing
    assert {i.key for i in old_store.list() if i.origin == old} == mine_before  # published nothing

    def replicated(store: ObjectStore) -> dict[str, str]:  # chunk outputs stay where they ran
        return {i.key: i.sha256 for i in store.list() if not is_chunk_intermediate(i.key)}

    def converged() -> bool:
        a, b = (backends.open_object_store(ws, r) for r in (old, new))
        ta, tb = (backends.open_state_table(ws, r) for r in (old, new))
        objects_same = replicated(a) == replicated(b)
        records = [
            {
                r.pk: (r.version, r.epoch, json.dumps(r.body, sort_keys=True))
                for kind in ("run", "chunk")
                for r in t.scan(kind)
            }
            for t in (ta, tb)
        ]
        return objects_same and records[0] == records[1]

    eventually(converged, 30, "buckets and state tables to converge")
    _all_completed_once(
        ws, {k: SAMPLE for k in ("input/before.csv", "input/after.csv", "input/later.csv")}
    )


def test_failback_round_trip_under_a_trickle_of_uploads(dep: Deployment) -> None:
    ws = dep.ws
    home, away = ws.regions
    small = b"\n".join(SAMPLE.split(b"\n")[:801]) + b"\n"  # 800 rows, 2 chunks
    uploaded: dict[str, bytes] = {}
    stop = threading.Event()

    def trickle() -> None:
        n = 0
        while not stop.is_set():
            key = f"input/trickle-{n:03d}.csv"
            put(ws, key, small)
            uploaded[key] = small
            n += 1
            stop.wait(0.15)

    uploader = threading.Thread(target=trickle)
    uploader.start()
    try:
        time.sleep(1.0)
        over = mrbatch(ws, "failover", "--yes", "--json")
        assert over.returncode == 0, over.stdout + over.stderr
        time.sleep(1.5)
        back = mrbatch(ws, "failback", "--yes", "--json")
        assert back.returncode == 0, back.stdout + back.stderr
        execution = json.loads(back.stdout)
        assert [s["name"] for s in execution["steps"]][:2] == ["readiness", "catch-up"]
        time.sleep(1.0)
    finally:
        stop.set()
        uploader.join(timeout=60)
    assert not uploader.is_alive(), "the uploader did not stop"
    routing = backends.open_control_plane(ws).routing()
    assert routing.active_region == home and routing.epoch == 3
    assert routing.regions == {home: "ACTIVE", away: "STANDBY"}
    assert len(uploaded) >= 15
    store = backends.open_object_store(ws, home)
    for key in uploaded:
        info = store.head(key)
        assert info is not None
        finished(ws, info, timeout=90)
    _all_completed_once(ws, uploaded)


def test_two_concurrent_failovers_one_wins(dep: Deployment) -> None:
    ws = dep.ws
    # However slowly the second command starts on a loaded machine, it may not switch back:
    # the anti-flap rule holds for an hour.
    text = ws.config_path.read_text().replace(
        'min_switch_interval = "1s"', 'min_switch_interval = "1h"'
    )
    ws.config_path.write_text(text)
    command = [sys.executable, "-m", "mrbatch.cli.main", "failover", "--yes"]
    procs = [
        subprocess.Popen(
            command,
            cwd=ws.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outputs
    loser = next(out for p, out in zip(procs, outputs, strict=True) if p.returncode == 1)
    text = " ".join((loser[0] + loser[1]).split())
    assert any(
        why in text
        for why in ("another switch ran first", "min-switch-interval", "already the active")
    ), text
    assert backends.open_control_plane(ws).routing().epoch == 2


def test_safety_rules_refuse_and_change_nothing(dep: Deployment) -> None:
    ws = dep.ws
    old, new = ws.regions
    same = mrbatch(ws, "failover", "--to", old, "--yes")
    assert same.returncode == 1 and "already the active region" in " ".join(same.stdout.split())
    text = ws.config_path.read_text().replace(
        'min_switch_interval = "1s"', 'min_switch_interval = "1h"'
    )
    ws.config_path.write_text(text)
    assert mrbatch(ws, "failover", "--yes").returncode == 0
    again = mrbatch(ws, "failback", "--yes")
    assert again.returncode == 1
    assert "min-switch-interval" in " ".join(again.stdout.split())
    # Refused before anyone is asked to approve, naming the seconds left.
    refused = json.loads(mrbatch(ws, "failback", "--json").stdout)
    assert [s["name"] for s in refused["steps"]] == ["readiness"], refused["steps"]
    assert refused["outcome"] == "aborted" and "try again in" in refused["reason"]
    assert re.search(r"try again in \d+s \(at \d\d:\d\d:\d\d\)", refused["reason"])
    routing = backends.open_control_plane(ws).routing()
    assert routing.epoch == 2 and routing.active_region == new
    forced = mrbatch(ws, "failback", "--yes", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert backends.open_control_plane(ws).routing().active_region == old


def test_approval_is_required_without_yes(dep: Deployment) -> None:
    result = mrbatch(dep.ws, "failover")  # stdin is not a terminal: nobody can approve
    assert result.returncode == 1
    assert "not approved" in " ".join(result.stdout.split())
    assert backends.open_control_plane(dep.ws).routing().epoch == 1


def test_redrive_reruns_a_failed_run_from_its_last_good_step(dep: Deployment) -> None:
    ws = dep.ws
    active = ws.regions[0]
    faults = FaultPoints(ws.faults_path)
    with faults.armed("chunk-error", region=active, note="downstream dependency down"):
        info = put(ws, "input/redo.csv", SAMPLE)
        failed = finished(ws, info)
    assert failed.status is RunStatus.FAILED
    done_before = _done_chunks(ws, active)
    result = mrbatch(ws, "redrive", "input/redo.csv", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["resumes_at"] == "PROCESSING"
    assert report["chunks_kept"] == done_before and report["chunks_to_run"] == 25 - done_before
    run = eventually(
        lambda: (r := run_of(ws, info.key, info.sha256)) and r.status is RunStatus.COMPLETED and r,
        60,
        "the redriven run",
    )
    assert run.redriven == 1 and run.rows_out == 10_000
    assert backends.open_object_store(ws, active).get("output/redo.csv") == expected_output()
    again = mrbatch(ws, "redrive", "input/redo.csv")
    assert again.returncode == 2 and "COMPLETED" in again.stderr


def test_redrive_after_fixing_the_reference_data(dep: Deployment) -> None:
    ws = dep.ws
    header, *rows = SAMPLE.decode().split("\n")
    financial = sample_bytes("financial.csv").decode().split("\n")
    partial = "\n".join(financial[:5001]) + "\n"  # half the reference data is missing
    put(ws, "reference/financial.csv", partial.encode())
    info = put(ws, "input/ref.csv", SAMPLE)
    failed = finished(ws, info)
    assert failed.status is RunStatus.FAILED and "rejected" in (failed.reason or "")
    errors = mrbatch(ws, "errors", "input/ref.csv", "--json")
    assert json.loads(errors.stdout)["rows_rejected"] == failed.rows_rejected > 0
    put(ws, "reference/financial.csv", sample_bytes("financial.csv"))
    report = json.loads(mrbatch(ws, "redrive", "input/ref.csv", "--json").stdout)
    assert report["reference_changed"] and report["chunks_to_run"] == 25
    run = eventually(
        lambda: (r := run_of(ws, info.key, info.sha256)) and r.status is RunStatus.COMPLETED and r,
        60,
        "the redriven run",
    )
    assert run.rows_rejected == 0
    del header, rows


def test_plans_as_code_custom_steps(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    (tmp_path / "hooks_for_test.py").write_text(
        "def before(ctx):\n    return {'target': ctx.target, 'epoch': ctx.epoch}\n"
    )
    ws = make_workspace(
        tmp_path / "ws", chunk_rows=400, failover={"min_switch_interval": "1s", "max_wait": "5s"}
    )
    text = ws.config_path.read_text()
    text = text[: text.index("[plans.failover]")] + '[plans]\nfile = "plans.toml"\n'
    ws.config_path.write_text(text)
    (ws.root / "plans.toml").write_text(
        "[failover]\n"
        "steps = [\n"
        '  "readiness",\n'
        '  { name = "prepare", parallel = [\n'
        f'      {{ name = "page", run = "echo $MRBATCH_TARGET > {marker}", timeout = "5s" }},\n'
        '      { name = "hook", call = "hooks_for_test:before", timeout = "5s" } ] },\n'
        '  "approval", "fence", "wait-replication", "activate", "reconcile",\n'
        "]\n"
        "[failback]\n"
        'steps = ["readiness", { name = "broken", run = "no-such-command-xyz" }, "fence",'
        ' "activate"]\n'
    )
    # The hooks module is found beside the workspace; whatever else is on the path stays.
    paths = [str(tmp_path), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    dep = Deployment(Workspace.load(ws.config_path))
    dep.up()
    try:
        ws = dep.ws

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return mrbatch(ws, *args, env=env)

        shown = " ".join(cli("plan", "show").stdout.split())
        assert "page: run `echo" in shown and "hook: call hooks_for_test:before" in shown
        evaluated = cli("plan", "evaluate", "--json")
        assert evaluated.returncode == 1  # the failback plan names a command that does not exist
        checks = json.loads(evaluated.stdout)
        broken = next(c for c in checks if c["check"] == "step broken")
        assert broken["status"] == "failed" and "not found" in broken["detail"]
        assert next(c for c in checks if c["check"] == "step hook")["status"] == "ok"
        result = cli("failover", "--yes", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        execution = json.loads(result.stdout)
        group = next(s for s in execution["steps"] if s["name"] == "prepare")
        assert [c["name"] for c in group["children"]] == ["page", "hook"]
        assert group["children"][1]["evidence"] == {"target": ws.regions[1], "epoch": 1}
        assert marker.read_text().strip() == ws.regions[1]
        history = json.loads(cli("plan", "history", "--json").stdout)
        assert history[-1]["id"] == execution["id"] and history[-1]["rto_seconds"] > 0
        time.sleep(1.1)  # min_switch_interval
        back = cli("failback", "--yes", "--json")
        assert back.returncode == 1
        aborted = json.loads(back.stdout)
        assert aborted["outcome"] == "aborted" and "broken" in aborted["reason"]
        assert backends.open_control_plane(ws).routing().epoch == 2  # nothing changed
    finally:
        dep.down()


def test_watch_recommends_and_fails_over_automatically(dep: Deployment) -> None:
    ws = dep.ws
    old, new = ws.regions
    text = ws.config_path.read_text().replace(
        'heartbeat_timeout = "5s"', 'heartbeat_timeout = "1s"'
    )
    text = text.replace('interval = "1s"\nunhealthy_checks', 'interval = "200ms"\nunhealthy_checks')
    ws.config_path.write_text(text)
    quiet = mrbatch(ws, "watch", "--iterations", "2")
    assert quiet.returncode == 0 and "healthy" in quiet.stdout
    dep.kill_region(old)

    def silent_for() -> float:
        return time.time() - backends.open_control_plane(ws).heartbeats()[old].at

    eventually(lambda: silent_for() > 1.2, 30, "the killed region's heartbeat to go stale")
    advice = mrbatch(ws, "watch", "--iterations", "2")
    flat = " ".join(advice.stdout.split())
    assert f"fail over from {old} to {new}" in flat and "no heartbeat" in flat
    assert backends.open_control_plane(ws).routing().epoch == 1  # only a recommendation
    auto = mrbatch(ws, "watch", "--auto-failover", "--iterations", "3")
    assert auto.returncode == 0, auto.stdout + auto.stderr
    routing = backends.open_control_plane(ws).routing()
    assert routing.active_region == new and routing.epoch == 2
    decisions = [json.loads(line) for line in (ws.log_dir / "watch.jsonl").read_text().splitlines()]
    acted = [d for d in decisions if d["action"].startswith("failover to")]
    assert len(acted) == 1 and acted[0]["evidence"]["heartbeat_age"] > 1


def _with_plans(tmp_path: Path, plans_toml: str) -> Deployment:
    ws = make_workspace(
        tmp_path / "ws", chunk_rows=400, failover={"min_switch_interval": "1s", "max_wait": "5s"}
    )
    text = ws.config_path.read_text()
    ws.config_path.write_text(
        text[: text.index("[plans.failover]")] + '[plans]\nfile = "plans.toml"\n'
    )
    (ws.root / "plans.toml").write_text(plans_toml)
    dep = Deployment(Workspace.load(ws.config_path))
    dep.up()
    return dep


def test_a_step_that_overruns_its_timeout_aborts_before_the_fence(tmp_path: Path) -> None:
    started = tmp_path / "started.pid"
    # The command starts a child of its own and waits for it: the timeout must end both.
    slow = f"sleep 30 & echo $! > {started}; wait"
    dep = _with_plans(
        tmp_path,
        f'[failover]\nsteps = ["readiness", {{ name = "slow", run = "{slow}",'
        ' timeout = "300ms" }, "fence", "activate"]\n'
        '[failback]\nsteps = ["readiness", "fence", "activate"]\n',
    )
    try:
        result = mrbatch(dep.ws, "failover", "--yes", "--json")
        assert result.returncode == 1
        execution = json.loads(result.stdout)
        slow = next(s for s in execution["steps"] if s["name"] == "slow")
        assert slow["outcome"] == "failed"
        assert "did not finish within 300ms" in slow["message"]
        assert slow["ended"] - slow["started"] < 3
        assert execution["outcome"] == "aborted"
        assert backends.open_control_plane(dep.ws).routing().epoch == 1
        child = int(started.read_text())
        eventually(lambda: not Path(f"/proc/{child}").exists(), 10, "the step's child to end")
    finally:
        dep.down()


def test_reconcile_command_redrives_what_a_plan_left(tmp_path: Path) -> None:
    dep = _with_plans(
        tmp_path,
        '[failover]\nsteps = ["readiness", "fence", "wait-replication", "activate"]\n'
        '[failback]\nsteps = ["readiness", "fence", "activate"]\n',
    )
    try:
        ws = dep.ws
        old, new = ws.regions
        bodies = {f"input/left-{i}.csv": SAMPLE for i in range(2)}
        infos = [put(ws, key, body) for key, body in bodies.items()]
        eventually(lambda: _done_chunks(ws, old) >= 5, 60, "some chunks to finish")
        dep.kill_region(old)
        assert mrbatch(ws, "failover", "--yes").returncode == 0
        result = mrbatch(ws, "reconcile", "--json", "--max-wait", "2s")
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["active_region"] == new and report["at_risk"] == []
        named = {item["input_key"] for item in report["redriven"] + report["in_progress"]}
        for info in infos:
            run = finished(ws, info)
            assert run.status is RunStatus.COMPLETED
            if run.epoch == 2:  # it was unfinished at the failover: reconcile must name it
                assert info.key in named, report
        _all_completed_once(ws, bodies)
    finally:
        dep.down()
