"""The command line as a user runs it: a real `mrbatch` process per command."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from mrbatch import __version__, backends
from mrbatch.cli.app import console
from mrbatch.cli.chaos_cmds import print_chaos
from mrbatch.config.initialize import sample_bytes
from mrbatch.config.workspace import Workspace
from mrbatch.model.records import RunStatus
from mrbatch.proof.chaos import ChaosReport
from mrbatch.runtime import supervisor
from tests.conftest import Deployment
from tests.gateway_support import get_json
from tests.helpers import eventually, finished, mrbatch, put


def test_init_writes_a_workspace(tmp_path: Path) -> None:
    result = mrbatch(tmp_path, "init", "ws", "--regions", "eu-west-1,eu-central-1,us-east-2")
    assert result.returncode == 0, result.stderr
    root = tmp_path / "ws"
    config = tomllib.loads((root / "mrbatch.toml").read_text())
    assert config["regions"] == ["eu-west-1", "eu-central-1", "us-east-2"]
    assert (root / "pipeline" / "orders.schema.json").exists()
    ws = Workspace.load(root / "mrbatch.toml")
    routing = backends.open_control_plane(ws).routing()
    assert routing.active_region == "eu-west-1"
    assert routing.regions == {
        "eu-west-1": "ACTIVE",
        "eu-central-1": "STANDBY",
        "us-east-2": "STANDBY",
    }
    for region in ws.regions:
        store = backends.open_object_store(ws, region)
        assert store.head("reference/financial.csv") is not None
    again = mrbatch(tmp_path, "init", "ws")
    assert again.returncode == 2 and "exists already" in again.stderr
    assert "hint:" in again.stderr and "Traceback" not in again.stderr


def test_init_refuses_bad_region_names(tmp_path: Path) -> None:
    result = mrbatch(tmp_path, "init", "ws", "--regions", "us-east-1,Mars Base")
    assert result.returncode == 2
    assert "Mars Base" in result.stderr
    assert not (tmp_path / "ws" / "mrbatch.toml").exists()


def test_commands_outside_a_workspace_say_so(tmp_path: Path) -> None:
    result = mrbatch(tmp_path, "status")
    assert result.returncode == 2
    assert "no mrbatch.toml" in result.stderr and "mrbatch init" in result.stderr


def test_runs_rejects_unknown_status(tmp_path: Path) -> None:
    mrbatch(tmp_path, "init", "ws")
    result = mrbatch(tmp_path / "ws", "runs", "--status", "SLEEPING")
    assert result.returncode == 2 and "SLEEPING" in result.stderr


@pytest.mark.timeout(200)  # the demo takes 15-60 s; the command is bounded at 150 s
def test_demo_runs_end_to_end_and_cleans_up(tmp_path: Path) -> None:
    before = set(Path("/tmp").glob("mrbatch-demo-*"))
    result = mrbatch(tmp_path, "demo", timeout=150)
    assert result.returncode == 0, result.stdout + result.stderr
    text = " ".join(result.stdout.split())  # rich wraps lines at the terminal width
    assert "Summary." in text
    assert "10,000 rows out, 0 rejected" in text
    assert "nothing lost, nothing doubled" in text
    assert "PROBLEM" not in text
    assert set(Path("/tmp").glob("mrbatch-demo-*")) == before  # the temp workspace is gone


# --------------------------------------------------------------------------- what a user sees


def _in_terminal(ws: Workspace, args: list[str], columns: int = 80) -> str:
    """The real command's output in a terminal (a pty) ``columns`` wide, colours removed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mrbatch.cli.main", *args],
        cwd=ws.root,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the command exited and closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        else:
            raise AssertionError(f"`mrbatch {' '.join(args)}` did not finish in a terminal")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    text = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def _sample(rows: int, rejected: int = 0) -> bytes:
    lines = sample_bytes("orders.csv").splitlines(keepends=True)
    bad = [b"12345,Nowhere,x,y,Z,1/1/20,bad,2/2/20\n"] * rejected
    return b"".join(lines[: rows + 1]) + b"".join(bad)


