"""What only the etcd control plane does, on a real three-member cluster: the promise behind a
region's own ``confirm`` (the holder key on its lease), self-fencing when the lease cannot be
renewed (cut off through the ``control`` fault point, and for real by killing members), and
what one and two members down do to changes. The port's contract is in tests/contracts/."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mrbatch import backends
from mrbatch.config.workspace import Workspace
from mrbatch.errors import UnavailableError
from mrbatch.faults import FaultPoints
from mrbatch.ports import ControlPlane, Routing
from tests.conftest import make_workspace
from tests.etcd_cluster import EtcdCluster
from tests.helpers import eventually


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path / "etcd") as started:
        yield started


@pytest.fixture
def ws(tmp_path: Path, cluster: EtcdCluster) -> Workspace:
    return make_workspace(
        tmp_path / "ws",
        init={"control_plane": "etcd", "etcd_endpoints": cluster.endpoints},
        etcd={"lease_ttl": "1s", "timeout": "1s"},
    )


def _first_confirmation(plane: ControlPlane, region: str, epoch: int, timeout: float) -> float:
    """Ask until ``region`` may publish in ``epoch``; the monotonic time it first could."""

    def ask() -> float | None:
        try:
            return time.monotonic() if plane.confirm(region, epoch) else None
        except UnavailableError:
            return None

    return eventually(ask, timeout, f"{region} to confirm epoch {epoch}")


def test_the_new_region_publishes_only_after_the_old_one_lets_go(ws: Workspace) -> None:
    first, second = ws.regions
    old = backends.open_control_plane(ws, caller=first)  # the region processes' own views
    new = backends.open_control_plane(ws, caller=second)
    operator = backends.open_control_plane(ws)
    assert old.confirm(first, 1)
    promised_until = time.monotonic() + old.inner.promise  # type: ignore[attr-defined]
    operator.switch(second, expected_epoch=1, min_interval=0, phase="FAILOVER")
    assert not new.confirm(second, 2)  # phase FAILOVER: not yet
    operator.set_phase("ACTIVE", expected_epoch=2)
    with pytest.raises(UnavailableError, match="may still act on a confirmation"):
        new.confirm(second, 2)
    assert not old.confirm(first, 1)  # fenced: the old region's own view says no at once
    # The old region's loop keeps reading the routing; it lets go once its promise ran out.
    while time.monotonic() < promised_until + 0.5:
        old.routing()
        time.sleep(0.05)
    assert _first_confirmation(new, second, 2, timeout=5) >= promised_until
    assert new.confirm(second, 2)


def test_a_region_cut_off_fences_itself_and_its_lease_runs_out(ws: Workspace) -> None:
    first, second = ws.regions
    old = backends.open_control_plane(ws, caller=first)
    new = backends.open_control_plane(ws, caller=second)
    operator = backends.open_control_plane(ws)
    old.heartbeat(first, 1, {"state": "active"})
    assert old.confirm(first, 1)
    last_promise = time.monotonic()
    faults = FaultPoints(ws.faults_path)
    with faults.armed("control", region=first):
        with pytest.raises(UnavailableError):
            old.confirm(first, 1)  # cut off: it cannot confirm, so it publishes nothing
        operator.switch(second, expected_epoch=1, min_interval=0)
        allowed = _first_confirmation(new, second, 2, timeout=10)
        # Never while the old region's promise could still hold: its lease had to run out.
        assert allowed >= last_promise + old.inner.promise  # type: ignore[attr-defined]
        assert operator.heartbeats()[first].lease_held is False
    # Back in touch: it sees it is fenced and stays quiet.
    assert not old.confirm(first, 1)
    assert operator.routing().active_region == second


def test_without_quorum_nothing_changes_and_the_active_region_resumes_by_itself(
    ws: Workspace, cluster: EtcdCluster
) -> None:
    first, second = ws.regions
    region = backends.open_control_plane(ws, caller=first)
    operator = backends.open_control_plane(ws)
    assert region.confirm(first, 1)
    cluster.kill(1)
    cluster.kill(2)
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="no quorum: 1 of 3 members answer"):
        operator.switch(second, expected_epoch=1, min_interval=0)
    assert time.monotonic() - started < 5  # refused promptly, not after etcd's own 6 s
    with pytest.raises(UnavailableError, match="no quorum"):
        operator.routing()
    # The active region's lease cannot be renewed: it stops confirming, so it stops publishing.
    eventually(lambda: _refused(region, first), 10, "the region to fence itself")
    cluster.restart(1)
    cluster.restart(2)
    cluster.wait_healthy()
    routing = operator.routing()
    assert (routing.epoch, routing.active_region) == (1, first)  # the refused switch left nothing
    assert [d["epoch"] for d in operator.documents("epoch/").values()] == [1]
    _first_confirmation(region, first, 1, timeout=15)  # and it resumes without an operator


def _refused(plane: ControlPlane, region: str) -> bool:
    try:
        return not plane.confirm(region, 1)
    except UnavailableError:
        return True


def _routing(plane: ControlPlane) -> Routing | None:
    try:
        return plane.routing()
    except UnavailableError:
        return None


def test_with_one_member_down_failover_and_failback_work(
    ws: Workspace, cluster: EtcdCluster
) -> None:
    first, second = ws.regions
    operator = backends.open_control_plane(ws)
    for victim in range(3):  # whichever member it is, the leader included
        cluster.kill(victim)
        # Killing the leader starts an election: reads fail until it is over.
        before = eventually(lambda: _routing(operator), 15, "a leader after the kill")
        epoch = before.epoch
        target = second if before.active_region == first else first
        routing = eventually(
            lambda e=epoch, t=target: _switched(operator, t, e), 15, f"a switch to {target}"
        )
        assert routing.active_region == target and routing.epoch == epoch + 1
        mine = backends.open_control_plane(ws, caller=target)
        _first_confirmation(mine, target, routing.epoch, timeout=10)
        cluster.restart(victim)
        cluster.wait_healthy()
    assert [d["epoch"] for d in operator.documents("epoch/").values()] == [1, 2, 3, 4]


def _switched(plane: ControlPlane, target: str, epoch: int):  # type: ignore[no-untyped-def]
    try:
        return plane.switch(target, expected_epoch=epoch, min_interval=0, force=True)
    except UnavailableError:
        return None  # a leader election after the kill: ask again
