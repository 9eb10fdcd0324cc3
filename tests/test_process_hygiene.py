"""Nothing is left behind: a region's pool workers die with it, however it dies."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from mrbatch import backends
from mrbatch.runtime import supervisor
from tests.conftest import Deployment
from tests.helpers import eventually


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_pool_workers_die_with_a_region_killed_alone(deployment: Deployment) -> None:
    ws = deployment.ws
    region = ws.regions[0]
    pid = supervisor.pid_of(ws, supervisor.Proc("region", region))
    assert pid is not None

    def workers() -> list[int]:
        beat = backends.open_control_plane(ws).heartbeats().get(region)
        found = [int(p) for p in (beat.info.get("workers") or [])] if beat else []
        return [p for p in found if _alive(p)]

    pool = eventually(workers, 30, "the region's pool workers to start")
    assert len(pool) >= 1
    # SIGKILL of the region's pid alone, as the OOM killer sends it: not its process group.
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: not _alive(pid), 10, "the region process to die")
    eventually(lambda: not any(_alive(p) for p in pool), 10, "its pool workers to die with it")