def test_tables_fit_80_columns_and_never_cut_what_users_copy(deployment: Deployment) -> None:
    ws = deployment.ws
    keys = [f"input/chaos/region-outage/2025-00{i}.csv" for i in range(4)]
    infos = [put(ws, key, _sample(20 + i)) for i, key in enumerate(keys)]
    runs = [finished(ws, info) for info in infos]
    narrow = {**os.environ, "COLUMNS": "80"}
    # Piped (`mrbatch runs | cat`): plain text, every id, key and status whole, one line each.
    piped = mrbatch(ws, "runs", env=narrow)
    assert piped.returncode == 0 and "…" not in piped.stdout, piped.stdout
    lines = piped.stdout.splitlines()
    assert lines[1].split()[:3] == ["run", "input", "status"]
    for run in runs:
        (line,) = [line for line in lines if run.run_id[:12] in line]
        assert line.split()[1:3] == [run.input_key, "COMPLETED"], line
    status = mrbatch(ws, "status", env=narrow)
    for region in ws.regions:
        (row,) = [line for line in status.stdout.splitlines() if line.startswith(region)]
        assert re.search(r"\d+\.\ds ago$", row), row  # the heartbeat, whole, on its line
    # In a terminal 80 columns wide: a table that fits, whole cells, columns dropped instead.
    shown = _in_terminal(ws, ["runs"])
    assert "…" not in shown and "too narrow for:" in shown, shown
    assert all(len(line) <= 80 for line in shown.splitlines()), shown
    for run in runs:
        assert re.search(rf"{run.run_id[:12]}\s*│\s*{re.escape(run.input_key)}\s*│", shown), shown
    board = _in_terminal(ws, ["status"])
    assert "…" not in board and all(len(line) <= 80 for line in board.splitlines()), board
    for region in ws.regions:
        (row,) = [line for line in board.splitlines() if f"│ {region} " in line]
        assert re.search(r"\d+\.\ds ago\s*│$", row), board


def test_a_run_id_prefix_names_the_run_everywhere(deployment: Deployment) -> None:
    ws = deployment.ws
    run = finished(ws, put(ws, "input/mostly-bad.csv", _sample(20, rejected=5)))
    assert run.status is RunStatus.FAILED and "10.0%" in (run.reason or "")
    prefix = run.run_id[:8]
    errors = mrbatch(ws, "errors", prefix)
    assert errors.returncode == 0 and "5 rejected row(s)" in errors.stdout, errors.stderr
    shown = mrbatch(ws, "runs", "show", prefix)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"run {run.run_id}" in text and "FAILED" in text and "reason" in text
    assert re.search(r"^SPLIT\s+\d\d:\d\d:\d\d\s+\d+\.\d+s", text, re.MULTILINE), text
    assert "failure mail" in text
    detail = json.loads(mrbatch(ws, "runs", "show", prefix, "--json").stdout)
    assert detail["run_id"] == run.run_id and detail["history"][-1]["status"] == "FAILED"
    assert detail["chunk_records"] and detail["chunk_records"][0]["status"] == "DONE"
    code, api = get_json(ws, f"/api/runs/{prefix}")
    assert code == 200 and isinstance(api, dict) and api["run_id"] == run.run_id
    waited = mrbatch(ws, "wait", prefix, "--timeout", "3s")
    assert waited.returncode == 1 and "FAILED" in waited.stdout, waited.stderr
    again = mrbatch(ws, "redrive", prefix)
    assert again.returncode == 0 and "resumes at" in again.stdout, again.stderr
    unknown = mrbatch(ws, "runs", "show", "abcdef12")
    assert unknown.returncode == 1 and "no run with id abcdef12" in unknown.stderr
    newest = mrbatch(ws, "runs", "--limit", "1")
    assert newest.stdout.startswith("1 run(s)") or "1 of" in newest.stdout.splitlines()[0]


