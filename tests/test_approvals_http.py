"""Approvals over HTTP and the CLI: a plan without --yes and without a terminal waits (bounded by
approval.timeout) for an answer; the gateway takes it with the bearer token only; a denial
aborts with nothing changed; the wait, who answered, how and when are in the report; and
`watch --auto-failover` with watch.require_approval waits for a person."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mrbatch import backends
from mrbatch.config.workspace import Workspace
from mrbatch.errors import ConfigError
from mrbatch.gateway.app import create_app
from mrbatch.recovery.plan import MODE_PREFIX, PLAN_PREFIX, Execution, PlanContext, history
from tests.conftest import Deployment, make_workspace
from tests.gateway_support import InProcess
from tests.helpers import eventually, mrbatch


def _waiting(ws: Workspace, step: str = "approval") -> Execution:
    def find() -> Execution | None:
        for execution in history(ws):
            if execution.outcome == "running" and (execution.waiting or {}).get("step") == step:
                return execution
        return None

    return eventually(find, 60, f"a plan waiting at its {step} step")


def _start(ws: Workspace, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mrbatch.cli.main", *args],
        cwd=ws.root,
        stdin=subprocess.DEVNULL,  # no terminal: nobody can answer a prompt
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def test_approve_over_http_deny_over_the_cli(tmp_path: Path) -> None:
    ws = make_workspace(
        tmp_path / "ws",
        failover={"min_switch_interval": "1s", "max_wait": "5s"},
        approval={"timeout": "60s", "poll": "100ms"},
        reports={"settle": "2s"},
    )
    with Deployment(ws):
        home, away = ws.regions
        proc = _start(ws, "failover", "--json")
        try:
            waiting = _waiting(ws)
            url = f"{ws.gateway_url}/api/plans/{waiting.id}"
            shown = httpx.get(url, timeout=10).json()
            assert shown["waiting"]["step"] == "approval" and "fence" in shown["waiting"]["prompt"]
            assert httpx.post(f"{url}/approve", timeout=10).status_code == 401
            wrong = {"authorization": "Bearer not-the-token"}
            assert httpx.post(f"{url}/approve", headers=wrong, timeout=10).status_code == 403
            assert backends.open_control_plane(ws).routing().epoch == 1
            time.sleep(0.3)  # a wait worth measuring
            token = {"authorization": f"Bearer {ws.token}"}
            answer = httpx.post(
                f"{url}/approve", headers=token, json={"by": "alice", "note": "go"}, timeout=10
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["by"] == "alice"
        finally:
            code, out, err = _finish(proc)
        assert code == 0, out + err
        execution = json.loads(out)
        assert execution["outcome"] == "succeeded" and execution["waiting"] is None
        approval = execution["approvals"][0]
        assert approval["decision"] == "approve" and approval["by"] == "alice"
        assert approval["via"].startswith("gateway (127.0.0.1")
        assert approval["waited_seconds"] >= 0.3
        report = json.loads(mrbatch(ws, "report", "show", "1", "--json").stdout)
        assert report["approvals"] == execution["approvals"]
        decided = next(t for t in report["timeline"] if t["event"] == "decided")
        assert decided["at"] == approval["at"]
        # An answer to a plan that is over is refused.
        late = httpx.post(f"{url}/deny", headers=token, timeout=10)
        assert late.status_code == 400 and "not running" in late.json()["error"]

        # A denial from the CLI: the failback aborts, nothing changed.
        proc = _start(ws, "failback", "--force")
        try:
            waiting = _waiting(ws)
            denied = mrbatch(ws, "plan", "deny", "--note", "not now")
            assert denied.returncode == 0, denied.stderr
        finally:
            code, out, err = _finish(proc)
        assert code == 1 and "denied by" in " ".join(out.split()), out + err
        routing = backends.open_control_plane(ws).routing()
        assert routing.active_region == away and routing.epoch == 2
        aborted = next(e for e in history(ws) if e.id == waiting.id)
        assert aborted.outcome == "aborted" and aborted.approvals[0]["decision"] == "deny"
        assert aborted.approvals[0]["via"] == "cli" and aborted.approvals[0]["note"] == "not now"
        assert home  # the home region stays fenced: nothing changed


def test_auto_failover_waits_for_a_person(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="require_approval"):
        make_workspace(tmp_path / "bad", watch={"require_approval": True})
    ws = make_workspace(
        tmp_path / "ws",
        failover={"min_switch_interval": "1s", "max_wait": "5s"},
        watch={"require_approval": True, "heartbeat_timeout": "1s", "interval": "200ms"},
        approval={"timeout": "60s", "poll": "100ms"},
        reports={"settle": "2s"},
    )
    with Deployment(ws) as dep:
        old, new = ws.regions
        dep.kill_region(old)
        eventually(
            lambda: time.time() - backends.open_control_plane(ws).heartbeats()[old].at > 1.2,
            30,
            "the killed region's heartbeat to go stale",
        )
        proc = _start(ws, "watch", "--auto-failover", "--iterations", "3")
        try:
            waiting = _waiting(ws)
            assert waiting.trigger == "watch" and waiting.detected_by == "watch"
            assert backends.open_control_plane(ws).routing().epoch == 1
            assert mrbatch(ws, "plan", "approve", waiting.id).returncode == 0
        finally:
            code, out, err = _finish(proc)
        assert code == 0, out + err
        routing = backends.open_control_plane(ws).routing()
        assert routing.active_region == new and routing.epoch == 2
        done = next(e for e in history(ws) if e.id == waiting.id)
        assert done.outcome == "succeeded"
        assert done.detected_at is not None and done.detected_at <= done.started
        report = json.loads(mrbatch(ws, "report", "show", "1", "--json").stdout)
        rto = report["rto"]
        assert rto["from_detection"] > rto["from_command"]  # detection came first
        assert report["detected_by"] == "watch"


def test_a_plan_is_switched_to_ungraceful_over_http(tmp_path: Path) -> None:
    """`POST /api/plans/ID/mode` on the gateway's application: the bearer token only, the
    switch stored where the plan looks, and taken and logged by the plan at its next check."""
    ws = make_workspace(tmp_path / "ws")
    old, new = ws.regions
    execution = Execution(
        id="20261130-graceful", plan="failover", target=new, source=old, started=time.time(),
        desired_rto=60.0, mode="graceful",
    )  # fmt: skip
    control = backends.open_control_plane(ws)
    control.put_document(PLAN_PREFIX + execution.id, execution.to_dict())
    client = InProcess(create_app(ws))
    url = f"/api/plans/{execution.id}/mode"
    body = {"mode": "ungraceful", "by": "bob"}
    assert client.request("POST", url, json=body).status_code == 401
    wrong = {"authorization": "Bearer not-the-token"}
    assert client.request("POST", url, json=body, headers=wrong).status_code == 403
    token = {"authorization": f"Bearer {ws.token}"}
    sideways = client.request("POST", url, json={"mode": "sideways"}, headers=token)
    assert sideways.status_code == 400 and "unknown mode" in sideways.json()["error"]
    assert control.documents(f"{MODE_PREFIX}{execution.id}/") == {}  # nothing was stored

    switched = client.request("POST", url, json=body, headers=token)
    assert switched.status_code == 200, switched.text
    answer = switched.json()
    assert (answer["mode"], answer["by"], answer["execution"]) == (
        "ungraceful", "bob", execution.id
    )  # fmt: skip
    assert answer["via"].startswith("gateway (")

    logged: list[str] = []
    ctx = PlanContext(
        ws=ws, plan="failover", target=new, source=old, execution=execution, yes=True,
        force=False, max_wait=1.0, confirm=lambda _q: True, echo=logged.append,
    )  # fmt: skip
    assert ctx.mode() == "ungraceful" and execution.mode == "ungraceful"
    (change,) = execution.mode_changes
    assert (change["from"], change["mode"], change["by"]) == ("graceful", "ungraceful", "bob")
    assert change["via"] == answer["via"] and change["at"] == answer["at"]
    assert logged == ["  mode switched to ungraceful by bob"]
    assert ctx.mode() == "ungraceful" and len(execution.mode_changes) == 1  # taken once

    over = Execution.from_dict(
        {**execution.to_dict(), "id": "20261130-over", "outcome": "succeeded"}
    )
    control.put_document(PLAN_PREFIX + over.id, over.to_dict())
    late = client.request("POST", f"/api/plans/{over.id}/mode", json=body, headers=token)
    assert late.status_code == 400 and "not running" in late.json()["error"]
