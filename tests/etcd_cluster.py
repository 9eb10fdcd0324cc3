"""A real etcd cluster for the tests (and the benchmarks): three members of Debian's
``etcd-server`` on 127.0.0.1, on free ports, with their data in a temporary directory; each
member can be SIGKILLed and started again. Every member is stopped by pid when the cluster is.

``tests/setup_deps.py`` installs etcd when it is missing, so the tests never skip for it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

__all__ = ["EtcdCluster"]


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports. Held open together while they are chosen: one at a time,
    the kernel may hand the same port out twice (a cluster then failed with "initial cluster
    ... has duplicate url")."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=0.5) as answer:
            return b'"true"' in answer.read()
    except OSError:
        return False


class EtcdCluster:
    """``members`` etcd processes forming one cluster. ``heartbeat_ms`` and ``election_ms``
    are etcd's own timings; the shortest lease it grants is 1.5 x the election timeout,
    rounded up to whole seconds (1 s with the defaults here)."""

    def __init__(
        self, root: Path, *, members: int = 3, heartbeat_ms: int = 50, election_ms: int = 500
    ) -> None:
        self.root = root
        self.names = [f"m{i}" for i in range(members)]
        ports = _free_ports(2 * members)
        self.client_ports, self.peer_ports = ports[:members], ports[members:]
        self.timings = [
            "--heartbeat-interval",
            str(heartbeat_ms),
            "--election-timeout",
            str(election_ms),
        ]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.binary = shutil.which("etcd") or "/usr/bin/etcd"

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.client_ports]

    def _command(self, index: int) -> list[str]:
        name, client, peer = self.names[index], self.client_ports[index], self.peer_ports[index]
        initial = ",".join(
            f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True)
        )
        return [
            self.binary,
            "--name", name,
            "--data-dir", str(self.root / name),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", initial,
            "--initial-cluster-state", "new",  # ignored once the data dir exists (a restart)
            "--initial-cluster-token", self.root.name,
            "--logger", "zap",
            "--log-level", "error",
            *self.timings,
        ]  # fmt: skip

    def start_member(self, index: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"{self.names[index]}.log", "ab")  # noqa: SIM115 - kept by Popen
        self.processes[index] = subprocess.Popen(
            self._command(index), stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        for index in range(len(self.names)):
            self.start_member(index)
        self.wait_healthy(timeout=timeout)
        return self

    def wait_healthy(self, *, members: list[int] | None = None, timeout: float = 30.0) -> None:
        wanted = list(range(len(self.names))) if members is None else members
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(_healthy(self.endpoints[i]) for i in wanted):
                return
            for index in wanted:
                process = self.processes.get(index)
                if process is not None and process.poll() is not None:
                    log = (self.root / f"{self.names[index]}.log").read_text(errors="replace")
                    raise RuntimeError(f"etcd member {index} exited: {log[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"etcd members {wanted} not healthy within {timeout:.0f}s")

    def kill(self, index: int) -> None:
        """SIGKILL one member (a machine lost, as far as etcd can tell)."""
        process = self.processes.pop(index, None)
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def restart(self, index: int) -> None:
        self.start_member(index)

    def stop(self) -> None:
        for index in list(self.processes):
            self.kill(index)

    def __enter__(self) -> EtcdCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


# One cluster shared by the tests that only need a healthy one (the contract suites): each
# of them gets a workspace of its own, whose keys live under a prefix of their own. Started on
# first use, stopped at the end of the session (tests/conftest.py); tests that kill members
# start a cluster of their own.
_SHARED: EtcdCluster | None = None


def shared_cluster(root: Path) -> EtcdCluster:
    global _SHARED
    if _SHARED is None or any(p.poll() is not None for p in _SHARED.processes.values()):
        if _SHARED is not None:
            _SHARED.stop()
        cluster = EtcdCluster(root / "shared-etcd")
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        _SHARED = cluster
    return _SHARED


def stop_shared_cluster() -> None:
    global _SHARED
    if _SHARED is not None:
        _SHARED.stop()
        _SHARED = None