def test_non_events_and_refusals_say_what_happened(deployment: Deployment) -> None:
    ws = deployment.ws
    path = ws.root / "orders.csv"
    path.write_bytes(_sample(30))
    first = mrbatch(ws, "put", str(path))
    assert first.returncode == 0 and "no new run" not in first.stdout
    assert mrbatch(ws, "wait", "orders.csv", "--timeout", "60s").returncode == 0
    run_id = json.loads(mrbatch(ws, "runs", "--json").stdout)[-1]["run_id"]
    shown = mrbatch(ws, "runs", "show", "orders.csv")  # by input key, as users type it
    assert shown.returncode == 0 and f"run {run_id}" in shown.stdout, shown.stdout + shown.stderr
    assert "COMPLETED" in shown.stdout and "input/orders.csv (sha256" in shown.stdout
    again = mrbatch(ws, "put", str(path))
    assert f"no new run: the same bytes as run {run_id[:12]}" in again.stdout, again.stdout
    assert "COMPLETED" in again.stdout
    assert json.loads(mrbatch(ws, "put", str(path), "--json").stdout)["new_version"] is False
    none = mrbatch(ws, "errors", "orders.csv")
    assert none.returncode == 0 and "no rejected rows" in none.stdout, none.stdout
    assert "reason" not in none.stdout  # no empty table
    missing = mrbatch(ws, "get", "orders.csv")
    assert missing.returncode == 1 and "did you mean output/orders.csv?" in missing.stderr
    never = mrbatch(ws, "wait", "input/nope.csv")
    assert never.returncode == 1 and "nothing to wait for" in never.stderr


def test_status_has_a_verdict_and_exits_1_when_something_is_down(workspace: Workspace) -> None:
    before = mrbatch(workspace, "status")
    assert before.returncode == 1, before.stdout
    assert before.stdout.splitlines()[-1].startswith("PROBLEM: ") and "nothing is running" in (
        before.stdout
    )
    assert json.loads(mrbatch(workspace, "status", "--json").stdout)["verdict"]["ok"] is False
    with Deployment(workspace) as dep:
        ws = dep.ws

        def reported() -> dict[str, Any] | None:
            data = json.loads(mrbatch(ws, "status", "--json").stdout)
            return data if data["gateway"]["version"] else None

        data = eventually(reported, 30, "the gateway to report its version")
        assert data["verdict"]["ok"], data["verdict"]
        digest = data["config"]["digest"]
        for region in data["regions"].values():
            assert region["version"] == region["replicator_version"] == __version__
            assert region["config"]["digest"] == region["replicator_config"]["digest"] == digest
        assert data["gateway"]["version"] == __version__ and data["version"] == __version__
        ok = mrbatch(ws, "status")
        assert ok.returncode == 0 and ok.stdout.splitlines()[-1].startswith("OK"), ok.stdout
        supervisor.kill(ws, supervisor.Proc("replicator", ws.regions[1]))
        down = mrbatch(ws, "status")
        assert down.returncode == 1 and f"{ws.regions[1]}'s replicator is down" in down.stdout


def test_chaos_reports_in_words() -> None:
    report = ChaosReport(
        experiment="partition", region="us-east-1", peer="us-west-2", duration=1.5,
        started_at=0.0, faults=[{"point": "partition", "region": "us-east-1",
        "peer": "us-west-2", "armed_at": 0.1, "disarmed_at": 1.6}],
        observed={"uploads_by_region": {"us-east-1": 3}, "max_heartbeat_age": 0.4,
                  "max_backlog_us-east-1->us-west-2": 7,
                  "stats_delta": {"us-east-1": {"loop_errors": 2, "pool_restarts": 0}}},
        load={"accepted": 3, "completed": 3, "failed": 0, "pending": 0}, recovered=True,
        time_to_recover=0.5, verify={"ok": True, "counts": {"lost": 0, "duplicated": 0}},
    )  # fmt: skip
    with console.capture() as captured:
        print_chaos(report)
    text = captured.get()
    assert "passed; the fault held for its whole duration" in text
    assert "{" not in text and "stopped by" not in text, text
    assert "largest replication backlog: us-east-1->us-west-2 7" in text
    assert "us-east-1: loop errors +2" in text
