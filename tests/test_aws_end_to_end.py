"""The deployment end to end on S3 + DynamoDB (moto's server mode, every region on one
endpoint): `init`, the sample file, the region-outage and storage-outage experiments, and
`verify` clean after each. mrbatch's own replicators copy between the regions' buckets and
tables (moto replicates nothing itself). Crashes and failover: tests/test_aws_recovery.py."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mrbatch import backends
from mrbatch.config.initialize import sample_bytes
from mrbatch.config.workspace import Workspace
from mrbatch.model.records import RunStatus
from tests.conftest import Deployment
from tests.expected import expected_output
from tests.helpers import mail_link, mails, mrbatch, put
from tests.moto_server import clean, eventually, finished, fresh_workspace, shared

SAMPLE = sample_bytes("orders.csv")


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    ws = fresh_workspace(
        tmp_path_factory.mktemp("aws") / "ws", chunk_rows=2000, s3={"presign_mail": True}
    )
    with Deployment(ws) as deployment:
        yield deployment


def test_init_writes_an_aws_workspace_without_credentials(tmp_path: Path) -> None:
    server = shared()
    result = mrbatch(
        tmp_path,
        "init", "ws", "--object-store", "s3", "--state-table", "dynamodb",
        "--endpoint-url", server.url, "--port", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "ws" / "mrbatch.toml").read_text()
    assert 'object_store = "s3"' in text and 'state_table = "dynamodb"' in text
    assert text.count(f'endpoint_url = "{server.url}"') == 2
    assert "testing" not in text  # the credentials of the test's environment stay there
    ws = Workspace.load(tmp_path / "ws" / "mrbatch.toml")
    for region in ws.regions:  # buckets and tables made, reference data seeded
        assert backends.open_object_store(ws, region).head("reference/financial.csv")


def test_sample_file_end_to_end(dep: Deployment) -> None:
    ws = dep.ws
    active, standby = ws.regions
    info = put(ws, "input/orders.csv", SAMPLE)
    run = finished(ws, info)
    assert run.status is RunStatus.COMPLETED, run.reason
    assert (run.rows_in, run.rows_out, run.rows_rejected) == (10_000, 10_000, 0)
    assert run.region == active and len(run.chunks) == 5
    store = backends.open_object_store(ws, active)
    assert store.get("output/orders.csv") == expected_output()
    [message] = mails(ws)
    with urllib.request.urlopen(mail_link(message), timeout=10) as response:
        assert response.read() == expected_output()  # the gateway serves the S3 object
    # s3.presign_mail: the mail also carries S3's own presigned URL of that version
    body = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
    [direct] = [line for line in body.splitlines() if line.startswith(shared().url)]
    assert "X-Amz-Signature=" in direct and "versionId=" in direct
    with urllib.request.urlopen(direct, timeout=10) as response:
        assert response.read() == expected_output()
    replica = backends.open_object_store(ws, standby)
    eventually(lambda: replica.head("output/orders.csv"), 30, "the output to replicate")
    assert replica.get("output/orders.csv") == expected_output()
    clean(ws)


def _chaos(ws: Workspace, experiment: str) -> dict[str, Any]:
    result = mrbatch(
        ws, "chaos", experiment, "--json", "--duration", "2s", "--files", "2", "--rows", "1500"
    )
    report: dict[str, Any] = json.loads(result.stdout)
    why = json.dumps(report.get("verify", {}).get("violations"), indent=1)[:3000]
    assert result.returncode == 0, (
        why + json.dumps(report, indent=1)[-3000:] + result.stderr[-2000:]
    )
    return report


@pytest.mark.parametrize("experiment", ["region-outage", "storage-outage"])
def test_outage_experiments(dep: Deployment, experiment: str) -> None:
    ws = dep.ws
    report = _chaos(ws, experiment)
    summary = report["summary"]
    assert summary["files_in"] == summary["completed"] == 2
    assert (summary["lost"], summary["duplicates"], summary["violations"]) == (0, 0, 0)
    assert report["verify"]["ok"]  # the experiment ends with verify, which came out clean
    # Uploads during the outage went to the other region's bucket through the access point.
    assert report["observed"]["uploads_by_region"].get(ws.regions[1], 0) >= 1
