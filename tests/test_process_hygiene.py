"""Nothing is left behind: a region's pool workers die with it, however it dies. And nothing
waits for ever: a command or a test that hangs fails fast and says where it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mrbatch import backends
from mrbatch.config.workspace import Workspace
from mrbatch.runtime import supervisor
from tests.conftest import Deployment
from tests.helpers import eventually, mrbatch


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


def test_a_command_that_hangs_fails_fast_and_says_where(workspace: Workspace) -> None:
    # `watch` runs until Ctrl-C: as a command that never returns would.
    with pytest.raises(AssertionError) as caught:
        mrbatch(workspace, "watch", timeout=8)
    text = str(caught.value)
    assert "`mrbatch watch` did not finish within 8s; where its threads were:" in text
    assert "most recent call first" in text and "watch.py" in text, text


def test_a_test_that_blocks_the_timeout_signal_ends_the_session(tmp_path: Path) -> None:
    blocked = tmp_path / "test_blocked.py"
    blocked.write_text(
        textwrap.dedent(
            """
            import signal, time
            import pytest

            @pytest.mark.timeout(1)
            def test_stuck_where_no_signal_reaches():
                signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
                time.sleep(60)
            """
        )
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(blocked)],
        cwd=root, env={**os.environ, "MRBATCH_WATCHDOG_GRACE": "1"}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    assert "WATCHDOG: test_blocked.py::test_stuck_where_no_signal_reaches" in result.stderr
    assert "time.sleep(60)" in result.stderr or "test_blocked.py" in result.stderr


def test_a_session_sent_sigterm_stops_what_its_tests_started(tmp_path: Path) -> None:
    marker = tmp_path / "workspace.txt"
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        textwrap.dedent(
            f"""
            import time
            from pathlib import Path
            from tests.conftest import Deployment, make_workspace

            def test_up_and_waiting(tmp_path):
                ws = make_workspace(tmp_path / "ws")
                with Deployment(ws):
                    Path({str(marker)!r}).write_text(str(ws.config_path))
                    time.sleep(110)
            """
        )
    )
    root = Path(__file__).resolve().parents[1]
    inner = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", "-p", "no:cacheprovider",
         "-p", "no:xdist", "--rootdir", str(tmp_path), str(probe)],
        cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    ws: Workspace | None = None
    try:
        eventually(marker.exists, 90, "the probe's deployment to be up")
        ws = Workspace.load(Path(marker.read_text()))
        started = {p: pid for p, pid in supervisor.running(ws).items() if pid}
        assert started, "the probe started nothing"
        inner.send_signal(signal.SIGTERM)
        output, _ = inner.communicate(timeout=60)
        assert inner.returncode == 2, output  # interrupted, as by Ctrl-C
        assert not any(_alive(pid) for pid in started.values()), (started, output)
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait()
        if ws is not None:  # should the probe have left them, they stop with this test
            supervisor.stop(ws)
