"""The load generator follows its files a batch of runs at a time, whatever the workspace's
history, and still reports every file as its run ended."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mrbatch.observe import views
from mrbatch.proof import loadgen
from mrbatch.proof.loadgen import LoadGenerator, LoadOptions
from tests.conftest import Deployment, make_workspace


def test_polls_read_a_batch_of_runs_in_turn_and_miss_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.setattr(loadgen, "_POLL_BATCH", 4)
    asked: list[int] = []
    read_runs = views.runs_by_id

    def counting(ws: Any, run_ids: list[str], tables: Any = None) -> Any:
        asked.append(len(run_ids))
        return read_runs(ws, run_ids, tables)

    monkeypatch.setattr(views, "runs_by_id", counting)
    dep = Deployment(ws)
    dep.up()
    try:
        load = LoadGenerator(ws, LoadOptions(files=11, rows=50, seed=9, timeout=60))
        report = load.run()
    finally:
        dep.down()
    assert [r.status for r in report.results] == ["COMPLETED"] * 11
    assert all(r.published_at is not None and r.latency is not None for r in report.results)
    assert asked and max(asked) <= 4, asked
