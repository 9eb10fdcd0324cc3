"""Continuous evaluation and scheduled drills: `watch` runs `plan evaluate` and the standby
parity checks on an interval and stores the outcome, which `status --json` and the gateway's
/metrics show; a configuration that differs between what the processes run and the file is a
parity failure; a due drill outside its window is blocked (and logged), inside it runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from mrbatch.config.recovery import parse_window
from mrbatch.recovery.plan import history
from tests.conftest import Deployment, make_workspace
from tests.helpers import mrbatch


def _metric(ws_url: str, name: str) -> float:
    text = httpx.get(f"{ws_url}/metrics", timeout=10).text
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])


def test_windows_parse_and_contain() -> None:
    sat = parse_window("sat 02:00-04:00")
    assert sat.contains(datetime(2026, 11, 28, 3, 0, tzinfo=UTC))  # a Saturday
    assert not sat.contains(datetime(2026, 11, 28, 4, 0, tzinfo=UTC))
    assert not sat.contains(datetime(2026, 11, 29, 3, 0, tzinfo=UTC))
    nights = parse_window("mon-fri 22:00-02:00")
    assert nights.contains(datetime(2026, 11, 28, 1, 0, tzinfo=UTC))  # Friday night's end
    assert not nights.contains(datetime(2026, 11, 29, 1, 0, tzinfo=UTC))  # Saturday night
    assert parse_window("00:00-24:00").contains(datetime(2026, 11, 29, 23, 59, tzinfo=UTC))
    for bad in ("sat", "funday 01:00-02:00", "01:00-01:00", "25:00-26:00"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_watch_evaluates_checks_parity_and_schedules_drills(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    elsewhere = (
        (now + timedelta(hours=3)).strftime("%H:00")
        + "-"
        + (now + timedelta(hours=4)).strftime("%H:00")
    )
    ws = make_workspace(
        tmp_path / "ws",
        failover={"min_switch_interval": "1s", "max_wait": "5s"},
        watch={"evaluate_interval": "1s", "interval": "300ms"},
        drill={"every": "1h", "windows": [elsewhere], "files": 2, "rows": 200},
        reports={"settle": "10s"},
    )
    with Deployment(ws):
        watch = mrbatch(ws, "watch", "--iterations", "2")
        assert watch.returncode == 0, watch.stdout + watch.stderr
        assert "a drill is due but blocked: outside the drill windows" in " ".join(
            watch.stdout.split()
        )
        decisions = [json.loads(x) for x in (ws.log_dir / "watch.jsonl").read_text().splitlines()]
        assert any(d["action"] == "drill-blocked" for d in decisions)
        status = json.loads(mrbatch(ws, "status", "--json").stdout)
        evaluation = status["plan_evaluation"]
        assert evaluation["ok"] is True and evaluation["parity_ok"] is True, evaluation
        assert evaluation["failed"] == 0 and evaluation["age_seconds"] < 60
        assert _metric(ws.gateway_url, "mrbatch_plan_evaluation_ok") == 1.0
        assert _metric(ws.gateway_url, "mrbatch_standby_parity_ok") == 1.0
        assert history(ws) == []  # no drill ran outside its window

        # The file changes under the running processes in a setting they apply only when
        # restarted (most edits they apply within a second): parity says they differ from it,
        # and the window now includes this moment, so the due drill runs.
        text = ws.config_path.read_text().replace(f'windows = ["{elsewhere}"]', "windows = []")
        assert "\nworkers = 0 " in text
        ws.config_path.write_text(text.replace("\nworkers = 0 ", "\nworkers = 1 "))
        watch = mrbatch(ws, "watch", "--iterations", "1", timeout=300)
        assert watch.returncode == 0, watch.stdout + watch.stderr
        flat = " ".join(watch.stdout.split())
        assert "plan evaluation FAILED: parity: config" in flat, flat
        status = json.loads(mrbatch(ws, "status", "--json").stdout)
        assert status["plan_evaluation"]["parity_differences"] == ["config"]
        assert _metric(ws.gateway_url, "mrbatch_standby_parity_ok") == 0.0
        assert _metric(ws.gateway_url, "mrbatch_plan_evaluation_ok") == 0.0
        drills = {e.drill for e in history(ws)}
        assert len(drills) == 1 and None not in drills  # the scheduled drill's two plans
        assert "drill" in flat
        assert any(e.trigger == "drill" for e in history(ws))
