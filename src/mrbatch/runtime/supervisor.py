"""Starting and stopping a deployment's processes: one per region, one replicator per region
and the gateway. Each runs in its own session (process group) with a pid file under
``<data_dir>/run/`` and a log under ``<data_dir>/logs/``. A process is only ever signalled by
the pid recorded in its file, and only if that pid still belongs to the process we started (its
start time is recorded too, so a recycled pid is never killed).

The process that restarts the others when they die (``runtime.restarter``: the supervisor
daemon, or ``mrbatch up`` in the foreground) records itself the same way, as ``SUPERVISOR``.
Every start checks and spawns under one file lock, so the supervisor and a chaos experiment
restoring a process at the same moment never start two processes for one role. ``stop`` of the
whole deployment stops the supervisor first, so nothing is started again behind it."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..config.workspace import Workspace

__all__ = [
    "SUPERVISOR",
    "Proc",
    "claim_supervisor",
    "exit_status",
    "expected",
    "kill",
    "log_file",
    "pid_of",
    "reap",
    "release_supervisor",
    "running",
    "start",
    "stop",
]

# Children started by this process, polled so that they never linger as zombies; the exit
# status of those collected, until exit_status() hands it out.
_children: dict[int, subprocess.Popen[bytes]] = {}
_exited: dict[int, int] = {}
# How long `stop` waits for the supervisor to finish a spawn in progress and exit.
SUPERVISOR_STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Proc:
    kind: str  # region | replicator | gateway | commands | supervisor | service
    name: str

    @property
    def singleton(self) -> bool:
        # one per deployment, named after its kind
        return self.kind in ("gateway", "commands", "supervisor")

    @property
    def label(self) -> str:
        return self.kind if self.singleton else f"{self.kind}:{self.name}"

    @property
    def stem(self) -> str:
        return self.kind if self.singleton else f"{self.kind}-{self.name}"


SUPERVISOR = Proc("supervisor", "supervisor")


def expected(ws: Workspace) -> list[Proc]:
    procs = [Proc("region", r) for r in ws.regions]
    procs += [Proc("replicator", r) for r in ws.regions]
    procs.append(Proc("gateway", "gateway"))
    procs.append(Proc("commands", "commands"))  # runs the quick commands (runtime/commands.py)
    procs += [Proc("service", name) for name in ws.config.services]
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


def _recorded(ws: Workspace, proc: Proc) -> tuple[int, int] | None:
    """The pid and start time recorded for ``proc`` if that process is still running."""
    try:
        data = json.loads(_pid_file(ws, proc).read_text())
    except (OSError, ValueError):
        return None
    pid, start_time = int(data.get("pid", 0)), data.get("start_time")
    if pid <= 0 or start_time is None or _start_time(pid) != start_time:
        return None
    return pid, start_time


def pid_of(ws: Workspace, proc: Proc) -> int | None:
    """The pid of ``proc`` if the process we started is still running."""
    recorded = _recorded(ws, proc)
    return recorded[0] if recorded else None


def running(ws: Workspace) -> dict[Proc, int | None]:
    return {proc: pid_of(ws, proc) for proc in expected(ws)}


def _private_file(path: Path, flags: int) -> int:
    """Open ``path`` 0600 whatever the caller's umask (logs and pid files are private too)."""
    return os.open(path, flags | os.O_CREAT, 0o600)


def _write_pid_file(ws: Workspace, proc: Proc, pid: int, cmd: list[str]) -> None:
    ws.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = {"pid": pid, "start_time": _start_time(pid), "cmd": cmd, "started_at": time.time()}
    tmp = _pid_file(ws, proc).with_suffix(".tmp")
    with os.fdopen(_private_file(tmp, os.O_WRONLY | os.O_TRUNC), "w") as handle:
        handle.write(json.dumps(record))
    os.replace(tmp, _pid_file(ws, proc))


@contextmanager
def _start_lock(ws: Workspace) -> Iterator[None]:
    """Held around check-then-spawn. flock belongs to the open file, so it also serialises
    threads of one process, is never inherited by a child (the descriptor is close-on-exec)
    and is released by the kernel if its holder dies."""
    ws.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with os.fdopen(
        _private_file(ws.run_dir / "start.lock", os.O_WRONLY | os.O_APPEND), "ab"
    ) as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _spawn(ws: Workspace, proc: Proc) -> int:
    ws.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ws.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if proc.kind == "service":  # the workspace's own program, as configured
        cmd = list(ws.config.services[proc.name].command)
    else:
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
    _write_pid_file(ws, proc, child.pid, cmd)
    return child.pid


def start(
    ws: Workspace,
    only: list[Proc] | None = None,
    *,
    stop_requested: threading.Event | None = None,
) -> dict[Proc, tuple[int, bool]]:
    """Start every expected process (or those in ``only``) that is not running; returns pid and
    whether it was started now (False: it was already running). Once ``stop_requested`` is set
    nothing more is spawned (checked under the lock, so a stopping supervisor finishes the spawn
    in progress and starts no other); the processes not started are left out of the result."""
    result: dict[Proc, tuple[int, bool]] = {}
    with _start_lock(ws):
        for proc in only or expected(ws):
            pid = pid_of(ws, proc)
            if pid is not None:
                result[proc] = (pid, False)
            elif stop_requested is None or not stop_requested.is_set():
                result[proc] = (_spawn(ws, proc), True)
    return result


