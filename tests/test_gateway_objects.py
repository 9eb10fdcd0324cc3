"""Objects through the gateway process: streaming uploads routed like `mrbatch put`, and
downloads with HEAD, byte ranges and conditional requests."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from mrbatch import backends
from mrbatch.access.links import presign
from mrbatch.config.workspace import Workspace
from mrbatch.faults import FaultPoints
from mrbatch.gateway.objects import Unsatisfiable, parse_range
from mrbatch.model.keys import run_id_for
from mrbatch.runtime import supervisor
from tests.gateway_support import (
    GATEWAY,
    gateway_log,
    raw,
    rss_peak_kib,
    start_gateway,
    stop_gateway,
)
from tests.helpers import eventually


@pytest.fixture
def gw(workspace: Workspace) -> Iterator[Workspace]:
    """The workspace with its gateway running alone (no region processes needed)."""
    start_gateway(workspace)
    try:
        yield workspace
    finally:
        stop_gateway(workspace)


def _auth(ws: Workspace) -> dict[str, str]:
    return {"authorization": f"Bearer {ws.token}"}


def _heads(ws: Workspace, key: str) -> dict[str, object]:
    return {r: backends.open_object_store(ws, r).head(key) for r in ws.regions}


def test_a_large_upload_streams_through_without_sitting_in_memory(gw: Workspace) -> None:
    pid = supervisor.pid_of(gw, GATEWAY)
    assert pid is not None
    size, block = 96 << 20, 1 << 20
    digest = hashlib.sha256()

    def body() -> Iterator[bytes]:  # generated as it is sent: chunked transfer, no length
        for _ in range(size // block):
            data = os.urandom(block)
            digest.update(data)
            yield data

    before = rss_peak_kib(pid)
    with httpx.Client(base_url=gw.gateway_url, timeout=120) as client:
        response = client.put("/objects/input/big.bin", content=body(), headers=_auth(gw))
    assert response.status_code == 200, response.text
    answer = response.json()
    active = gw.regions[0]
    assert answer == {
        "region": active,
        "key": "input/big.bin",
        "sha256": digest.hexdigest(),
        "size": size,
        "run_id": run_id_for("input/big.bin", digest.hexdigest()),
    }
    stored = backends.open_object_store(gw, active).head("input/big.bin")
    assert stored is not None and stored.sha256 == digest.hexdigest() and stored.size == size
    growth_mib = (rss_peak_kib(pid) - before) / 1024
    # Holding the body (96 MiB) anywhere in the gateway would lift its peak by at least that.
    assert growth_mib < 40, f"the gateway's peak RSS grew by {growth_mib:.0f} MiB"


def test_an_interrupted_upload_stores_nothing(gw: Workspace) -> None:
    url = urlsplit(gw.gateway_url)
    head = (
        "PUT /objects/input/cut.csv HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\nAuthorization: Bearer {gw.token}\r\n"
        "Content-Length: 1000000\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head + b"a,b\n" * 1000)  # 4,000 of the promised 1,000,000 bytes
    eventually(lambda: "input/cut.csv abandoned" in gateway_log(gw), 30, "the gateway to give up")
    assert all(info is None for info in _heads(gw, "input/cut.csv").values())
    # The gateway is still fine afterwards.
    assert raw(gw, "GET", "/healthz")[0] == 200


def test_uploads_route_like_put_and_fall_back(gw: Workspace) -> None:
    active, standby = gw.regions
    client = httpx.Client(base_url=gw.gateway_url, headers=_auth(gw), timeout=30)
    first = client.put("/objects/input/one.csv", content=b"a\n1\n")
    assert first.status_code == 200 and first.json()["region"] == active
    assert first.headers["etag"] == f'"{first.json()["sha256"]}"'
    # Exactly one region when asked, as `mrbatch put --region`.
    there = client.put("/objects/input/two.csv", params={"region": standby}, content=b"b\n")
    assert there.json()["region"] == standby
    assert (
        client.put("/objects/input/x.csv", params={"region": "mars-1"}, content=b"x").status_code
        == 400
    )

    faults = FaultPoints(gw.faults_path)
    with faults.armed("storage", region=active, duration=60):
        moved = client.put("/objects/input/three.csv", content=b"c\n3\n")
        assert moved.status_code == 200 and moved.json()["region"] == standby
        pinned = client.put("/objects/input/four.csv", params={"region": active}, content=b"d")
        assert pinned.status_code == 503
    assert _heads(gw, "input/three.csv")[standby] is not None

    # The pipeline's own prefixes cannot be written over HTTP.
    for key in ("output/one.csv", "rejected/one.csv", "runs/abc/out/00000.csv"):
        assert client.put(f"/objects/{key}", content=b"forged").status_code == 403, key
    # reference data can be replaced, as with `mrbatch put --key reference/...`
    assert client.put("/objects/reference/extra.csv", content=b"uuid\n").status_code == 200

    # A declared checksum must match the body; on mismatch nothing is stored.
    body = b"e\n5\n"
    wrong = client.put(
        "/objects/input/five.csv", content=body, headers={"x-mrbatch-sha256": "0" * 64}
    )
    assert wrong.status_code == 400 and "does not match" in wrong.json()["error"]
    assert all(info is None for info in _heads(gw, "input/five.csv").values())
    right = client.put(
        "/objects/input/five.csv",
        content=body,
        headers={"x-mrbatch-sha256": hashlib.sha256(body).hexdigest()},
    )
    assert right.status_code == 200
    client.close()


def test_downloads_support_head_ranges_and_conditionals(gw: Workspace) -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes
    backends.open_object_store(gw, gw.regions[0]).put("output/ranges.bin", data)
    link = presign(gw.signing_key, gw.gateway_url, "output/ranges.bin", expires_in=300)
    client = httpx.Client(timeout=30)

    full = client.get(link)
    assert full.status_code == 200 and full.content == data
    assert full.headers["accept-ranges"] == "bytes"
    assert full.headers["x-mrbatch-region"] == gw.regions[0]
    etag = full.headers["etag"]
    assert etag == f'"{hashlib.sha256(data).hexdigest()}"'

    head = client.head(link)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(data)) and head.headers["etag"] == etag

    cases = {
        "bytes=10-19": (206, data[10:20], "bytes 10-19/10240"),
        "bytes=10000-": (206, data[10000:], "bytes 10000-10239/10240"),
        "bytes=-5": (206, data[-5:], "bytes 10235-10239/10240"),
        "bytes=10230-99999": (206, data[10230:], "bytes 10230-10239/10240"),
        "bytes=0-0,5-6": (200, data, None),  # several ranges: the whole object
        "items=0-5": (200, data, None),
    }
    for header, (status, body, content_range) in cases.items():
        part = client.get(link, headers={"range": header})
        assert part.status_code == status, header
        assert part.content == body, header
        assert part.headers.get("content-range") == content_range, header
        assert part.headers["content-length"] == str(len(body)), header
    beyond = client.get(link, headers={"range": "bytes=20000-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == "bytes */10240"

    assert client.get(link, headers={"if-none-match": etag}).status_code == 304
    ranged_ok = client.get(link, headers={"range": "bytes=0-3", "if-range": etag})
    assert ranged_ok.status_code == 206 and ranged_ok.content == data[:4]
    stale = client.get(link, headers={"range": "bytes=0-3", "if-range": '"old"'})
    assert stale.status_code == 200 and stale.content == data

    # The token works instead of a link; no credentials at all is a 401.
    path = "/objects/output/ranges.bin"
    assert client.get(gw.gateway_url + path, headers=_auth(gw)).content == data
    assert client.get(gw.gateway_url + path).status_code == 401
    client.close()


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-4", 10, (0, 4)),
        ("bytes=5-", 10, (5, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-30", 10, (0, 9)),
        ("bytes=3-100", 10, (3, 9)),
        ("bytes=4-3", 10, None),
        ("bytes=a-b", 10, None),
        ("bytes=1-2,4-5", 10, None),
        ("lines=1-2", 10, None),
        ("bytes=", 10, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0)])
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)
