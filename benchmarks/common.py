"""What the benchmarks share (each runs as ``python benchmarks/NAME.py``, which puts this
directory first on the path): a free port on 127.0.0.1, and a command timed as a user runs it."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def timed(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Wall time of ``command`` as a new process, to its exit; SystemExit when it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {done.stdout}{done.stderr}")
    return elapsed
