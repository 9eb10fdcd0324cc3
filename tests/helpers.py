"""Small helpers for tests that drive a deployment."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import TypeVar

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


def mrbatch(
    where: Workspace | Path,
    *args: str,
    timeout: float = 180,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real command line (a new process) in a workspace (or any directory)."""
    return subprocess.run(
        [sys.executable, "-m", "mrbatch.cli.main", *args],
        cwd=where.root if isinstance(where, Workspace) else where,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
    )


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
