"""Small helpers for tests that drive a deployment."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import NoReturn, TypeVar

from mrbatch import backends
from mrbatch.access.accesspoint import AccessPoint
from mrbatch.config.workspace import Workspace
from mrbatch.model.keys import run_id_for
from mrbatch.model.records import FileRun
from mrbatch.observe import views
from mrbatch.ports import ObjectInfo

T = TypeVar("T")


def eventually(check: Callable[[], T | None], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def loop_passes(ws: Workspace, region: str, passes: int = 20, timeout: float = 30.0) -> None:
    """Wait until ``region``'s process has run ``passes`` more passes of its loop (as its
    heartbeats report them): the observable event after which something that did not
    happen will not happen, without guessing a sleep."""

    def ticks() -> int:
        beat = backends.open_control_plane(ws).heartbeats().get(region)
        return int(beat.info.get("ticks", 0)) if beat is not None else 0

    target = ticks() + passes
    eventually(lambda: ticks() >= target, timeout, f"{passes} more loop passes of {region}")


def drained(ws: Workspace, timeout: float = 30.0) -> None:
    """Wait until replication has nothing left to copy between any two regions."""
    from mrbatch.runtime.replication import backlog

    def empty() -> bool:
        return all(backlog(ws, a, b).total == 0 for a in ws.regions for b in ws.regions if a != b)

    eventually(empty, timeout, "the replication backlog to drain")


def put(ws: Workspace, key: str, data: bytes, region: str | None = None) -> ObjectInfo:
    return AccessPoint(ws).put(key, data, region=region).info


def run_of(ws: Workspace, key: str, sha256: str) -> FileRun | None:
    wanted = run_id_for(key, sha256)
    return next((r for r in views.all_runs(ws) if r.run_id == wanted), None)


def finished(ws: Workspace, info: ObjectInfo, timeout: float = 90.0) -> FileRun:
    def done() -> FileRun | None:
        run = run_of(ws, info.key, info.sha256)
        return run if run is not None and run.status.terminal else None

    return eventually(done, timeout, f"the run of {info.key} to finish")


def mails(ws: Workspace) -> list[Message]:
    if not ws.outbox_dir.exists():
        return []
    return [message_from_bytes(p.read_bytes()) for p in sorted(ws.outbox_dir.glob("*.eml"))]


def mail_link(message: Message) -> str:
    body = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
    return next(line for line in body.splitlines() if line.startswith("http"))


# The longest a command of the test suite may take by default; longer ones say so (demo).
CLI_TIMEOUT = 90.0


def mrbatch(
    where: Workspace | Path,
    *args: str,
    timeout: float = CLI_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real command line (a new process) in a workspace (or any directory).

    Never waits without a bound, and a command that does not finish names itself and where it
    was: it runs with no terminal on stdin (a prompt cannot wait for a person), in a process
    group of its own, with faulthandler on; after ``timeout`` it is sent SIGABRT, which makes
    Python print every thread's stack, and the test fails with that stack. A command that
    exited while a process it started still holds its stdout or stderr open is a failure too
    (that is how a leaked child makes a test wait for ever)."""
    environment = dict(env if env is not None else os.environ)
    environment.setdefault("PYTHONFAULTHANDLER", "1")
    command = [sys.executable, "-m", "mrbatch.cli.main", *args]
    proc = subprocess.Popen(
        command,
        cwd=where.root if isinstance(where, Workspace) else where,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _abort(proc, args, timeout)
    except BaseException:  # the test's own timeout, Ctrl-C: the command goes with it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)
        raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _abort(proc: subprocess.Popen[str], args: tuple[str, ...], timeout: float) -> NoReturn:
    """Stop a command that overran its bound and fail with where it was."""
    exited = proc.poll() is not None
    if not exited:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGABRT)  # faulthandler: every thread's stack
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out, err = "", "(its output could not be read: something still holds it)"
    what = "mrbatch " + " ".join(args)
    if exited:
        raise AssertionError(
            f"`{what}` exited ({proc.returncode}) but a process it started kept its"
            f" output open for {timeout:.0f}s\nstdout: {out[-2000:]}\nstderr: {err[-4000:]}"
        ) from None
    raise AssertionError(
        f"`{what}` did not finish within {timeout:.0f}s; where its threads were:\n"
        f"{err[-8000:]}\nstdout: {out[-2000:]}"
    ) from None


def daemon_processes(ws: Workspace) -> dict[int, str]:
    """Every ``mrbatch.runtime.daemon`` process of this workspace that still runs (pid ->
    command line), found by scanning /proc rather than trusting any pid file."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        words = [a.decode(errors="replace") for a in argv if a]
        if "mrbatch.runtime.daemon" in words and str(ws.config_path) in words:
            found[int(entry.name)] = " ".join(words)
    return found
