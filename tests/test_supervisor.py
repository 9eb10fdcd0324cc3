"""The supervisor keeps a deployment alive: real processes started by `mrbatch up`, killed with
SIGKILL, started again after a pause that grows with each death in a row; `down` leaves
nothing running, even while a restart is in progress."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mrbatch import backends
from mrbatch.config.workspace import Workspace
from mrbatch.errors import ConfigError
from mrbatch.runtime import supervisor
from mrbatch.runtime.restarter import read_state
from tests.conftest import make_workspace
from tests.helpers import daemon_processes, eventually, mrbatch

SUPERVISOR = supervisor.SUPERVISOR


def _up(ws: Workspace) -> None:
    result = mrbatch(ws, "up", "--detach")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started supervisor" in result.stdout


def _down_and_check(ws: Workspace) -> None:
    supervisor.stop(ws)
    leftover = daemon_processes(ws)
    assert not leftover, f"processes outlived the test: {leftover}"


@contextmanager
def supervised(tmp_path: Path, **overrides: object) -> Iterator[Workspace]:
    """A deployment started by `mrbatch up --detach` (the supervisor daemon and its processes),
    stopped and checked for leftovers at the end; ``overrides`` as for ``make_workspace``."""
    ws = make_workspace(tmp_path / "ws", **overrides)
    try:
        _up(ws)
        yield ws
    finally:
        _down_and_check(ws)


def _wide() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}  # the status table without truncated cells


def _status(ws: Workspace) -> dict[str, Any]:
    result = mrbatch(ws, "status", "--json")
    data: dict[str, Any] = json.loads(result.stdout)
    # exit 1 exactly when the verdict finds a problem (a process down, say)
    assert result.returncode == (0 if data["verdict"]["ok"] else 1), result.stderr
    return data


def _record(ws: Workspace, proc: supervisor.Proc) -> dict[str, Any]:
    return read_state(ws).get("processes", {}).get(proc.label, {})  # type: ignore[no-any-return]


def _restarted(ws: Workspace, proc: supervisor.Proc, old: int | None) -> int:
    """Wait until ``proc`` runs again under a new pid that the supervisor has recorded."""

    def new_pid() -> int | None:
        pid = supervisor.pid_of(ws, proc)
        return pid if pid not in (None, old) and _record(ws, proc).get("pid") == pid else None

    return eventually(new_pid, 60, f"{proc.label} to be started again")


def _passes(ws: Workspace, more: int) -> None:
    """Wait until the supervisor has made ``more`` passes over the processes."""
    target = int(read_state(ws).get("passes", 0)) + more
    eventually(lambda: int(read_state(ws).get("passes", 0)) >= target, 30, f"{more} passes")


def test_a_killed_region_comes_back_with_a_new_pid(tmp_path: Path) -> None:
    with supervised(tmp_path, supervisor={"restart_backoff": "200ms"}) as ws:
        region, other = ws.regions
        proc = supervisor.Proc("region", region)
        old = supervisor.kill(ws, proc)
        assert old is not None
        new = _restarted(ws, proc, old)
        # the new process really runs the region: it heartbeats under its own pid
        eventually(
            lambda: (
                (b := backends.open_control_plane(ws).heartbeats().get(region)) and b.pid == new
            ),
            30,
            "a heartbeat from the restarted region",
        )
        status = _status(ws)
        entry = status["regions"][region]
        assert entry["pid"] == new and entry["alive"] and entry["restarts"] == 1
        assert entry["replicator_restarts"] == 0 and status["regions"][other]["restarts"] == 0
        assert status["gateway"]["restarts"] == 0
        keeper = status["supervisor"]
        assert keeper["alive"] and keeper["pid"] == supervisor.pid_of(ws, SUPERVISOR)
        record = keeper["processes"][f"region:{region}"]
        assert record["last_exit"] == "killed by SIGKILL" and record["exit_signal"] == "SIGKILL"
        assert record["died_at"] <= record["restarted_at"] and record["next_due"] is None
        # the human table shows the restart too
        table = mrbatch(ws, "status", env=_wide()).stdout
        header = next(line for line in table.splitlines() if line.startswith("region "))
        row = next(line for line in table.splitlines() if line.startswith(f"{region} "))
        # piped: plain columns, two spaces apart, nothing cut
        cells = dict(zip(re.split(r"\s{2,}", header), re.split(r"\s{2,}", row), strict=True))
        assert cells["restarts"] == "1", table
        assert "restarts" in table and f"supervisor pid {keeper['pid']}" in table
        down = mrbatch(ws, "down")
        assert down.returncode == 0 and down.stdout.startswith("stopped supervisor, "), down.stdout


def test_a_region_killed_alone_takes_its_pool_workers_with_it(tmp_path: Path) -> None:
    # The OOM killer picks one process: the region's, not its pool workers. The supervisor
    # kills what is left of the dead region's process group before starting it again, so the
    # old workers do not run on beside the new region's.
    with supervised(tmp_path, supervisor={"restart_backoff": "200ms"}) as ws:
        region = ws.regions[0]
        proc = supervisor.Proc("region", region)
        pid = supervisor.pid_of(ws, proc)
        assert pid is not None

        def workers() -> list[int]:
            beat = backends.open_control_plane(ws).heartbeats().get(region)
            return list(beat.info.get("workers") or []) if beat and beat.pid == pid else []

        old_workers = eventually(workers, 30, "the region's pool workers")
        assert all(_ours(ws, w) or Path(f"/proc/{w}").exists() for w in old_workers)
        os.kill(pid, signal.SIGKILL)  # the region alone, not its group
        _restarted(ws, proc, pid)
        assert _record(ws, proc)["exit_signal"] == "SIGKILL"
        eventually(
            lambda: not [w for w in old_workers if _alive(w)], 10, "the old workers to be gone"
        )


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_the_pause_grows_with_each_death_in_a_row_and_resets_once_stable(tmp_path: Path) -> None:
    with supervised(tmp_path, supervisor={"restart_backoff": "400ms", "stable_after": "3s"}) as ws:
        proc = supervisor.Proc("region", ws.regions[1])
        base, jitter = 0.4, 0.2

        # the record keeps the pause rounded to the millisecond: bounds allow that rounding
        def within(pause: float, expected: float) -> bool:
            return expected * (1 - jitter) - 5e-4 <= pause <= expected * (1 + jitter) + 5e-4

        pauses = []
        pid = supervisor.pid_of(ws, proc)
        for death in (1, 2, 3):
            assert supervisor.kill(ws, proc) == pid
            pid = _restarted(ws, proc, pid)
            record = _record(ws, proc)
            assert record["deaths"] == death and record["restarts"] == death
            expected = base * 2 ** (death - 1)
            assert within(record["pause"], expected), record
            pauses.append(record["pause"])
        assert pauses == sorted(pauses) and len(set(pauses)) == 3, pauses
        # the restart was due when recorded (the pause after the death), and happened then
        state = _status(ws)["supervisor"]["processes"][proc.label]
        assert state["restarted_at"] - state["died_at"] >= state["pause"] - 0.01
        # stable_after up: the next death pauses the base again
        eventually(lambda: _record(ws, proc)["deaths"] == 0, 15, "the death count to reset")
        assert supervisor.kill(ws, proc) == pid
        due = eventually(
            lambda: (r := _record(ws, proc)).get("next_due") and r, 30, "the next restart to be due"
        )
        assert due["deaths"] == 1 and within(due["pause"], base), due
        assert abs(due["next_due"] - due["died_at"] - due["pause"]) < 0.01
        _restarted(ws, proc, pid)
        assert _record(ws, proc)["restarts"] == 4


def test_a_killed_fenced_region_comes_back_fenced(tmp_path: Path) -> None:
    with supervised(
        tmp_path,
        supervisor={"restart_backoff": "200ms"},
        failover={"min_switch_interval": "1s", "max_wait": "10s"},
    ) as ws:
        old, new = ws.regions
        result = mrbatch(ws, "failover", "--yes", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        control = backends.open_control_plane(ws)
        assert control.routing().active_region == new
        proc = supervisor.Proc("region", old)
        killed = supervisor.kill(ws, proc)
        since = time.time()
        pid = _restarted(ws, proc, killed)

        def fenced_beat() -> bool:
            beat = control.heartbeats().get(old)
            return bool(
                beat and beat.pid == pid and beat.at >= since and beat.info["state"] == "fenced"
            )

        eventually(fenced_beat, 30, "the restarted region to report itself fenced")
        entry = _status(ws)["regions"][old]
        assert entry["state"] == "FENCED" and entry["restarts"] == 1 and entry["pid"] == pid
        assert control.routing().active_region == new


def test_down_while_restarts_are_in_progress_leaves_nothing_running(tmp_path: Path) -> None:
    with supervised(tmp_path, supervisor={"restart_backoff": "0s", "poll_interval": "20ms"}) as ws:
        keeper = supervisor.pid_of(ws, SUPERVISOR)
        assert keeper is not None
        seen: set[int] = {keeper}

        def kill_everything() -> None:
            for proc, pid in supervisor.running(ws).items():
                if pid is not None:
                    seen.add(pid)
                    supervisor.kill(ws, proc)

        def restarts() -> int:
            return sum(r["restarts"] for r in read_state(ws)["processes"].values())

        while restarts() < 10:  # the supervisor restarts whatever dies, over and over
            kill_everything()
            time.sleep(0.01)
        kill_everything()
        # Stopped at once, in this process (`down` is this call plus printing; no interpreter
        # start-up in between): the SIGTERM reaches the supervisor while it notices the deaths
        # and spawns their replacements.
        stopped = supervisor.stop(ws)
        assert stopped[0] == SUPERVISOR, stopped
        seen.update(r["pid"] for r in read_state(ws)["processes"].values() if r["pid"])
        assert read_state(ws)["running"] is False  # it exited through its own shutdown
        assert supervisor.pid_of(ws, SUPERVISOR) is None
        assert all(pid is None for pid in supervisor.running(ws).values())
        still = daemon_processes(ws)
        assert not still, f"left running after down: {still}"
        assert not [p for p in seen if _ours(ws, p)], "a recorded pid still runs"
        assert "nothing was running" in mrbatch(ws, "down").stdout


def _ours(ws: Workspace, pid: int) -> bool:
    try:
        return str(ws.config_path) in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


def test_restart_off_leaves_a_dead_process_dead(tmp_path: Path) -> None:
    with supervised(tmp_path, supervisor={"restart": False, "poll_interval": "100ms"}) as ws:
        proc = supervisor.Proc("region", ws.regions[1])
        supervisor.kill(ws, proc)
        eventually(lambda: _record(ws, proc).get("died_at"), 30, "the supervisor to see the death")
        _passes(ws, 10)  # ten more looks at it, and it was not started again
        assert supervisor.pid_of(ws, proc) is None
        status = _status(ws)
        entry = status["regions"][proc.name]
        assert entry["alive"] is False and entry["pid"] is None and entry["restarts"] == 0
        assert status["supervisor"]["alive"] and status["supervisor"]["restart"] is False
        record = status["supervisor"]["processes"][proc.label]
        assert record["last_exit"] == "killed by SIGKILL" and record["next_due"] is None, record
        table = " ".join(mrbatch(ws, "status", env=_wide()).stdout.split())
        assert "(stays down)" in table and "restart off" in table
        # a second `up` says it is running and starts only what is missing
        again = mrbatch(ws, "up", "--detach")
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout
        assert f"started {proc.label}" in again.stdout and "started gateway" not in again.stdout
        assert supervisor.pid_of(ws, proc) is not None
        assert _status(ws)["regions"][proc.name]["restarts"] == 0  # not a restart of the supervisor


def _restore(
    ws: Workspace, proc: supervisor.Proc, gate: threading.Barrier, into: list[Any]
) -> None:
    gate.wait()
    into.append(supervisor.start(ws, only=[proc])[proc])


def test_concurrent_starts_never_start_two_processes_for_one_role(tmp_path: Path) -> None:
    with supervised(tmp_path, supervisor={"restart_backoff": "0s", "poll_interval": "20ms"}) as ws:
        proc = supervisor.Proc("replicator", ws.regions[0])
        for _ in range(5):
            # four restorers (a chaos experiment's, say) race the supervisor the moment it dies
            gate = threading.Barrier(5, timeout=30)
            results: list[tuple[int, bool]] = []
            threads = [
                threading.Thread(target=_restore, args=(ws, proc, gate, results)) for _ in range(4)
            ]
            for thread in threads:
                thread.start()
            supervisor.kill(ws, proc)
            gate.wait()
            for thread in threads:
                thread.join(timeout=60)
            assert not any(t.is_alive() for t in threads), "a restorer did not return"
            assert len({pid for pid, _ in results}) == 1, results
            assert sum(new for _, new in results) <= 1, results
            _passes(ws, 3)  # the supervisor has looked again, and adopted rather than started
            assert supervisor.pid_of(ws, proc) == results[0][0]
            cmds = daemon_processes(ws).values()
            assert len([c for c in cmds if f"replicator {proc.name} " in c]) == 1, cmds


def test_up_in_the_foreground_supervises_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", supervisor={"restart_backoff": "200ms"})
    cli = subprocess.Popen(
        [sys.executable, "-m", "mrbatch.cli.main", "up"],
        cwd=ws.root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        eventually(
            lambda: (
                supervisor.pid_of(ws, SUPERVISOR) == cli.pid
                and all(supervisor.running(ws).values())
                and read_state(ws).get("passes", 0) > 0
            ),
            60,
            "the foreground `up` to supervise",
        )
        proc = supervisor.Proc("gateway", "gateway")
        old = supervisor.kill(ws, proc)
        _restarted(ws, proc, old)
        assert _record(ws, proc)["restarts"] == 1
        cli.send_signal(signal.SIGINT)
        output, _ = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(timeout=10)
        _down_and_check(ws)
    assert cli.returncode == 0, output
    assert f"stopped {len(supervisor.expected(ws))} process(es)".encode() in output, output
    assert all(pid is None for pid in supervisor.running(ws).values())
    assert supervisor.pid_of(ws, SUPERVISOR) is None


@pytest.mark.parametrize(
    ("values", "key", "words"),
    [
        ({"restart": "maybe"}, "supervisor.restart", "boolean"),
        ({"restart_backoff": "soon"}, "supervisor.restart_backoff", "not a duration"),
        (
            {"restart_backoff": "5s", "restart_max_backoff": "1s"},
            "supervisor.restart_max_backoff",
            "shorter than restart_backoff",
        ),
        ({"stable_after": -1}, "supervisor.stable_after", "negative"),
        ({"poll_interval": 0}, "supervisor.poll_interval", "greater than 0"),
        ({"restrat": True}, "supervisor.restrat", "unknown key"),
    ],
)
def test_a_bad_supervisor_value_fails_at_load_naming_the_key(
    tmp_path: Path, values: dict[str, object], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_workspace(tmp_path / "ws", supervisor=values)
    assert f": {key}: " in caught.value.message and words in caught.value.message
    result = mrbatch(tmp_path / "ws", "status")
    assert result.returncode == 2 and key in result.stderr


def test_a_service_is_started_restarted_and_stopped_with_the_deployment(tmp_path: Path) -> None:
    """[services.<name>]: `up` starts the workspace's own program, the supervisor restarts it
    when it dies, `down` stops it (checked for leftovers with the rest)."""
    sleeper = {"command": [sys.executable, "-c", "import time; time.sleep(600)"]}
    with supervised(
        tmp_path, supervisor={"restart_backoff": "200ms"}, **{"services.sleeper": sleeper}
    ) as ws:
        proc = supervisor.Proc("service", "sleeper")
        old = supervisor.pid_of(ws, proc)
        assert old is not None, "up did not start the service"
        assert (ws.log_dir / "service-sleeper.log").exists()
        supervisor.kill(ws, proc)
        assert _restarted(ws, proc, old) != old
