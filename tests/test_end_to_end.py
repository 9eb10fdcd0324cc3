"""The spine, with real processes: a file goes in through the access point, is processed once in
the active region, comes out, replicates, and is mailed with a link the gateway serves."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from mrbatch import backends
from mrbatch.access.links import presign
from mrbatch.config.initialize import sample_bytes
from mrbatch.config.workspace import Workspace
from mrbatch.faults import FaultPoints
from mrbatch.model.records import RunStatus
from mrbatch.observe import views
from mrbatch.runtime import supervisor
from tests.conftest import Deployment
from tests.expected import expected_output
from tests.helpers import (
    drained,
    eventually,
    finished,
    loop_passes,
    mail_link,
    mails,
    mrbatch,
    put,
    run_of,
)

SAMPLE = sample_bytes("orders.csv")


def _http(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_sample_file_end_to_end(deployment: Deployment) -> None:
    ws = deployment.ws
    active, standby = ws.regions
    info = put(ws, "input/orders.csv", SAMPLE)
    run = finished(ws, info)
    assert run.status is RunStatus.COMPLETED, run.reason
    assert (run.rows_in, run.rows_out, run.rows_rejected) == (10_000, 10_000, 0)
    assert run.region == active and run.output_key == "output/orders.csv"
    assert len(run.chunks) == 4  # 2,500 rows a chunk in the test workspace

    store = backends.open_object_store(ws, active)
    assert store.get("output/orders.csv") == expected_output()
    rejected = store.get("rejected/orders.csv")
    assert rejected == b"row,line,reason," + SAMPLE.split(b"\n", 1)[0] + b",_extra\n"

    # Exactly one mail, with a link the gateway serves.
    messages = mails(ws)
    assert len(messages) == 1
    assert "10000 rows" in messages[0]["Subject"]
    status, body = _http(mail_link(messages[0]))
    assert status == 200 and body == expected_output()

    # Output and rejected rows reach the standby region, byte for byte.
    replica = backends.open_object_store(ws, standby)
    eventually(lambda: replica.head("output/orders.csv"), 30, "the output to replicate")
    eventually(lambda: replica.head("rejected/orders.csv"), 30, "the rejected rows to replicate")
    assert replica.get("output/orders.csv") == expected_output()
    eventually(
        lambda: (
            (r := run_of(ws, info.key, info.sha256))
            and r.status is RunStatus.COMPLETED
            and backends.open_state_table(ws, standby).get(f"run/{r.run_id}")
        ),
        30,
        "the run record to replicate",
    )

    # status --json: the contract's keys, with backlog drained.
    def drained() -> dict | None:
        data = json.loads(mrbatch(ws.root, "status", "--json").stdout)
        return data if all(r["backlog"] == 0 for r in data["regions"].values()) else None

    data = eventually(drained, 30, "the replication backlog to drain")
    assert data["active_region"] == active and data["epoch"] == 1
    for region in data["regions"].values():
        assert set(region) >= {"state", "pid", "alive", "backlog", "lag_seconds"}
        assert region["alive"] and isinstance(region["pid"], int)
        assert region["lag_seconds"] == 0
    assert data["regions"][standby]["state"] == "STANDBY"

    # runs --json contract
    runs = json.loads(mrbatch(ws.root, "runs", "--json").stdout)
    assert [r["status"] for r in runs] == ["COMPLETED"]
    assert set(runs[0]) >= {
        "run_id",
        "input_key",
        "status",
        "region",
        "epoch",
        "rows_in",
        "rows_out",
        "rows_rejected",
        "output_key",
        "reason",
    }


def _failure_mails(ws: Workspace, count: int) -> list[Message]:
    """The FAILED runs' mails of the outbox, once there are ``count`` of them."""

    def found() -> list[Message] | None:
        failed = [m for m in mails(ws) if ".failed." in m["Message-ID"]]
        return failed if len(failed) >= count else None

    return eventually(found, 30, f"{count} failure mail(s)")


def test_links_refuse_altered_expired_and_missing(deployment: Deployment) -> None:
    ws = deployment.ws
    put(ws, "output/direct.csv", b"a,b\n1,2\n")
    good = presign(ws.signing_key, ws.gateway_url, "output/direct.csv", expires_in=60)
    assert _http(good) == (200, b"a,b\n1,2\n")
    assert _http(good.replace("signature=", "signature=0"))[0] == 403
    assert _http(good.replace("output/direct.csv", "output/other.csv"))[0] == 403
    expired = presign(
        ws.signing_key, ws.gateway_url, "output/direct.csv", expires_in=1, now=time.time() - 10
    )
    assert _http(expired)[0] == 403
    missing = presign(ws.signing_key, ws.gateway_url, "output/missing.csv", expires_in=60)
    assert _http(missing)[0] == 404
    # the CLI's `url` prints a working link (default 60 minutes)
    link = mrbatch(ws.root, "url", "output/direct.csv").stdout.strip()
    assert _http(link) == (200, b"a,b\n1,2\n")
    expires = int(link.split("expires=")[1].split("&")[0])
    assert 3500 < expires - time.time() <= 3600


