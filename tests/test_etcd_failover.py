"""End to end on the etcd control plane: real region, replicator and gateway processes sharing a
real three-member etcd cluster. Failover and failback under load with one member SIGKILLed; a
region cut off from etcd (its ``control`` fault point) fences itself while the other takes
over; two members down: a plan refuses with "no quorum" and every region pauses, then resumes
on its own."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mrbatch import backends
from mrbatch.config.initialize import sample_bytes
from mrbatch.config.workspace import Workspace
from mrbatch.faults import FaultPoints
from mrbatch.model.keys import output_key_for
from mrbatch.model.records import CHUNK, ChunkRun, ChunkStatus, RunStatus
from mrbatch.observe import views
from mrbatch.proof.verify import verify
from tests.conftest import Deployment, make_workspace
from tests.etcd_cluster import EtcdCluster
from tests.expected import expected_output
from tests.helpers import eventually, finished, loop_passes, mails, mrbatch, put, run_of

pytestmark = pytest.mark.slow
SAMPLE = sample_bytes("orders.csv")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path / "etcd") as started:
        yield started


@pytest.fixture
def dep(tmp_path: Path, cluster: EtcdCluster) -> Iterator[Deployment]:
    ws = make_workspace(
        tmp_path / "ws",
        init={"control_plane": "etcd", "etcd_endpoints": cluster.endpoints},
        chunk_rows=400,  # 25 chunks per sample file
        etcd={"lease_ttl": "1s"},
        failover={"min_switch_interval": "1s", "max_wait": "10s"},
        pipeline={"workers": 2},
    )
    with Deployment(ws) as deployment:
        yield deployment


def _done_chunks(ws: Workspace, region: str) -> int:
    table = backends.open_state_table(ws, region)
    return sum(ChunkRun.from_record(r).status is ChunkStatus.DONE for r in table.scan(CHUNK))


def _completed_once(ws: Workspace, keys: list[str]) -> None:
    """Every input has one COMPLETED run, the expected bytes at output/, one mail each, and
    verify finds nothing lost, doubled or published by a region outside its epoch."""
    runs = views.all_runs(ws)
    for key in keys:
        mine = [r for r in runs if r.input_key == key]
        assert len(mine) == 1 and mine[0].status is RunStatus.COMPLETED, (key, mine)
    active = backends.open_control_plane(ws).routing().active_region
    store = backends.open_object_store(ws, active)
    for key in keys:
        assert store.get(output_key_for(key)) == expected_output(SAMPLE), key
    ids = [m["Message-ID"] for m in mails(ws)]
    assert len(ids) == len(set(ids)) == len(keys)
    report = verify(ws, wait=60)
    assert report.ok, report.violations
    assert report.counts["duplicated"] == report.counts["lost"] == 0


def test_failover_and_failback_under_load_with_one_member_killed(
    dep: Deployment, cluster: EtcdCluster
) -> None:
    ws = dep.ws
    home, other = ws.regions
    infos = [put(ws, f"input/load-{i}.csv", SAMPLE) for i in range(3)]
    eventually(lambda: _done_chunks(ws, home) >= 5, 60, "chunks to be under way")
    cluster.kill(0)  # a member lost mid-run (the leader, one time in three)
    result = mrbatch(ws, "failover", "--yes", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    execution = json.loads(result.stdout)
    assert execution["outcome"] == "succeeded" and execution["epoch_after"] == 2
    for info in infos:
        finished(ws, info, timeout=120)
    time.sleep(1.0)  # the anti-flap rule (min_switch_interval 1s)
    back = mrbatch(ws, "failback", "--yes", "--json")
    assert back.returncode == 0, back.stdout + back.stderr
    assert json.loads(back.stdout)["epoch_after"] == 3
    late = put(ws, "input/after-failback.csv", SAMPLE)
    assert finished(ws, late, timeout=60).region == home
    routing = backends.open_control_plane(ws).routing()
    assert routing.regions == {home: "ACTIVE", other: "STANDBY"}
    _completed_once(ws, [i.key for i in infos] + [late.key])


def test_a_region_cut_off_from_etcd_fences_itself_while_the_other_takes_over(
    dep: Deployment,
) -> None:
    ws = dep.ws
    cut, other = ws.regions
    infos = [put(ws, f"input/cut-{i}.csv", SAMPLE) for i in range(2)]
    eventually(lambda: _done_chunks(ws, cut) >= 3, 60, "chunks to be under way")
    faults = FaultPoints(ws.faults_path)
    fault = faults.arm("control", region=cut, note="cut off from etcd")
    cut_at = time.time()
    try:
        # Its lease runs out: status shows it, while the region process itself is alive.
        seen = eventually(
            lambda: (s := views.status(ws))["regions"][cut].get("lease_held") is False and s,
            15,
            "the cut-off region's lease to expire",
        )
        entry = seen["regions"][cut]
        assert entry["process_state"] == "self-fenced (no lease)" and entry["alive"]
        # and its verdict calls it a problem (`mrbatch status` exits 1)
        assert any(f"{cut}'s process holds no lease" in p for p in seen["verdict"]["problems"])
        result = mrbatch(ws, "failover", "--yes", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        for info in infos:
            run = finished(ws, info, timeout=120)
            assert run.status is RunStatus.COMPLETED
            assert run.region == other and run.epoch == 2, (run.region, run.epoch)
        # Nothing of the old epoch landed once the new one began. (The cut-off region may
        # still publish just after the cut, on a confirmation it got before it: a promise
        # lasts half the lease, and the switch waits for the lease to run out.)
        switched_at = backends.open_control_plane(ws).routing().switched_at
        assert switched_at > cut_at
        store = backends.open_object_store(ws, cut)
        late = [
            i
            for i in store.list("output/")
            if i.origin == cut and i.epoch < 2 and i.modified >= switched_at
        ]
        assert not late, (switched_at, late)
    finally:
        faults.disarm(fault.id)
    eventually(
        lambda: views.status(ws)["regions"][cut].get("process_state") == "fenced",
        30,
        "the region, back in touch, to report itself fenced",
    )
    _completed_once(ws, [i.key for i in infos])


def test_two_members_down_a_plan_refuses_and_every_region_pauses(
    dep: Deployment, cluster: EtcdCluster
) -> None:
    ws = dep.ws
    home, other = ws.regions
    cluster.kill(1)
    cluster.kill(2)
    result = mrbatch(ws, "failover", "--yes", "--json")
    assert result.returncode == 1
    assert "no quorum: 1 of 3 members answer" in result.stderr, result.stderr
    status = json.loads(mrbatch(ws, "status", "--json").stdout)
    assert "no quorum" in status["control_plane_error"]
    # Accepted meanwhile (the access point needs no control plane), claimed by nobody.
    info = put(ws, "input/no-quorum.csv", SAMPLE)
    time.sleep(3.0)  # several loop passes of every region (they cannot report them now)
    assert run_of(ws, info.key, info.sha256) is None
    cluster.restart(1)
    cluster.restart(2)
    cluster.wait_healthy()
    run = finished(ws, info, timeout=60)  # the active region resumes without an operator
    assert run.status is RunStatus.COMPLETED and (run.region, run.epoch) == (home, 1)
    routing = backends.open_control_plane(ws).routing()
    assert (routing.epoch, routing.active_region) == (1, home)  # the refused plan changed nothing
    loop_passes(ws, other, passes=5)
    _completed_once(ws, [info.key])
