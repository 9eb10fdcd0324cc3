"""Shared fixtures: workspaces in temporary directories and deployments of real processes.

Every process a test starts is stopped by the test (by the pid it recorded), and the session
fails loudly if a region, replicator or gateway process outlives its test."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mrbatch.config.initialize import init_workspace
from mrbatch.config.workspace import Workspace
from mrbatch.runtime import supervisor


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_workspace(
    root: Path, *, init: dict[str, Any] | None = None, **overrides: object
) -> Workspace:
    """A fresh workspace; ``init`` are options of ``mrbatch init`` (``control_plane``,
    ``etcd_endpoints``...); ``overrides`` are TOML lines appended per section, e.g.
    ``pipeline={"chunk_rows": 500}``."""
    chunk_rows = int(overrides.pop("chunk_rows", 2_500))  # type: ignore[call-overload]
    ws = init_workspace(root, port=free_port(), chunk_rows=chunk_rows, **(init or {}))
    if overrides:
        text = ws.config_path.read_text()
        for section, values in overrides.items():
            assert isinstance(values, dict)
            for key, value in values.items():
                text = _set(text, section, key, value)
        ws.config_path.write_text(text)
        ws = Workspace.load(ws.config_path)
    return ws


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def _set(text: str, section: str, key: str, value: object) -> str:
    """Set ``key`` in ``[section]`` of the TOML text written by init (replace or add)."""
    lines = text.splitlines()
    header = f"[{section}]"
    if header not in lines:  # a section init does not write: add it
        lines += ["", header]
    start = lines.index(header)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    for i in range(start + 1, end):
        stripped = lines[i].lstrip("# ")
        if stripped.startswith(f"{key} ") or stripped.startswith(f"{key}="):
            lines[i] = f"{key} = {_toml(value)}"
            return "\n".join(lines) + "\n"
    lines.insert(start + 1, f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session", autouse=True)
def _shared_servers() -> Iterator[None]:
    """Servers several tests share (the contract suites' etcd cluster, the S3/DynamoDB test
    server of tests/moto_server.py), each started on first use, stop with the session, before
    it checks that nothing it started outlived it."""
    yield
    from tests.etcd_cluster import stop_shared_cluster
    from tests.moto_server import stop_shared

    try:
        stop_shared_cluster()
    finally:
        stop_shared()


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


class Deployment:
    """Real region, replicator and gateway processes for one workspace."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def up(self) -> None:
        from mrbatch.cli.deploy import wait_until_up

        if all(supervisor.running(self.ws).values()):
            return  # already up (started by a helper before entering the context)
        since = time.time()
        supervisor.start(self.ws)
        wait_until_up(self.ws, since, timeout=60)

    def down(self) -> None:
        supervisor.stop(self.ws)

    def kill_region(self, region: str) -> int | None:
        return supervisor.kill(self.ws, supervisor.Proc("region", region))

    def __enter__(self) -> Deployment:
        self.up()
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self.down()
        leftover = {p.label: pid for p, pid in supervisor.running(self.ws).items() if pid}
        if kind is None:  # do not hide the test's own failure behind this one
            assert not leftover, f"processes outlived the test: {leftover}"


@pytest.fixture
def deployment(workspace: Workspace) -> Iterator[Deployment]:
    with Deployment(workspace) as dep:
        yield dep


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak", action="store_true", default=False, help="also run the long soak tests"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="a long soak run: pass --soak to run it")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


# --------------------------------------------------------------------------- nothing left behind
# Every process the session starts (regions, replicators, gateways, pool workers, servers)
# inherits this marker; whatever still carries it when the session ends outlived its test.
SESSION_MARKER = f"MRBATCH_TEST_SESSION={uuid.uuid4().hex}"
os.environ["MRBATCH_TEST_SESSION"] = SESSION_MARKER.split("=", 1)[1]


def _marked_processes() -> dict[int, str]:
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if SESSION_MARKER.encode() not in environ or fields[0] == "Z":
            continue
        if int(fields[1]) == os.getpid() and "multiprocessing.resource_tracker" in cmdline:
            continue  # this process's own tracker (pool tests): it ends when pytest does
        found[int(entry.name)] = cmdline.strip()[:160]
    return found


# --------------------------------------------------------------------------- stopped, not killed
# A session sent SIGTERM (a CI job cancelled, a `timeout`) ends as one interrupted with Ctrl-C:
# the test's `with Deployment(...)` blocks and every fixture's teardown run, and so does the
# check above, so the regions, replicators, gateways and servers it started stop with it
# instead of running on detached (tests/test_process_hygiene.py).
def _terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
    raise KeyboardInterrupt(f"signal {signum}")


if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _terminated)


# --------------------------------------------------------------------------- no hang goes unnamed
# pytest-timeout (pyproject: a bound per test, the "signal" method) fails a test that runs too
# long with every thread's stack, and the session goes on (its teardown stops what it started).
# Should a test block where that signal cannot reach (a C call that never returns), this
# watchdog ends the session a little later instead of letting it wait for ever: it names the
# test, prints every thread's stack, kills every process the session started and exits.
WATCHDOG_GRACE = float(os.environ.get("MRBATCH_WATCHDOG_GRACE", "30"))


def _limit(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    return float(item.config.getini("timeout") or 0)


def _watchdog(item: pytest.Item, after: float) -> None:
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:  # what follows must reach the real stderr, not a capture file
        with contextlib.suppress(Exception):
            capture.suspend_global_capture(in_=True)
    sys.stderr.write(
        f"\nWATCHDOG: {item.nodeid} is still running {after:.0f}s after it started (its"
        " timeout did not stop it); every thread's stack:\n"
    )
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    for pid in _marked_processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    sys.stderr.write("WATCHDOG: killed the session's processes; exiting\n")
    sys.stderr.flush()
    os._exit(3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    limit = _limit(item)
    timer = None
    if limit > 0:
        after = limit + WATCHDOG_GRACE
        timer = threading.Timer(after, _watchdog, args=(item, after))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.pluginmanager.hasplugin("dsession"):
        # pytest-xdist's controller starts no process of its own but its workers, which carry
        # its marker; each worker checks what its own tests started (their marker) itself.
        return
    deadline = time.monotonic() + 10  # processes being stopped right now get time to go
    leftovers = _marked_processes()
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.2)
        leftovers = _marked_processes()
    if not leftovers:
        return
    for pid in leftovers:  # ours by the marker: end them so they do not outlive the run
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    lines = "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in sorted(leftovers.items()))
    sys.stderr.write(f"\nprocesses started by the tests outlived them:\n{lines}\n")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
