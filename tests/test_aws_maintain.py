"""Running for months on S3 + DynamoDB (moto's server mode): garbage collection deletes a
finished run's objects and records past the window, the deletions replicate and purge frees
what they superseded; a region whose bucket and table are lost is restored from a backup and
catches up. Both through the ports, as on the embedded backends (tests/test_gc.py,
tests/test_backup.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from mrbatch import backends
from mrbatch.config.initialize import sample_bytes
from mrbatch.config.workspace import Workspace
from mrbatch.maintain.gc import collect_garbage
from mrbatch.model.records import RunStatus
from mrbatch.runtime.replication import backlog
from tests.conftest import Deployment
from tests.helpers import mrbatch, put
from tests.moto_server import clean, eventually, finished, fresh_workspace

LINES = sample_bytes("orders.csv").split(b"\n")


def rows(first: int, count: int) -> bytes:
    return b"\n".join([LINES[0], *LINES[1 + first : 1 + first + count]]) + b"\n"


def drained(ws: Workspace) -> None:
    def empty() -> bool:
        return all(backlog(ws, a, b).total == 0 for a in ws.regions for b in ws.regions if a != b)

    eventually(empty, 60, "the replication backlog to drain")


def keys(ws: Workspace, region: str, prefix: str) -> list[str]:
    return [i.key for i in backends.open_object_store(ws, region).list(prefix)]


def test_garbage_collection_on_s3_and_dynamodb(tmp_path: Path) -> None:
    window = 60.0  # time passes by the clock given to collect_garbage, not by sleeping
    ws = fresh_workspace(
        tmp_path / "ws",
        chunk_rows=50,
        retention={"age": f"{window}s", "versions": 1, "enabled": False},
        gateway={"max_link_lifetime": f"{window}s", "link_expiry": "30s"},
    )
    with Deployment(ws):
        old = finished(ws, put(ws, "input/k.csv", rows(0, 120)))
        new = finished(ws, put(ws, "input/k.csv", rows(0, 130)))
        assert old.status is new.status is RunStatus.COMPLETED
        drained(ws)
        done = mrbatch(ws, "gc", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["intermediates"] > 0  # finished everywhere: gone now
        drained(ws)
        for region in ws.regions:
            assert keys(ws, region, "runs/") == [], region

        later = time.time() + window + 1
        report = collect_garbage(ws, now=later, purge=False)
        assert report.runs_collected == [old.run_id]  # superseded, past the window
        drained(ws)
        for region in ws.regions:  # the deletions replicated
            assert keys(ws, region, f"versions/{old.run_id}/") == [], region
            table = backends.open_state_table(ws, region)
            assert table.get(f"run/{old.run_id}") is None
            assert table.get(f"run/{new.run_id}") is not None

        purged = collect_garbage(ws, now=later + window + 1).purged
        for region in ws.regions:  # tombstones forgotten, superseded bytes freed
            assert purged[region]["record_tombstones"] > 0, purged
            assert purged[region]["object_tombstones"] > 0, purged
            assert purged[region]["bytes_freed"] > 0, purged
        fresh = put(ws, "input/after.csv", rows(200, 60))  # the feeds go on after a purge
        assert finished(ws, fresh).status is RunStatus.COMPLETED
        drained(ws)
        clean(ws)


def _lose(ws: Workspace, region: str) -> None:
    """Delete the region's bucket (every version) and its table, as a lost account would."""
    s3_target, ddb_target = ws.config.s3.for_region(region), ws.config.dynamodb.for_region(region)
    config = Config(s3={"addressing_style": "path"})
    s3: Any = boto3.client("s3", endpoint_url=s3_target.endpoint_url, config=config,
                           region_name=s3_target.aws_region)  # fmt: skip
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=s3_target.name):
        for entry in page.get("Versions", []) + page.get("DeleteMarkers", []):
            s3.delete_object(Bucket=s3_target.name, Key=entry["Key"], VersionId=entry["VersionId"])
    s3.delete_bucket(Bucket=s3_target.name)
    db: Any = boto3.client("dynamodb", endpoint_url=ddb_target.endpoint_url,
                           region_name=ddb_target.aws_region)  # fmt: skip
    db.delete_table(TableName=ddb_target.name)


def test_a_lost_region_is_restored_from_a_backup(tmp_path: Path) -> None:
    ws = fresh_workspace(tmp_path / "ws")
    lost, other = ws.regions
    dest = tmp_path / "backup"
    with Deployment(ws) as dep:
        first = finished(ws, put(ws, "input/a.csv", rows(0, 40)))
        assert first.status is RunStatus.COMPLETED
        drained(ws)
        backed_up = mrbatch(ws, "backup", "--to", str(dest), "--json")
        assert backed_up.returncode == 0, backed_up.stderr
        before = {i.key: i.sha256 for i in backends.open_object_store(ws, lost).list("output/")}
        dep.down()

        _lose(ws, lost)
        done = mrbatch(ws, "restore", "--from", str(dest), "--region", lost, "--json")
        assert done.returncode == 0, done.stderr
        store = backends.open_object_store(ws, lost)
        assert {i.key: i.sha256 for i in store.list("output/")} == before

        dep.up()
        after = put(ws, "input/b.csv", rows(100, 40), region=other)
        assert finished(ws, after).status is RunStatus.COMPLETED
        eventually(lambda: store.head(after.key) is not None, 60, "b.csv in the restored region")
        drained(ws)
        clean(ws)
