"""The gateway's security promises, one test each: writes need the token; the token is stored
with mode 0600; tokens and signatures are compared in constant time; unsafe keys are refused;
the gateway binds to 127.0.0.1 unless configured otherwise."""

from __future__ import annotations

import ast
import hmac
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import mrbatch
from mrbatch import backends
from mrbatch.access.links import presign
from mrbatch.config.settings import GatewayConfig
from mrbatch.config.workspace import Workspace
from mrbatch.gateway.app import create_app
from tests.conftest import free_port, make_workspace
from tests.gateway_support import (
    InProcess,
    healthy,
    listening_addresses,
    raw,
    start_gateway,
    stop_gateway,
)
from tests.gateway_support import (
    mrbatch as mrbatch_cli,
)
from tests.helpers import eventually


def _keys(ws: Workspace) -> dict[str, list[str]]:
    return {
        region: sorted(i.key for i in backends.open_object_store(ws, region).list())
        for region in ws.regions
    }


def test_writes_need_the_token(workspace: Workspace) -> None:
    client = InProcess(create_app(workspace))
    before = _keys(workspace)
    url = "/objects/input/sneaky.csv"
    refused = {
        "no credentials": ({}, 401),
        "another scheme": ({"authorization": f"Basic {workspace.token}"}, 401),
        "wrong token": ({"authorization": "Bearer " + "x" * len(workspace.token)}, 403),
        "a prefix of the token": ({"authorization": f"Bearer {workspace.token[:-1]}"}, 403),
        "empty token": ({"authorization": "Bearer "}, 403),
    }
    for what, (headers, status) in refused.items():
        response = client.put(url, content=b"a,b\n1,2\n", headers=headers)
        assert response.status_code == status, what
        assert "error" in response.json()
        if status == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
    # A token in the query string is not a credential (it would end up in logs and histories).
    assert client.put(f"{url}?token={workspace.token}", content=b"x").status_code == 401
    assert _keys(workspace) == before, "a refused upload stored something"
    # Reads without a presigned link need the token as well.
    backends.open_object_store(workspace, workspace.regions[0]).put("output/r.csv", b"r\n")
    assert client.get("/objects/output/r.csv").status_code == 401
    good = {"authorization": f"Bearer {workspace.token}"}
    assert client.get("/objects/output/r.csv", headers=good).content == b"r\n"
    # And with the token, the write goes through.
    response = client.put(url, content=b"a,b\n1,2\n", headers=good)
    assert response.status_code == 200, response.text
    assert backends.open_object_store(workspace, workspace.regions[0]).get("input/sneaky.csv") == (
        b"a,b\n1,2\n"
    )


