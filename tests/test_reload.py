"""Running processes follow edits of mrbatch.toml: what can change live is applied (the next
runs and redrives use it), what cannot is named, a bad edit is refused and reported without
taking anything down, and every process reports the configuration it runs with."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mrbatch import backends
from mrbatch.config.initialize import sample_bytes
from mrbatch.config.reload import ConfigWatcher, fingerprint, live_part, restart_needed
from mrbatch.config.workspace import Workspace
from mrbatch.model.records import RunStatus
from mrbatch.recovery.operations import redrive
from mrbatch.runtime import supervisor
from tests.conftest import Deployment, _set
from tests.gateway_support import get_json
from tests.helpers import eventually, finished, mails, mrbatch, put, run_of


def _edit(ws: Workspace, section: str, key: str, value: object) -> None:
    ws.config_path.write_text(_set(ws.config_path.read_text(), section, key, value))


def _reports(ws: Workspace) -> dict[str, dict[str, Any]]:
    """label -> the configuration each running region and replicator reports."""
    beats = backends.open_control_plane(ws).heartbeats()
    return {
        label: dict(beat.info.get("config") or {})
        for label, beat in beats.items()
        if label in ws.regions or label.startswith("replicator:") or label == "gateway"
    }


def _mostly_bad(rows: int = 20, bad: int = 5) -> bytes:
    lines = sample_bytes("orders.csv").splitlines(keepends=True)
    return b"".join(lines[: rows + 1]) + b"12345,Nowhere,x,y,Z,1/1/20,bad,2/2/20\n" * bad


def test_an_edit_applies_to_the_next_redrive_without_a_restart(deployment: Deployment) -> None:
    ws = deployment.ws
    pids = dict(supervisor.running(ws))
    run = finished(ws, put(ws, "input/strict.csv", _mostly_bad()))
    assert run.status is RunStatus.FAILED and "above the tolerated 10.0%" in (run.reason or "")
    # The owners were told, in a mail of its own with a link to the rejected rows.
    failure = eventually(
        lambda: [m for m in mails(ws) if m["Message-ID"] == f"<{run.run_id}.failed.0@mrbatch>"],
        30,
        "the failure mail",
    )[0]
    assert "5 of 25 rows rejected" in failure["Subject"]
    assert "/objects/" in failure.get_payload(decode=True).decode()  # type: ignore[union-attr]
    _edit(ws, "pipeline", "max_rejected_fraction", 0.25)
    reloaded = mrbatch(ws, "reload", "--json")
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    answer = json.loads(reloaded.stdout)
    assert answer["digest"] == fingerprint(Workspace.load(ws.config_path))
    assert {p["outcome"] for p in answer["processes"]} == {"applied"}
    assert len(answer["processes"]) == 5  # two regions, two replicators, the gateway
    status = json.loads(mrbatch(ws, "status", "--json").stdout)
    assert status["verdict"]["ok"], status["verdict"]
    for region in status["regions"].values():
        assert region["config"]["digest"] == status["config"]["digest"]
    redriven = mrbatch(ws, "redrive", run.run_id[:10])
    assert redriven.returncode == 0, redriven.stderr
    done = eventually(
        lambda: (
            (r := run_of(ws, run.input_key, run.input_sha256))
            and r.status is RunStatus.COMPLETED
            and r
        ),
        60,
        "the redriven run to complete under the new threshold",
    )
    assert (done.rows_out, done.rows_rejected) == (20, 5)
    assert supervisor.running(ws) == pids  # nothing was restarted
    # One failure mail, one completion mail: verify counts them apart.
    verified = mrbatch(ws, "verify", "--wait", "30s", "--json")
    assert verified.returncode == 0, verified.stdout[-3000:]
    ids = sorted(m["Message-ID"] for m in mails(ws))
    assert ids == [f"<{run.run_id}.failed.0@mrbatch>", f"<{run.run_id}@mrbatch>"]


def test_a_redrive_right_after_an_edit_runs_with_the_edit(deployment: Deployment) -> None:
    """The redrive pins the pipeline as the file declares it now; the active region, which
    may not have looked at the file yet, is made to apply it first, so it never refuses the
    run as one whose configuration changed under it."""
    ws = deployment.ws
    run = finished(ws, put(ws, "input/edited.csv", _mostly_bad()))
    assert run.status is RunStatus.FAILED
    _edit(ws, "pipeline", "max_rejected_fraction", 0.25)
    # At once, in this process (no `mrbatch reload`, not even a command's start-up time): the
    # region looks at the file about once a second, so it has not applied the edit yet.
    redriven = redrive(Workspace.load(ws.config_path), run.run_id)
    assert redriven["pipeline_changed"] is True
    done = eventually(
        lambda: (
            (r := run_of(ws, run.input_key, run.input_sha256))
            and r.status.terminal
            and r.redriven == 1
            and r
        ),
        60,
        "the redriven run to end",
    )
    assert done.status is RunStatus.COMPLETED, done.reason
    assert (done.rows_out, done.rows_rejected) == (20, 5)


def test_a_bad_edit_is_refused_and_reported_and_nothing_goes_down(
    deployment: Deployment,
) -> None:
    ws = deployment.ws
    pids = dict(supervisor.running(ws))
    before = fingerprint(ws)
    good = ws.config_path.read_text()
    ws.config_path.write_text(good.replace("chunk_attempts = 4", "chunk_atempts = 4"))

    def refused() -> dict[str, dict[str, Any]] | None:
        reports = _reports(ws)
        return reports if reports and all(r.get("error") for r in reports.values()) else None

    reports = eventually(refused, 30, "every process to report the refused edit")
    for report in reports.values():
        assert "pipeline.chunk_atempts: unknown key" in report["error"]
        assert str(ws.config_path) in report["error"] and report["digest"] == before
    # The CLI refuses the file as it is; the gateway (running the old one) says what is wrong.
    cli = mrbatch(ws, "status")
    assert cli.returncode == 2 and "did you mean pipeline.chunk_attempts?" in cli.stderr
    assert "processes already running keep the configuration they run with" in cli.stderr
    forced = mrbatch(ws, "reload")
    assert forced.returncode == 2 and "nothing was applied" in forced.stderr
    code, api = get_json(ws, "/api/status")
    assert code == 200 and isinstance(api, dict) and not api["verdict"]["ok"]
    assert "refused the edited mrbatch.toml" in api["verdict"]["summary"]
    assert "pipeline.chunk_atempts" in api["verdict"]["summary"]
    # Still working: a file goes through with the configuration it runs with.
    run = finished(ws, put(ws, "input/during-bad-edit.csv", _mostly_bad(30, 0)))
    assert run.status is RunStatus.COMPLETED
    ws.config_path.write_text(good)
    eventually(
        lambda: all(not r.get("error") for r in _reports(ws).values()), 30, "the error to clear"
    )
    assert supervisor.running(ws) == pids


def test_a_setting_that_cannot_change_live_says_so(deployment: Deployment) -> None:
    ws = deployment.ws
    _edit(ws, "gateway", "port", ws.config.gateway.port + 1)
    _edit(ws, "retention", "versions", 3)  # and one that can
    result = mrbatch(ws, "reload", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    outcomes = {p["process"]: p for p in json.loads(result.stdout)["processes"]}
    assert {p["outcome"] for p in outcomes.values()} == {"restart needed"}
    assert outcomes["gateway"]["detail"] == "gateway.port"
    table = mrbatch(ws, "reload")
    assert "restart needed for the settings named" in table.stdout
    status = json.loads(mrbatch(ws, "status", "--json").stdout)
    assert any("restart needed for gateway.port" in w for w in status["verdict"]["warnings"])
    # The gateway still answers where it was started.
    code, _body = get_json(ws, "/healthz")
    assert code == 200


def test_the_watcher_applies_live_keeps_the_rest_and_refuses_bad_edits(
    workspace: Workspace,
) -> None:
    watcher = ConfigWatcher(workspace, "test", every=0.0)
    assert watcher.poll() is None  # nothing changed
    path: Path = workspace.config_path
    text = path.read_text()
    path.write_text(
        _set(_set(text, "pipeline", "max_rejected_fraction", 0.5), "pipeline", "workers", 3)
    )
    time.sleep(0.01)
    edited = watcher.poll(force=True)
    assert edited is not None and edited.config.pipeline.max_rejected_fraction == 0.5
    assert edited.config.pipeline.workers == workspace.config.pipeline.workers  # kept
    assert watcher.pending == ["pipeline.workers"] and watcher.error is None
    assert watcher.report()["digest"] == fingerprint(Workspace.load(path))
    path.write_text(text.replace("[pipeline]", "[pipeline]\nchunk_rows = = 1"))
    assert watcher.poll(force=True) is None
    assert watcher.error is not None and "not valid TOML" in watcher.error
    assert watcher.ws.config.pipeline.max_rejected_fraction == 0.5  # the one it runs with
    keep = live_part(workspace.config, edited.config)
    assert restart_needed(workspace.config, keep) == []


def test_a_configuration_crosses_to_a_worker_once_and_an_edit_crosses_again(
    workspace: Workspace,
) -> None:
    # What a chunk task carries to a worker: the configuration its region runs with. A worker
    # keeps what it was sent; an edit (other settings, the same file digest or not) is sent
    # and received as itself, never mistaken for one the worker holds.
    import pickle
    from multiprocessing.reduction import ForkingPickler

    from mrbatch.config.reload import ConfigRef

    ref = ConfigRef(str(workspace.config_path), "d1", workspace.config)
    first = pickle.loads(ForkingPickler.dumps(ref))
    assert first == ref and first.config == workspace.config
    assert pickle.loads(ForkingPickler.dumps(ref)) is first  # unpickled once
    edited = workspace.config.model_copy(
        update={"pipeline": workspace.config.pipeline.model_copy(update={"chunk_rows": 7})}
    )
    other = pickle.loads(ForkingPickler.dumps(ConfigRef(ref.path, "d1", edited)))
    assert other is not first and other.config.pipeline.chunk_rows == 7
    assert first.config.pipeline.chunk_rows == workspace.config.pipeline.chunk_rows
    # A schema edited: the same settings under another digest, which the worker must see.
    schema_edit = pickle.loads(ForkingPickler.dumps(ConfigRef(ref.path, "d2", workspace.config)))
    assert schema_edit is not first and schema_edit.digest == "d2"
