"""Retention and garbage collection on a live deployment: intermediates go once their run is
finished everywhere, a finished run's versions and records go past the window (deletions that
replicate), superseded bytes are freed; what is live, pending or still linked stays."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mrbatch import backends
from mrbatch.config.initialize import sample_bytes
from mrbatch.faults import FaultPoints
from mrbatch.maintain.gc import collect_garbage
from mrbatch.model.keys import run_id_for
from mrbatch.observe import views
from mrbatch.runtime.replication import backlog
from tests.conftest import Deployment, make_workspace
from tests.helpers import drained, eventually, finished, mrbatch, put

LINES = sample_bytes("orders.csv").split(b"\n")


def version(rows: int) -> bytes:
    return b"\n".join(LINES[: rows + 1]) + b"\n"


def keys(ws, region: str, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [i.key for i in backends.open_object_store(ws, region).list(prefix)]


def gc(ws, *args: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    result = mrbatch(ws, "gc", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_collection_keeps_what_is_live_and_removes_what_is_not(tmp_path: Path) -> None:
    window = 60.0  # time passes by the clock given to collect_garbage, not by sleeping
    ws = make_workspace(
        tmp_path / "ws",
        chunk_rows=100,
        retention={"age": f"{window}s", "versions": 2, "enabled": False},
        gateway={"max_link_lifetime": f"{window}s", "link_expiry": "30s"},
    )
    home = ws.regions[0]
    with Deployment(ws):
        bodies = [version(150 + 10 * i) for i in range(3)]
        runs = [finished(ws, put(ws, "input/k.csv", body)) for body in bodies]
        other = finished(ws, put(ws, "input/other.csv", version(120)))
        drained(ws)
        assert keys(ws, home, f"runs/{runs[0].run_id}/")  # chunk outputs, merged files

        dry = gc(ws, "--dry-run")
        assert dry["intermediates"] > 0 and dry["runs_collected"] == []
        assert keys(ws, home, f"runs/{runs[0].run_id}/"), "a dry run removed something"

        first = gc(ws)  # finished everywhere: intermediates go at once, nothing else yet
        assert first["intermediates"] > 0 and first["records"] == 0
        assert first["kept"]["within the retention window"] == 4
        drained(ws)
        for region in ws.regions:  # the deletions replicated
            assert keys(ws, region, "runs/") == [], region

        later = time.time() + window + 1
        second = collect_garbage(ws, now=later, purge=False).to_dict()  # past the window:
        assert second["runs_collected"] == [runs[0].run_id]  # the first version is neither
        assert second["kept"]["live: input/, output/ or rejected/ shows it"] == 2  # live nor
        assert second["kept"]["among the newest versions of its key"] == 1  # among the newest 2
        drained(ws)
        for region in ws.regions:
            assert keys(ws, region, f"versions/{runs[0].run_id}/") == [], region
            table = backends.open_state_table(ws, region)
            assert table.get(f"run/{runs[0].run_id}") is None
            assert table.get(f"accepted/{runs[0].run_id}") is None
            assert table.get(f"run/{runs[2].run_id}") is not None  # the live version
            assert table.get(f"run/{other.run_id}") is not None
        assert {r.run_id for r in views.all_runs(ws)} == {r.run_id for r in [*runs[1:], other]}

        third = collect_garbage(ws, now=later + window + 1).to_dict()  # tombstones forgotten,
        freed = sum(p["bytes_freed"] for p in third["purged"].values())  # bytes freed
        assert freed > 0 and all(p["record_tombstones"] > 0 for p in third["purged"].values())
        drained(ws)
        result = mrbatch(ws, "verify", "--final", "--wait", "20s", "--json")
        assert result.returncode == 0, json.loads(result.stdout)["violations"]


def test_what_is_pending_or_still_linked_is_never_collected(tmp_path: Path) -> None:
    ws = make_workspace(
        tmp_path / "ws",
        retention={"age": "1s", "versions": 0, "enabled": False},
        gateway={"max_link_lifetime": "1h"},  # a link may be valid this long: nothing older
    )
    home, away = ws.regions
    with Deployment(ws):
        done = finished(ws, put(ws, "input/linked.csv", version(50)))
        put(ws, "input/linked.csv", version(60))  # done is no longer the live version
        faults = FaultPoints(ws.faults_path)
        with faults.armed("partition", region=home, peer=away):
            pending = put(ws, "input/pending.csv", version(70), region=away)
            report = collect_garbage(ws, now=time.time() + 60).to_dict()
            assert done.run_id not in report["runs_collected"]  # its mailed link may be valid
            assert report["window_seconds"] == 3600
            assert backends.open_state_table(ws, away).get(
                f"accepted/{run_id_for(pending.key, pending.sha256)}"
            )
        eventually(lambda: backlog(ws, away, home).total == 0, 30, "the partition to heal")
        assert finished(ws, pending).status.terminal
