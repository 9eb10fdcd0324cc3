"""Helpers for the gateway and dashboard tests: a gateway process on its own, raw HTTP (no URL
normalisation by the client), Prometheus parsing and the sockets a process listens on."""

from __future__ import annotations

import asyncio
import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mrbatch.config.workspace import Workspace
from mrbatch.runtime import supervisor
from tests.helpers import eventually, mrbatch

GATEWAY = supervisor.Proc("gateway", "gateway")


class InProcess:
    """Requests to an ASGI app in this process (httpx over ASGI, no socket, no lifespan)."""

    def __init__(self, app: object) -> None:
        self.app = app

    def request(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)  # type: ignore[arg-type]
            base = "http://localhost"  # a Host the gateway answers to
            async with httpx.AsyncClient(transport=transport, base_url=base) as client:
                return await client.request(method, url, **kwargs)  # type: ignore[arg-type]

        return asyncio.run(send())

    def get(self, url: str, **kwargs: object) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def put(self, url: str, **kwargs: object) -> httpx.Response:
        return self.request("PUT", url, **kwargs)


def raw(
    ws: Workspace,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request with ``path`` sent exactly as given (http.client does not resolve ``..``
    or collapse ``//``, unlike URL-normalising clients)."""
    url = urlsplit(ws.gateway_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def healthy(ws: Workspace) -> bool:
    try:
        return raw(ws, "GET", "/healthz")[0] == 200
    except OSError:
        return False


def start_gateway(ws: Workspace) -> int:
    """Start the gateway process alone (as `mrbatch gateway --detach` does) and wait for it."""
    result = mrbatch(ws, "gateway", "--detach")
    assert result.returncode == 0, result.stderr
    pid = supervisor.pid_of(ws, GATEWAY)
    assert pid is not None
    eventually(lambda: healthy(ws), 30, "the gateway to answer")
    return pid


def stop_gateway(ws: Workspace) -> None:
    supervisor.stop(ws, only=[GATEWAY])
    assert supervisor.pid_of(ws, GATEWAY) is None


def metrics(ws: Workspace) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed by prometheus-client: (sample name, sorted labels) -> value."""
    status, _, body = raw(ws, "GET", "/metrics")
    assert status == 200
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def metric(values: dict, name: str, **labels: str) -> float | None:  # type: ignore[type-arg]
    return values.get((name, tuple(sorted(labels.items()))))


def get_json(ws: Workspace, path: str) -> tuple[int, object]:
    status, _, body = raw(ws, "GET", path)
    return status, json.loads(body)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on ``port`` (IPv4 and IPv6)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, _, port_hex = fields[1].partition(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:
                continue
            if len(address) == 8:  # IPv4, little-endian hex
                found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
            else:
                found.add("::" if set(address) == {"0"} else address)
    return found


def gateway_log(ws: Workspace) -> str:
    path = supervisor.log_file(ws, GATEWAY)
    return path.read_text() if path.exists() else ""


def rss_peak_kib(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


__all__ = [
    "GATEWAY",
    "InProcess",
    "gateway_log",
    "get_json",
    "healthy",
    "listening_addresses",
    "metric",
    "metrics",
    "mrbatch",
    "raw",
    "rss_peak_kib",
    "start_gateway",
    "stop_gateway",
]
