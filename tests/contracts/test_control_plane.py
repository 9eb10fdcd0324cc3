"""The control plane contract (routing control + safety rules), run against every control plane
in :mod:`tests.contracts.backends`."""

from __future__ import annotations

import threading
import time

import pytest

from mrbatch import backends
from mrbatch.config.workspace import Workspace
from mrbatch.errors import ConflictError, SafetyRuleError, UnavailableError, UsageError
from mrbatch.faults import FaultPoints
from mrbatch.ports import ControlPlane, RegionState


def test_initialized_by_init_and_idempotent(
    control: ControlPlane, control_workspace: Workspace
) -> None:
    first, second = control_workspace.regions
    routing = control.routing()
    assert routing.epoch == 1 and routing.active_region == first and routing.phase == "ACTIVE"
    assert routing.regions == {first: RegionState.ACTIVE, second: RegionState.STANDBY}
    again = control.initialize([first, second], second)  # never overrides an existing control
    assert again.active_region == first and again.epoch == 1


def test_confirm(control: ControlPlane, control_workspace: Workspace) -> None:
    first, second = control_workspace.regions
    assert control.confirm(first, 1)
    assert not control.confirm(first, 2)
    assert not control.confirm(second, 1)


def test_switch_fences_the_old_region_and_bumps_the_epoch(
    control: ControlPlane, control_workspace: Workspace
) -> None:
    first, second = control_workspace.regions
    routing = control.switch(second, expected_epoch=1, min_interval=0)
    assert routing.epoch == 2 and routing.active_region == second
    assert routing.regions == {first: RegionState.FENCED, second: RegionState.ACTIVE}
    assert control.confirm(second, 2) and not control.confirm(first, 1)


def test_switch_rules_refuse_and_change_nothing(
    control: ControlPlane, control_workspace: Workspace
) -> None:
    first, second = control_workspace.regions
    with pytest.raises(SafetyRuleError, match="one-active"):
        control.switch(first, expected_epoch=1, min_interval=0)
    with pytest.raises(ConflictError):
        control.switch(second, expected_epoch=7, min_interval=0)
    with pytest.raises(UsageError):
        control.switch("mars-1", expected_epoch=1, min_interval=0)
    routing = control.routing()
    assert routing.epoch == 1 and routing.active_region == first
    # no switch has happened yet, so the anti-flap rule lets the first one through
    assert control.switch(second, expected_epoch=1, min_interval=3600).epoch == 2
    with pytest.raises(SafetyRuleError, match="min-switch-interval"):
        control.switch(first, expected_epoch=2, min_interval=3600)
    assert control.routing().active_region == second
    forced = control.switch(first, expected_epoch=2, min_interval=3600, force=True)
    assert forced.epoch == 3


def test_two_concurrent_switches_one_wins(control_workspace: Workspace) -> None:
    second = control_workspace.regions[1]
    outcomes: list[str] = []
    barrier = threading.Barrier(4, timeout=30)

    def switch() -> None:
        plane = backends.open_control_plane(control_workspace)
        barrier.wait()
        try:
            plane.switch(second, expected_epoch=1, min_interval=0)
            outcomes.append("won")
        except (ConflictError, SafetyRuleError) as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=switch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a switch did not return"
    assert outcomes.count("won") == 1
    assert backends.open_control_plane(control_workspace).routing().epoch == 2


def test_phase_and_region_state(control: ControlPlane, control_workspace: Workspace) -> None:
    first, second = control_workspace.regions
    routing = control.switch(second, expected_epoch=1, min_interval=0, phase="FAILOVER")
    assert routing.phase == "FAILOVER" and not control.confirm(second, 2)
    assert control.set_phase("ACTIVE", expected_epoch=2).phase == "ACTIVE"
    assert control.confirm(second, 2)
    with pytest.raises(ConflictError):
        control.set_phase("ACTIVE", expected_epoch=1)
    assert (
        control.set_region_state(first, RegionState.STANDBY, expected_epoch=2).regions[first]
        == "STANDBY"
    )
    with pytest.raises(SafetyRuleError):
        control.set_region_state(second, RegionState.STANDBY, expected_epoch=2)
    with pytest.raises(SafetyRuleError):
        control.set_region_state(first, RegionState.ACTIVE, expected_epoch=2)


def test_heartbeats_and_documents(control: ControlPlane, control_workspace: Workspace) -> None:
    first = control_workspace.regions[0]
    before = time.time()
    control.heartbeat(first, 123, {"state": "active"})
    beat = control.heartbeats()[first]
    assert beat.pid == 123 and beat.at >= before and beat.info == {"state": "active"}
    control.put_document("plan/1", {"steps": [1]})
    control.put_document("plan/1", {"steps": [1, 2]})
    control.put_document("other", {})
    assert control.documents("plan/") == {"plan/1": {"steps": [1, 2]}}


def test_control_fault_isolates_one_caller(control_workspace: Workspace) -> None:
    first, second = control_workspace.regions
    cut = backends.open_control_plane(control_workspace, caller=first)
    fine = backends.open_control_plane(control_workspace, caller=second)
    with FaultPoints(control_workspace.faults_path).armed("control", region=first):
        with pytest.raises(UnavailableError):
            cut.routing()
        with pytest.raises(UnavailableError):
            cut.confirm(first, 1)
        assert fine.routing().epoch == 1


def test_every_epoch_is_logged_with_its_active_region(
    control: ControlPlane, control_workspace: Workspace
) -> None:
    first, second = control_workspace.regions
    control.switch(second, expected_epoch=1, min_interval=0, plan_id="p-1")
    control.switch(first, expected_epoch=2, min_interval=0, force=True)
    with pytest.raises(ConflictError):
        control.switch(second, expected_epoch=2, min_interval=0)  # refused: not logged
    log = control.documents("epoch/")
    assert [(d["epoch"], d["region"]) for d in log.values()] == [
        (1, first),
        (2, second),
        (3, first),
    ]
    assert log["epoch/00000002"]["plan_id"] == "p-1"
