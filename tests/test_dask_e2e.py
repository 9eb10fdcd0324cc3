"""End to end on Dask: a deployment whose regions run their chunk tasks on a LocalCluster of two
worker processes each (and share a three-member etcd cluster, the scale-out configuration).
The output is byte-identical to the process pool's; `mrbatch chaos kill-worker` SIGKILLs Dask
workers under chunk tasks, and every file still completes once, counted as lost workers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mrbatch import backends
from mrbatch.config.initialize import sample_bytes
from mrbatch.faults import FaultPoints
from mrbatch.model.keys import output_key_for
from mrbatch.model.records import CHUNK, ChunkRun, RunStatus
from mrbatch.runtime import supervisor
from tests.conftest import Deployment, make_workspace
from tests.etcd_cluster import EtcdCluster
from tests.expected import expected_output
from tests.helpers import eventually, finished, mrbatch, put

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("dask")
    with EtcdCluster(root / "etcd") as cluster:
        ws = make_workspace(
            root / "ws",
            init={
                "control_plane": "etcd",
                "etcd_endpoints": cluster.endpoints,
                "executor": "dask",
            },
            chunk_rows=250,
            dask={"workers": 2},
        )
        with Deployment(ws) as deployment:
            yield deployment


def _workers(dep: Deployment, region: str) -> list[int]:
    beat = backends.open_control_plane(dep.ws).heartbeats().get(region)
    return [int(p) for p in (beat.info.get("workers") or [])] if beat else []


def test_output_is_the_process_pools(dep: Deployment) -> None:
    ws = dep.ws
    active = ws.regions[0]
    body = sample_bytes("orders.csv")
    info = put(ws, "input/dask-sample.csv", body)
    run = finished(ws, info, timeout=90)
    assert run.status is RunStatus.COMPLETED and len(run.chunks) > 1
    store = backends.open_object_store(ws, active)
    assert store.get(output_key_for(info.key)) == expected_output(body)
    # Two Dask workers, children of the region process (chaos may signal them).
    workers = eventually(lambda: _workers(dep, active), 30, "the Dask workers to be reported")
    region_pid = supervisor.pid_of(ws, supervisor.Proc("region", active))
    assert len(workers) == 2
    for pid in workers:
        stat = Path(f"/proc/{pid}/stat").read_text()
        assert int(stat[stat.rindex(")") + 2 :].split()[1]) == region_pid


def test_a_worker_dying_under_a_chunk_is_a_lost_worker_not_an_attempt(dep: Deployment) -> None:
    ws = dep.ws
    active = ws.regions[0]
    table = backends.open_state_table(ws, active)
    faults = FaultPoints(ws.faults_path)
    # Until a chunk has failed that way, every chunk task ends its worker process (after
    # writing its outputs): the task's future fails with KilledWorker.
    crash = faults.arm("crash:chunk-written", region=active)
    try:
        info = put(ws, "input/dask-crash.csv", sample_bytes("orders.csv"))

        def lost() -> list[ChunkRun]:
            chunks = [ChunkRun.from_record(r) for r in table.scan(CHUNK)]
            return [c for c in chunks if "KilledWorker" in (c.last_error or "")]

        eventually(lost, 90, "a chunk task to fail with its worker")
    finally:
        faults.disarm(crash.id)
    run = finished(ws, info, timeout=120)
    assert run.status is RunStatus.COMPLETED, run.reason
    chunks = [ChunkRun.from_record(r) for r in table.scan(CHUNK, prefix=f"chunk/{run.run_id}/")]
    assert any("KilledWorker" in (c.last_error or "") for c in chunks)
    assert all(c.attempts == 0 for c in chunks)  # retried as lost workers, not as attempts


def test_chaos_kill_worker_on_dask(dep: Deployment) -> None:
    ws = dep.ws
    active = ws.regions[0]
    region_pid = supervisor.pid_of(ws, supervisor.Proc("region", active))
    result = mrbatch(
        ws, "chaos", "kill-worker", "--json", "--duration", "2s", "--files", "2", "--rows", "6000"
    )
    report: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == 0, json.dumps(report, indent=1)[-3000:] + result.stderr[-2000:]
    summary = report["summary"]
    assert report["ok"] and summary["files_in"] == summary["completed"] == 2
    assert (summary["failed"], summary["lost"], summary["duplicates"]) == (0, 0, 0)
    kills = report["observed"]["kills"]
    assert kills and all(k["parent"] == region_pid for k in kills)
    # The lost workers were noticed and replaced; a chunk whose worker died (KilledWorker) ran
    # again without using up an attempt; the region process itself survived.
    assert report["observed"]["stats_delta"][active]["pool_restarts"] >= 1
    table = backends.open_state_table(ws, active)
    chunks = [ChunkRun.from_record(r) for r in table.scan(CHUNK)]
    assert chunks and all(c.attempts == 0 for c in chunks), [
        (c.run_id, c.index, c.attempts, c.last_error) for c in chunks if c.attempts
    ]
    assert supervisor.pid_of(ws, supervisor.Proc("region", active)) == region_pid
    # Its cluster still has workers to give chunks to (that each nanny brings back exactly its
    # worker is the executor contract's test; here, on a loaded machine, a restart may still
    # be importing polars).
    eventually(lambda: _workers(dep, active), 60, "the region to report Dask workers")