def test_duplicates_claim_once_and_new_bytes_run_again(deployment: Deployment) -> None:
    ws = deployment.ws
    first = put(ws, "input/dup.csv", SAMPLE)
    assert finished(ws, first).status is RunStatus.COMPLETED
    # the same bytes again, through the access point and straight into the standby bucket
    put(ws, "input/dup.csv", SAMPLE)
    put(ws, "input/dup.csv", SAMPLE, region=ws.regions[1])
    drained(ws)  # the standby's copy has reached the active region...
    loop_passes(ws, ws.regions[0])  # ...which has had every chance to claim it again
    assert len([r for r in views.all_runs(ws) if r.input_key == "input/dup.csv"]) == 1
    assert len(mails(ws)) == 1
    # new bytes under the same key are a new run, and replace the output
    lines = SAMPLE.split(b"\n")
    smaller = b"\n".join(lines[:101]) + b"\n"
    second = put(ws, "input/dup.csv", smaller)
    run = finished(ws, second)
    assert run.status is RunStatus.COMPLETED and run.rows_in == 100
    assert len([r for r in views.all_runs(ws) if r.input_key == "input/dup.csv"]) == 2
    assert len(mails(ws)) == 2
    store = backends.open_object_store(ws, ws.regions[0])
    assert store.get("output/dup.csv") == expected_output(smaller)


def test_up_twice_and_down(deployment: Deployment) -> None:
    ws = deployment.ws
    again = mrbatch(ws.root, "up", "--detach")
    assert again.returncode == 0 and "already running" in again.stdout
    down = mrbatch(ws.root, "down")
    assert down.returncode == 0
    assert all(pid is None for pid in supervisor.running(ws).values())
    assert "nothing was running" in mrbatch(ws.root, "down").stdout
    deployment.up()  # the fixture's teardown expects a running deployment


def test_upload_falls_back_when_the_active_bucket_is_down(deployment: Deployment) -> None:
    ws = deployment.ws
    active, standby = ws.regions
    faults = FaultPoints(ws.faults_path)
    fault = faults.arm("storage", region=active, duration=2.0)
    info = put(ws, "input/fallback.csv", SAMPLE)
    assert info.origin == standby  # the access point routed around the outage
    assert fault.until is not None
    run = finished(ws, info)  # replicates to the active region once its storage is back
    assert run.status is RunStatus.COMPLETED and run.region == active
    assert time.time() >= fault.until


def test_chunk_failures_retry_then_fail_with_a_reason(deployment: Deployment) -> None:
    ws = deployment.ws
    faults = FaultPoints(ws.faults_path)
    with faults.armed("chunk-error", region=ws.regions[0], note="poisoned dependency"):
        info = put(ws, "input/poisoned.csv", SAMPLE)
        run = finished(ws, info)
    assert run.status is RunStatus.FAILED
    assert "gave up after 4 attempt(s)" in (run.reason or "")
    assert "poisoned dependency" in (run.reason or "")
    # Its owners are told: a mail of its own (not the completion mail's Message-ID).
    (failure,) = _failure_mails(ws, 1)
    assert failure["Message-ID"] == f"<{run.run_id}.failed.0@mrbatch>"
    assert "poisoned.csv FAILED" in failure["Subject"]
    # a fault that clears before the attempts run out is absorbed by the retries
    faults.arm("chunk-error", region=ws.regions[0], duration=0.8)
    info = put(ws, "input/transient.csv", SAMPLE)
    run = finished(ws, info)
    assert run.status is RunStatus.COMPLETED, run.reason
    assert run.rows_out == 10_000


def test_unknown_region_and_bad_config_exit_2(deployment: Deployment, tmp_path: Path) -> None:
    ws = deployment.ws
    sample = tmp_path / "x.csv"
    sample.write_bytes(b"a\n")
    result = mrbatch(ws.root, "put", str(sample), "--region", "mars-1")
    assert result.returncode == 2
    assert "mars-1" in result.stderr and "error:" in result.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text(ws.config_path.read_text().replace("chunk_rows = 2500", "chunk_rows = -5"))
    result = mrbatch(ws.root, "--config", str(broken), "status")
    assert result.returncode == 2
    assert "pipeline.chunk_rows" in result.stderr and "broken.toml" in result.stderr


