"""Holes found by trying mrbatch as a hostile user would, one test each: markup in data, empty
secrets, long fields, oversized uploads, foreign Host headers, reads off loopback, file modes,
malformed URLs, link lifetimes and key rotation."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from mrbatch import backends
from mrbatch.access.links import SigningKeys, presign, sign
from mrbatch.config.initialize import sample_bytes
from mrbatch.config.workspace import Workspace
from mrbatch.errors import ConfigError
from mrbatch.gateway.app import create_app
from mrbatch.gateway.spool import SpoolQuota
from mrbatch.proof.recount import recount
from tests.conftest import Deployment, make_workspace
from tests.gateway_support import InProcess, raw
from tests.helpers import eventually, finished, mrbatch, put, run_of

LINES = sample_bytes("orders.csv").split(b"\n")
SMALL = b"\n".join(LINES[:51]) + b"\n"


# --------------------------------------------------------------------------- printing data


def test_markup_in_keys_and_values_is_printed_verbatim(deployment: Deployment) -> None:
    ws = deployment.ws
    weird = ["input/[/x].csv", "input/[bold]y.csv"]
    # 20 good rows and one rejected (under the 10% that would fail the run)
    bad_row = b"\n".join(LINES[:21]) + b"\n[red]12345678,x,y,z,w,v,u,t\n"
    for key in weird:
        path = ws.root / "upload.csv"
        path.write_bytes(bad_row)
        result = mrbatch(ws, "put", str(path), "--key", key)
        assert result.returncode == 0 and key in result.stdout, result.stderr
    for key in weird:
        run = finished(ws, put(ws, key, bad_row))
        assert run.status.terminal
    waited = mrbatch(ws, "wait", *weird, "--timeout", "60")
    assert all(key in waited.stdout for key in weird), waited.stdout + waited.stderr
    runs = mrbatch(ws, "runs")
    assert runs.returncode == 0 and "Traceback" not in runs.stderr
    for key in weird:
        errors = mrbatch(ws, "errors", key)
        assert errors.returncode == 0, errors.stderr
        assert "[red]12345678" in errors.stdout  # the rejected value, as it was
        got = mrbatch(ws, "get", key.replace("input/", "output/", 1))
        assert got.returncode == 0, got.stderr
    missing = mrbatch(ws, "get", "output/[/nope].csv")
    assert missing.returncode == 1 and "output/[/nope].csv" in missing.stderr


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("name", ["token", "signing.key"])
def test_an_empty_secret_is_refused_not_used(workspace: Workspace, name: str) -> None:
    (workspace.data_dir / name).write_text("\n")
    with pytest.raises(ConfigError, match="holds no secret"):
        create_app(workspace)
    command = ("gateway", "token") if name == "token" else ("url", "reference/financial.csv")
    result = mrbatch(workspace, *command)
    assert result.returncode == 2 and "holds no secret" in result.stderr
    assert f"delete {workspace.data_dir / name}" in result.stderr


# --------------------------------------------------------------------------- long values


def test_verify_recounts_a_value_longer_than_the_csv_default_limit() -> None:
    long = "x" * (300 << 10)
    data = f'id,note\n1,"{long}"\n2,b\n'.encode()
    counted = recount(data, b'id,note\n1,"' + long.encode() + b'"\n2,b\n', b"row,line\n")
    assert (counted.rows_in, counted.rows_out, counted.rows_rejected) == (2, 2, 0)


# --------------------------------------------------------------------------- uploads


def test_uploads_over_the_limit_are_refused_and_store_nothing(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", gateway={"max_upload_bytes": "2KB"})
    client = InProcess(create_app(ws))
    auth = {"authorization": f"Bearer {ws.token}"}
    before = sorted(i.key for i in backends.open_object_store(ws, ws.regions[0]).list())
    big = b"a,b\n" + b"1,2\n" * 1000
    assert client.put("/objects/input/big.csv", content=big, headers=auth).status_code == 413

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: found while spooling
        yield big[:1500]
        yield big[1500:]

    refused = client.put("/objects/input/big.csv", content=chunked(), headers=auth)
    assert refused.status_code == 413 and "max_upload_bytes" in refused.json()["error"]
    assert client.put("/objects/input/ok.csv", content=b"a,b\n1,2\n", headers=auth).is_success
    after = sorted(i.key for i in backends.open_object_store(ws, ws.regions[0]).list())
    assert [k for k in after if k not in before and "big" in k] == []


def test_the_spool_quota_holds_across_uploads() -> None:
    quota = SpoolQuota(100)
    assert quota.take(60) and not quota.take(50) and quota.take(40)
    quota.give(60)
    assert quota.take(50) and quota.used == 90


# --------------------------------------------------------------------------- hosts and reads


def test_requests_for_other_hosts_are_refused(tmp_path: Path) -> None:
    ws = make_workspace(
        tmp_path / "ws",
        gateway={"public_url": "https://batch.example.com", "allowed_hosts": ["ops.internal"]},
    )
    client = InProcess(create_app(ws))
    for host, status in {
        "rebound.attacker.example": 400,
        "localhost:8740": 200,
        "127.0.0.1": 200,
        "[::1]:80": 200,
        "batch.example.com": 200,
        "ops.internal": 200,
    }.items():
        response = client.get("/api/status", headers={"host": host})
        assert response.status_code == status, (host, response.text)
    refused = client.get("/", headers={"host": "rebound.attacker.example"})
    assert "allowed_hosts" in refused.json()["hint"]


def test_reads_need_the_token_off_loopback(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", gateway={"host": "0.0.0.0"})
    client = InProcess(create_app(ws))  # the app only: nothing is bound by the test
    for path in ("/", "/api/status", "/api/runs", "/metrics"):
        assert client.get(path).status_code == 401, path
        bearer = {"authorization": f"Bearer {ws.token}"}
        assert client.get(path, headers=bearer).status_code == 200, path
    assert client.get("/healthz").status_code == 200
    login = client.get(f"/?token={ws.token}", follow_redirects=False)
    assert login.status_code == 303 and "HttpOnly" in login.headers["set-cookie"]
    cookie = login.headers["set-cookie"].split(";", 1)[0]
    assert client.get("/api/status", headers={"cookie": cookie}).status_code == 200
    assert client.get("/?token=wrong", follow_redirects=False).status_code == 401
    # Objects keep their own rules: a presigned link works without the token.
    backends.open_object_store(ws, ws.regions[0]).put("output/p.csv", b"a\n")
    link = presign(ws.signing_key, "", "output/p.csv", expires_in=60)
    assert client.get(link).status_code == 200


def test_a_path_that_is_not_utf8_is_refused(workspace: Workspace) -> None:
    from mrbatch.runtime import supervisor
    from tests.gateway_support import start_gateway, stop_gateway

    start_gateway(workspace)
    try:
        auth = {"authorization": f"Bearer {workspace.token}"}
        status, _, body = raw(workspace, "GET", "/objects/input/%FF.csv", headers=auth)
        assert status == 400 and b"UTF-8" in body
        status, _, _ = raw(workspace, "GET", "/objects/input/%C3%A9.csv", headers=auth)
        assert status == 404  # valid UTF-8 (é): looked up, and not there
    finally:
        stop_gateway(workspace)
    assert supervisor.pid_of(workspace, supervisor.Proc("gateway", "gateway")) is None


# --------------------------------------------------------------------------- file modes


def test_the_data_directory_is_private(deployment: Deployment) -> None:
    ws = deployment.ws
    (ws.root / "private.csv").write_bytes(SMALL)
    uploaded = mrbatch(ws, "put", "private.csv", "--json")  # as a user uploads
    assert uploaded.returncode == 0, uploaded.stderr
    sha256 = json.loads(uploaded.stdout)["sha256"]
    eventually(lambda: (r := run_of(ws, "input/private.csv", sha256)) and r.status.terminal)
    mails = list(ws.outbox_dir.glob("*.eml"))
    assert mails
    loose = []
    for path in [ws.data_dir, *ws.data_dir.rglob("*")]:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue  # a temporary file the running deployment renamed meanwhile
        if stat.S_ISLNK(mode) or stat.S_ISSOCK(mode):
            continue
        if mode & 0o077:
            loose.append(f"{path.relative_to(ws.data_dir)}: {oct(mode & 0o777)}")
    assert not loose, loose


# --------------------------------------------------------------------------- links


def test_links_have_a_maximum_lifetime(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", gateway={"max_link_lifetime": "1d"})
    backends.open_object_store(ws, ws.regions[0]).put("output/l.csv", b"a\n")
    too_long = mrbatch(ws, "url", "output/l.csv", "--expires", "2d")
    assert too_long.returncode == 2 and "max_link_lifetime" in too_long.stderr
    ok = mrbatch(ws, "url", "output/l.csv", "--expires", "2h")
    assert ok.returncode == 0 and "expires=" in ok.stdout
    client = InProcess(create_app(ws))
    far = int(time.time()) + 3 * 86400  # signed by hand beyond the maximum
    forged = (
        f"/objects/output/l.csv?expires={far}&signature={sign(ws.signing_key, 'output/l.csv', far)}"
    )
    refused = client.get(forged)
    assert refused.status_code == 403 and "maximum lifetime" in refused.json()["error"]


def test_a_link_without_expires_lives_for_gateway_link_expiry(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", gateway={"link_expiry": "7m"})
    backends.open_object_store(ws, ws.regions[0]).put("output/e.csv", b"a\n1\n")
    before = int(time.time())
    made = mrbatch(ws, "url", "output/e.csv")
    after = time.time()
    assert made.returncode == 0, made.stderr
    link = urlsplit(made.stdout.strip())
    expires = int(parse_qs(link.query)["expires"][0])
    assert before + 420 <= expires <= after + 420, (before, expires, after)
    served = InProcess(create_app(ws)).get(f"{link.path}?{link.query}")
    assert served.status_code == 200 and served.content == b"a\n1\n"


def test_the_signing_key_rotates_without_a_restart(workspace: Workspace) -> None:
    ws = workspace
    backends.open_object_store(ws, ws.regions[0]).put("output/r.csv", b"a\n")
    client = InProcess(create_app(ws))
    old_link = presign(ws.signing_key, "", "output/r.csv", expires_in=600)
    assert client.get(old_link).status_code == 200
    rotated = mrbatch(ws, "gateway", "rotate-key", "--json")
    assert rotated.returncode == 0 and json.loads(rotated.stdout)["retired"] == 1
    new_link = presign(ws.signing_key, "", "output/r.csv", expires_in=600)
    assert new_link != old_link
    assert client.get(new_link).status_code == 200  # the running app reads the new key
    assert client.get(old_link).status_code == 200  # old links live until they expire
    revoked = mrbatch(ws, "gateway", "rotate-key", "--revoke", "--json")
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked"] == 2
    assert client.get(old_link).status_code == 403
    assert client.get(new_link).status_code == 403  # revoked too: it was the current key
    assert SigningKeys(ws.data_dir, 3600).honoured() == [ws.signing_key]