def claim_supervisor(ws: Workspace) -> int | None:
    """Record this process (``mrbatch up`` in the foreground) as the deployment's supervisor,
    so that `down` elsewhere stops it first; returns the pid of another live supervisor instead
    (and records nothing) if there is one."""
    with _start_lock(ws):
        other = pid_of(ws, SUPERVISOR)
        if other is not None and other != os.getpid():
            return other
        _write_pid_file(ws, SUPERVISOR, os.getpid(), list(sys.argv))
    return None


def release_supervisor(ws: Workspace) -> None:
    """Remove the supervisor's pid file if it records this process."""
    with _start_lock(ws):
        if pid_of(ws, SUPERVISOR) == os.getpid():
            _pid_file(ws, SUPERVISOR).unlink(missing_ok=True)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the group we created with start_new_session
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _wait_gone(processes: list[tuple[int, int]], timeout: float) -> None:
    """Wait until none of ``processes`` (pid, start time) runs any more, at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while any(_start_time(pid) == started for pid, started in processes):
        reap()
        if time.monotonic() >= deadline:
            return
        time.sleep(0.02)


def _stop_supervisor(ws: Workspace, timeout: float) -> bool:
    """SIGTERM the supervisor (its own pid, not a group: the foreground `mrbatch up` need not
    lead one) and wait until it has finished any spawn in progress and exited; SIGKILL after
    ``timeout``. True when one was running. Never signals this process itself."""
    recorded = _recorded(ws, SUPERVISOR)
    if recorded is None or recorded[0] == os.getpid():
        if recorded is None:
            _pid_file(ws, SUPERVISOR).unlink(missing_ok=True)
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if _start_time(recorded[0]) != recorded[1]:
            break
        try:
            os.kill(recorded[0], sig)
        except ProcessLookupError:
            break  # it exited meanwhile
        _wait_gone([recorded], wait)
    _pid_file(ws, SUPERVISOR).unlink(missing_ok=True)
    return True


def stop(ws: Workspace, only: list[Proc] | None = None, *, timeout: float = 15.0) -> list[Proc]:
    """Stop our processes (SIGTERM, then SIGKILL after ``timeout``); returns those stopped.
    Without ``only``: the supervisor first, then the whole deployment."""
    stopped: list[Proc] = []
    if only is None and _stop_supervisor(ws, SUPERVISOR_STOP_TIMEOUT):
        stopped.append(SUPERVISOR)
    targets = {proc: _recorded(ws, proc) for proc in only or expected(ws)}
    alive = {proc: rec for proc, rec in targets.items() if rec is not None}
    for pid, _ in alive.values():
        _signal_group(pid, signal.SIGTERM)
    _wait_gone(list(alive.values()), timeout)
    for pid, started in alive.values():
        if _start_time(pid) == started:
            _signal_group(pid, signal.SIGKILL)
    for proc in targets:
        _pid_file(ws, proc).unlink(missing_ok=True)
    reap()
    return stopped + list(alive)


def kill(ws: Workspace, proc: Proc) -> int | None:
    """SIGKILL one of our processes and its group at once (tests and chaos: a crash)."""
    recorded = _recorded(ws, proc)
    if recorded is not None:
        _signal_group(recorded[0], signal.SIGKILL)
        _wait_gone([recorded], 5.0)
    return recorded[0] if recorded else None


def exit_status(
    pid: int, *, timeout: float = 2.0, stop: threading.Event | None = None
) -> int | None:
    """How a process this process started ended: its exit code, or minus the signal that
    killed it; None if it is still running or was not started here. Whatever is left of its
    process group (pool workers) is killed first, while the unreaped leader still holds the
    group's id, so a recycled id is never signalled. Waits at most ``timeout`` for the exit to
    be collectable, and no longer once ``stop`` is set (a supervisor told to stop must not
    spend its grace period waiting on the dead)."""
    child = _children.get(pid)
    if child is None:
        return _exited.pop(pid, None)
    if _start_time(pid) is not None:
        return None  # still running
    _signal_group(pid, signal.SIGKILL)
    # A killed multi-threaded process shows as a zombie as soon as its main thread is gone,
    # but can only be collected once its other threads are: a moment later.
    deadline = time.monotonic() + timeout
    while True:
        try:
            code = child.wait(timeout=0.05)
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return None  # left for reap()
    del _children[pid]
    return code


def reap(keep: Collection[int] = ()) -> None:
    """Collect exited processes this process started, so they do not linger as zombies; not
    those in ``keep``, which exit_status() will collect."""
    for pid, child in list(_children.items()):
        if pid in keep:
            continue
        code = child.poll()
        if code is not None:
            del _children[pid]
            _exited[pid] = code
            if len(_exited) > 1024:  # nobody asked for the oldest: forget it
                del _exited[next(iter(_exited))]