@pytest.mark.parametrize(
    ("name", "data", "status", "reason"),
    [
        ("empty.csv", b"", RunStatus.FAILED, "empty"),
        ("binary.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", RunStatus.FAILED, "binary"),
        (
            "latin1.csv",
            SAMPLE.split(b"\n", 1)[0] + b"\n123456789,Cura\xe7ao,a,b,C,1/1/20,r,1/2/20\n",
            RunStatus.FAILED,
            "UTF-8",
        ),
        (
            "no-region.csv",
            b"uuid,Country,Item Type,Sales Channel,Order Priority,Order Date,Ship Date\n",
            RunStatus.FAILED,
            "Region",
        ),
        ("header-only.csv", SAMPLE.split(b"\n", 1)[0] + b"\r\n", RunStatus.COMPLETED, None),
    ],
)
def test_bad_inputs_end_as_a_run(
    deployment: Deployment, name: str, data: bytes, status: RunStatus, reason: str | None
) -> None:
    ws = deployment.ws
    run = finished(ws, put(ws, f"input/{name}", data))
    assert run.status is status
    if reason:
        assert reason in (run.reason or ""), run.reason
    else:
        assert (run.rows_in, run.rows_out, run.rows_rejected) == (0, 0, 0)
        store = backends.open_object_store(ws, ws.regions[0])
        assert store.get(f"output/{name}") == expected_output(SAMPLE.split(b"\n", 1)[0] + b"\n")


def test_a_reference_without_rows_fails_the_run_with_a_reason(deployment: Deployment) -> None:
    ws = deployment.ws
    put(ws, "reference/financial.csv", sample_bytes("financial.csv").split(b"\n", 1)[0] + b"\n")
    run = finished(ws, put(ws, "input/no-reference.csv", SAMPLE))
    assert run.status is RunStatus.FAILED
    assert "reference/financial.csv" in (run.reason or "") and "no rows" in (run.reason or "")
    # No completion mail; one failure mail with the reason, and no rows to link to.
    (failure,) = _failure_mails(ws, 1)
    body = failure.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "no rows" in body and "No rejected rows were kept" in body
    assert not [m for m in mails(ws) if ".failed." not in m["Message-ID"]]
    recorded = eventually(
        lambda: (
            (r := run_of(ws, run.input_key, run.input_sha256))
            and (r.failure_mail or {}).get("sent_at")
            and r
        ),
        30,
        "the failure mail to be recorded on the run",
    )
    assert recorded.status is RunStatus.FAILED and recorded.failure_mail["attempts"] == 1  # type: ignore[index]


def test_wait_and_get_from_the_command_line(deployment: Deployment, tmp_path: Path) -> None:
    ws = deployment.ws
    good = tmp_path / "good.csv"
    good.write_bytes(SAMPLE)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"")
    assert mrbatch(ws.root, "put", str(good)).returncode == 0
    done = mrbatch(ws.root, "wait", "good.csv", "--timeout", "60", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["finished"][0]["status"] == "COMPLETED"
    assert mrbatch(ws.root, "put", str(bad)).returncode == 0
    failed = mrbatch(ws.root, "wait", "input/bad.csv", "--timeout", "60")
    assert failed.returncode == 1 and "FAILED" in failed.stdout and "empty" in failed.stdout
    # A key never uploaded fails at once (exit 1), with durations everywhere.
    started = time.monotonic()
    never = mrbatch(ws.root, "wait", "input/never-uploaded.csv", "--timeout", "5m")
    assert never.returncode == 1 and "nothing to wait for" in never.stderr
    assert "input/never-uploaded.csv" in never.stderr and time.monotonic() - started < 30
    bad = mrbatch(ws.root, "wait", "--timeout", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    # get serves the output from whichever region holds it, also while the active one is down
    active, standby = ws.regions
    replica = backends.open_object_store(ws, standby)
    eventually(lambda: replica.head("output/good.csv"), 30, "the output to replicate")
    with FaultPoints(ws.faults_path).armed("storage", region=active):
        out = tmp_path / "out.csv"
        got = mrbatch(ws.root, "get", "output/good.csv", "-o", str(out))
        assert got.returncode == 0, got.stderr
        assert standby in got.stderr
    assert out.read_bytes() == expected_output()
    missing = mrbatch(ws.root, "get", "output/nothing.csv")
    assert missing.returncode == 1 and "no region holds" in missing.stderr
