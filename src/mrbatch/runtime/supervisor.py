"""Starting and stopping a deployment's processes: one per region, one replicator per region
and the gateway. Each runs in its own session (process group) with a pid file under
``<data_dir>/run/`` and a log under ``<data_dir>/logs/``. A process is only ever signalled by
the pid recorded in its file, and only if that pid still belongs to the process we started (its
start time is recorded too, so a recycled pid is never killed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..config.workspace import Workspace

__all__ = ["Proc", "expected", "kill", "log_file", "pid_of", "running", "start", "stop"]

# Children started by this process, polled so that they never linger as zombies.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Proc:
    kind: str  # region | replicator | gateway
    name: str

    @property
    def label(self) -> str:
        return self.kind if self.kind == "gateway" else f"{self.kind}:{self.name}"

    @property
    def stem(self) -> str:
        return self.kind if self.kind == "gateway" else f"{self.kind}-{self.name}"


def expected(ws: Workspace) -> list[Proc]:
    procs = [Proc("region", r) for r in ws.regions]
    procs += [Proc("replicator", r) for r in ws.regions]
    procs.append(Proc("gateway", "gateway"))
    return procs


def _pid_file(ws: Workspace, proc: Proc) -> Path:
    return ws.run_dir / f"{proc.stem}.pid"


def log_file(ws: Workspace, proc: Proc) -> Path:
    return ws.log_dir / f"{proc.stem}.log"


def _start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after its ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None  # a zombie is not running
    return int(fields[19])


def pid_of(ws: Workspace, proc: Proc) -> int | None:
    """The pid of ``proc`` if the process we started is still running."""
    try:
        data = json.loads(_pid_file(ws, proc).read_text())
    except (OSError, ValueError):
        return None
    pid = int(data.get("pid", 0))
    if pid <= 0 or _start_time(pid) != data.get("start_time"):
        return None
    return pid


def running(ws: Workspace) -> dict[Proc, int | None]:
    return {proc: pid_of(ws, proc) for proc in expected(ws)}


def _private_file(path: Path, flags: int) -> int:
    """Open ``path`` 0600 whatever the caller's umask (logs and pid files are private too)."""
    return os.open(path, flags | os.O_CREAT, 0o600)


def _spawn(ws: Workspace, proc: Proc) -> int:
    ws.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ws.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "mrbatch.runtime.daemon",
        proc.kind,
        proc.name,
        "--config",
        str(ws.config_path),
    ]
    with os.fdopen(_private_file(log_file(ws, proc), os.O_WRONLY | os.O_APPEND), "ab") as log:
        child = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ws.root,
        )
    _children[child.pid] = child
    record = {
        "pid": child.pid,
        "start_time": _start_time(child.pid),
        "cmd": cmd,
        "started_at": time.time(),
    }
    tmp = _pid_file(ws, proc).with_suffix(".tmp")
    with os.fdopen(_private_file(tmp, os.O_WRONLY | os.O_TRUNC), "w") as handle:
        handle.write(json.dumps(record))
    os.replace(tmp, _pid_file(ws, proc))
    return child.pid


def start(ws: Workspace, only: list[Proc] | None = None) -> dict[Proc, tuple[int, bool]]:
    """Start every expected process that is not running; returns pid and whether it was
    started now (False: it was already running)."""
    result: dict[Proc, tuple[int, bool]] = {}
    for proc in only or expected(ws):
        pid = pid_of(ws, proc)
        if pid is not None:
            result[proc] = (pid, False)
        else:
            result[proc] = (_spawn(ws, proc), True)
    return result


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the group we created with start_new_session
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def stop(ws: Workspace, only: list[Proc] | None = None, *, timeout: float = 15.0) -> list[Proc]:
    """Stop our processes (SIGTERM, then SIGKILL after ``timeout``); returns those stopped."""
    targets = {proc: pid_of(ws, proc) for proc in only or expected(ws)}
    alive = {proc: pid for proc, pid in targets.items() if pid is not None}
    for pid in alive.values():
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_start_time(pid) for pid in alive.values()):
        _reap()
        time.sleep(0.05)
    for pid in alive.values():
        if _start_time(pid) is not None:
            _signal_group(pid, signal.SIGKILL)
    for proc in targets:
        _pid_file(ws, proc).unlink(missing_ok=True)
    _reap()
    return list(alive)


def kill(ws: Workspace, proc: Proc) -> int | None:
    """SIGKILL one of our processes and its group at once (tests and chaos: a crash)."""
    pid = pid_of(ws, proc)
    if pid is not None:
        _signal_group(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _start_time(pid) is not None and time.monotonic() < deadline:
            _reap()
            time.sleep(0.01)
    return pid


def _reap() -> None:
    """Collect exited processes this process started, so they do not linger as zombies."""
    for pid, child in list(_children.items()):
        if child.poll() is not None:
            del _children[pid]
