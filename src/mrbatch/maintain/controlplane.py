"""Putting back a control plane from a backup's snapshot, through the port alone.

The control plane is shared by every region, so a restore of one region never touches it when
it is initialized. Only when it is not (its storage was lost too) is it rebuilt from the newest
snapshot in the target: the epoch must come back at least as high as any epoch written into the
data, or the active region's writes would be refused as stale.

The port has no "set the epoch" (epochs only grow, by a switch). So the routing is rebuilt the
way it was built: ``initialize`` (epoch 1), then switches alternating between the snapshot's
active region and another one, forced (the anti-flap interval is a rule for operators, not for
replaying history), ending at the snapshot's epoch with its active region, phase and region
states. Then every document (epoch log, plan log) is written back, replacing the epoch-log
entries the replayed switches wrote with the real ones.
"""

from __future__ import annotations

from typing import Any

from ..config.workspace import Workspace
from ..errors import MrbatchError, NotFoundError
from ..ports import ControlPlane, RegionState

__all__ = ["restore_control"]


def restore_control(
    ws: Workspace, control: ControlPlane, snapshot: dict[str, Any] | None
) -> tuple[str, int | None]:
    """Rebuild ``control`` from ``snapshot`` if it is not initialized. Returns what was done,
    in words, and the epoch it is at (None when it could not be read)."""
    try:
        routing = control.routing()
    except NotFoundError:
        pass
    except MrbatchError as exc:
        return f"not checked: {exc}", None
    else:
        return (
            f"kept: initialized at epoch {routing.epoch}, {routing.active_region} active"
            " (shared by every region: a restore never overwrites it)",
            routing.epoch,
        )
    if snapshot is None:
        return "not initialized, and no backup holds a snapshot (`mrbatch up` makes one)", None
    saved = snapshot["routing"]
    epoch, active = int(saved["epoch"]), str(saved["active_region"])
    regions = ws.regions
    if active not in regions:
        return f"not restored: the snapshot's active region {active!r} is not configured", None
    other = next((r for r in regions if r != active), None)
    note = ""
    if other is None and epoch > 1:
        epoch, note = 1, f" (one region: epoch 1, not {saved['epoch']})"

    def holder(n: int) -> str:  # who is active at epoch n so that epoch `epoch` is `active`
        return active if (epoch - n) % 2 == 0 or other is None else other

    control.initialize(regions, holder(1))
    for n in range(2, epoch + 1):
        phase = str(saved.get("phase", "ACTIVE")) if n == epoch else "ACTIVE"
        control.switch(holder(n), expected_epoch=n - 1, min_interval=0, force=True, phase=phase)
    for name, state in dict(saved.get("regions", {})).items():
        if (
            name in regions
            and name != active
            and state in (RegionState.STANDBY, RegionState.FENCED)
        ):
            control.set_region_state(name, state, expected_epoch=epoch)
    for name, body in dict(snapshot.get("documents", {})).items():
        control.put_document(name, body)
    return f"restored from the snapshot: epoch {epoch}, {active} active{note}", epoch
