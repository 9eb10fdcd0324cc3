"""Two regions on two providers (issue 9): each region's bucket and table on an endpoint of its
own (``[s3.regions.<r>] endpoint_url``, ``[dynamodb.regions.<r>] endpoint_url``), here two
moto servers on 127.0.0.1 that know nothing of each other. mrbatch's built-in replicators are
the only link between them. One deployment: a file completes in the active region, its input,
output and records are read back from the other region's endpoint, a failover moves to that
region and a second file completes there, and ``mrbatch verify`` comes out clean."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from mrbatch import backends
from mrbatch.config.initialize import DEFAULT_REGIONS, sample_bytes, seed_reference
from mrbatch.config.workspace import Workspace
from mrbatch.model.keys import run_id_for, version_input_key
from mrbatch.model.records import Accepted, FileRun, RunStatus, accepted_pk, run_pk
from tests.conftest import Deployment
from tests.expected import expected_output
from tests.helpers import mrbatch, put
from tests.moto_server import QUIET, MotoServer, aws_workspace, eventually, finished, shared

SAMPLE = sample_bytes("orders.csv")


@pytest.fixture
def two_endpoints() -> Iterator[tuple[MotoServer, MotoServer]]:
    """The session's server for the first region, a second server (this test's own, stopped
    by it) for the second."""
    first = shared()
    first.reset()
    second = MotoServer()
    try:
        yield first, second
    finally:
        second.stop()


def _multicloud_workspace(root: Path, first: str, second: str) -> Workspace:
    """Every region on ``first`` but the second region, whose bucket and table are on
    ``second``."""
    other = DEFAULT_REGIONS[1]  # the regions init writes
    return aws_workspace(
        root,
        first,
        chunk_rows=2000,
        **QUIET,
        **{
            f"s3.regions.{other}": {"endpoint_url": second},
            f"dynamodb.regions.{other}": {"endpoint_url": second},
        },
    )


def _bucket_names(url: str) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    return {b["Name"] for b in s3.list_buckets()["Buckets"]}


def _table_names(url: str, region: str) -> set[str]:
    dynamodb = boto3.client("dynamodb", endpoint_url=url, region_name=region)
    return set(dynamodb.list_tables()["TableNames"])


def test_two_regions_on_two_endpoints(
    tmp_path: Path, two_endpoints: tuple[MotoServer, MotoServer]
) -> None:
    first, second = two_endpoints
    ws = _multicloud_workspace(tmp_path / "ws", first.url, second.url)
    active, standby = ws.regions
    assert ws.config.s3.for_region(active).endpoint_url == first.url
    assert ws.config.s3.for_region(standby).endpoint_url == second.url
    assert ws.config.dynamodb.for_region(standby).endpoint_url == second.url
    # init provisioned before the override was written: start both endpoints empty and let
    # the final configuration create each region's bucket and table where it now lives.
    first.reset()
    backends.provision(ws)
    seed_reference(ws)
    a_bucket, b_bucket = (ws.config.s3.for_region(r).name for r in (active, standby))
    a_table, b_table = (ws.config.dynamodb.for_region(r).name for r in (active, standby))
    assert _bucket_names(first.url) == {a_bucket} and _bucket_names(second.url) == {b_bucket}
    assert _table_names(first.url, active) == {a_table}
    assert _table_names(second.url, standby) == {b_table}

    with Deployment(ws):
        # A file through the access point completes in the active region (first endpoint).
        info = put(ws, "input/orders.csv", SAMPLE)
        run = finished(ws, info)
        assert run.status is RunStatus.COMPLETED, run.reason
        assert (run.region, run.rows_out) == (active, 10_000)
        assert backends.open_object_store(ws, active).get("output/orders.csv") == (
            expected_output()
        )

        # The built-in replicators copy input, output and records to the second endpoint.
        replica = backends.open_object_store(ws, standby)
        replica_table = backends.open_state_table(ws, standby)
        run_id = run_id_for(info.key, info.sha256)

        def replicated() -> bool:
            record = replica_table.get(run_pk(run_id))
            return (
                replica.head("output/orders.csv") is not None
                and replica.head(version_input_key(run_id, info.key)) is not None
                and record is not None
                and FileRun.from_record(record).status is RunStatus.COMPLETED
                and replica_table.get(accepted_pk(run_id)) is not None
            )

        eventually(replicated, 60, "input, output and records on the second endpoint")
        assert replica.get("output/orders.csv") == expected_output()
        input_copy = replica.head("input/orders.csv")
        assert input_copy is not None and input_copy.sha256 == info.sha256
        assert replica.get(version_input_key(run_id, info.key)) == SAMPLE
        accepted = replica_table.get(accepted_pk(run_id))
        assert accepted is not None and Accepted.from_record(accepted).region == active

        # Failover to the region on the second endpoint; the next file completes there.
        result = mrbatch(ws, "failover", "--yes", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["epoch_after"] == 2
        assert backends.open_control_plane(ws).routing().active_region == standby
        second_info = put(ws, "input/after.csv", SAMPLE)
        second_run = finished(ws, second_info)
        assert second_run.status is RunStatus.COMPLETED, second_run.reason
        assert (second_run.region, second_run.epoch) == (standby, 2)
        assert replica.get("output/after.csv") == expected_output()
        home = backends.open_object_store(ws, active)
        eventually(lambda: home.head("output/after.csv"), 60, "the new output to replicate back")
        assert home.get("output/after.csv") == expected_output()

        report = mrbatch(ws, "verify", "--wait", "60s", "--json", timeout=150)
        verdict = json.loads(report.stdout)
        assert report.returncode == 0 and verdict["ok"], verdict.get("violations")
        assert verdict["counts"]["pending"] == 0

    # Nothing of either region strayed onto the other's endpoint.
    assert _bucket_names(first.url) == {a_bucket} and _bucket_names(second.url) == {b_bucket}