def test_init_stores_the_token_with_mode_0600(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    # Even with a permissive umask the secrets must not be readable by others.
    result = subprocess.run(
        [
            "sh",
            "-c",
            'umask 000 && exec "$0" -m mrbatch.cli.main init "$1" --port "$2"',
            sys.executable,
            str(root),
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    ws = Workspace.load(root / "mrbatch.toml")
    for name in ("token", "signing.key"):
        path = ws.data_dir / name
        assert path.stat().st_mode & 0o777 == 0o600, f"{name}: {oct(path.stat().st_mode)}"
    token = (ws.data_dir / "token").read_text().strip()
    assert len(token) >= 32 and token == ws.token
    # That stored token is the one the gateway accepts, and `mrbatch gateway token` prints it.
    assert mrbatch_cli(ws, "gateway", "token").stdout.strip() == token
    client = InProcess(create_app(ws))
    ok = client.put(
        "/objects/input/t.csv", content=b"t\n", headers={"authorization": f"Bearer {token}"}
    )
    assert ok.status_code == 200, ok.text


def test_tokens_and_signatures_are_compared_in_constant_time(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    client = InProcess(create_app(workspace))
    token = workspace.token.encode()

    forged = b"y" * len(token)
    response = client.put(
        "/objects/input/x.csv", content=b"x", headers={"authorization": f"Bearer {forged.decode()}"}
    )
    assert response.status_code == 403
    assert {forged, token} in [set(c) for c in calls], "the token was not compared in constant time"

    calls.clear()
    backends.open_object_store(workspace, workspace.regions[0]).put("output/s.csv", b"s\n")
    link = presign(workspace.signing_key, "", "output/s.csv", expires_in=60)
    altered = link[:-4] + ("0000" if not link.endswith("0000") else "1111")
    assert client.get(altered).status_code == 403
    signature = altered.rsplit("signature=", 1)[1].encode()
    assert any(signature in c for c in calls), "the signature was not compared in constant time"

    # Source level: no credential in the HTTP path is compared with == or !=.
    package = Path(mrbatch.__file__).parent
    offenders = []
    modules = ("app", "objects", "api", "guard", "spool")
    for module in [f"gateway/{m}.py" for m in modules] + ["access/links.py"]:
        tree = ast.parse((package / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(
                isinstance(op, ast.Eq | ast.NotEq) for op in node.ops
            ):
                text = ast.unparse(node).lower()
                if any(word in text for word in ("token", "signature", "secret", "credential")):
                    offenders.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, offenders


BAD_KEYS = {
    "dot-dot segment": "/objects/input/../control.sqlite",
    "encoded dot-dot": "/objects/input/%2e%2e/%2e%2e/token",
    "absolute path": "/objects//etc/passwd",
    "encoded absolute path": "/objects/%2Fetc%2Fpasswd",
    "control character": "/objects/input/a%01b.csv",
    "newline (log forging)": "/objects/input/a%0aINFO%20forged.csv",
    "backslash": "/objects/input%5C..%5Ctoken",
}


def test_unsafe_keys_are_refused(tmp_path: Path) -> None:
    # Through the real server: what the client sends is exactly what uvicorn decodes.
    ws = make_workspace(tmp_path / "ws")
    start_gateway(ws)
    try:
        before = _keys(ws)
        auth = {"authorization": f"Bearer {ws.token}"}
        for what, path in BAD_KEYS.items():
            status, _, body = raw(ws, "PUT", path, body=b"a\n", headers=auth)
            assert status == 400, (what, status, body)
            assert b"object key" in body, (what, body)
            status, _, body = raw(ws, "GET", path, headers=auth)
            assert status == 400, (what, status, body)
            status, _, _ = raw(ws, "GET", f"{path}?expires=9999999999&signature=00")
            assert status == 400, what
        assert _keys(ws) == before, "an unsafe key stored something"
        # A safe key on the same server works, so the refusals above are about the keys.
        status, _, body = raw(ws, "PUT", "/objects/input/ok.csv", body=b"a\n", headers=auth)
        assert status == 200, body
    finally:
        stop_gateway(ws)


def test_the_gateway_binds_to_loopback_unless_configured(tmp_path: Path) -> None:
    assert GatewayConfig().host == "127.0.0.1"
    ws = make_workspace(tmp_path / "ws")
    assert ws.config.gateway.host == "127.0.0.1"
    # `mrbatch gateway` in the foreground, as a user runs it.
    with open(tmp_path / "gateway.out", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mrbatch.cli.main", "gateway"],
            cwd=ws.root,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        eventually(lambda: healthy(ws) or proc.poll() is not None, 30, "the gateway to answer")
        assert proc.poll() is None, (tmp_path / "gateway.out").read_text()
        assert listening_addresses(ws.config.gateway.port) == {"127.0.0.1"}
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, (tmp_path / "gateway.out").read_text()
    assert listening_addresses(ws.config.gateway.port) == set()

    # Configured otherwise (another loopback address, so nothing is exposed by the test).
    other = make_workspace(tmp_path / "other", gateway={"host": "127.0.0.2"})
    start_gateway(other)
    try:
        assert listening_addresses(other.config.gateway.port) == {"127.0.0.2"}
        assert other.gateway_url.startswith("http://127.0.0.2:")
    finally:
        stop_gateway(other)
