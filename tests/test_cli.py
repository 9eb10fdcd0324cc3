"""The command line as a user runs it: a real `mrbatch` process per command."""

from __future__ import annotations

import tomllib
from pathlib import Path

from mrbatch import backends
from mrbatch.config.workspace import Workspace
from tests.helpers import mrbatch


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


def test_demo_runs_end_to_end_and_cleans_up(tmp_path: Path) -> None:
    before = set(Path("/tmp").glob("mrbatch-demo-*"))
    result = mrbatch(tmp_path, "demo", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    text = " ".join(result.stdout.split())  # rich wraps lines at the terminal width
    assert "Summary." in text
    assert "10,000 rows out, 0 rejected" in text
    assert "nothing lost, nothing doubled" in text
    assert "PROBLEM" not in text
    assert set(Path("/tmp").glob("mrbatch-demo-*")) == before  # the temp workspace is gone
