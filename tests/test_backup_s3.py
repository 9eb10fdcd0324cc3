"""Backups to an S3 prefix (``s3://bucket/prefix``) on moto's server mode, of the embedded-default
deployment: the same guarantees as the directory target (tests/test_backup.py). A full then an
incremental backup (only new blobs uploaded), ``backups`` lists them, a deleted region is
restored from the prefix and ``verify`` is clean; an interrupted backup, or a blob upload cut
short mid-way through its parts, leaves the prefix usable; a missing bucket is named."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from mrbatch import backends
from mrbatch.config.workspace import Workspace
from mrbatch.errors import MrbatchError, UnavailableError, UsageError
from mrbatch.faults import FaultPoints
from mrbatch.maintain.backup import take_backup
from mrbatch.maintain.catalog import catalog
from mrbatch.maintain.restore import restore
from mrbatch.maintain.target import open_target
from mrbatch.model.records import RunStatus
from tests.conftest import Deployment, make_workspace
from tests.helpers import drained, eventually, finished, mrbatch, put
from tests.moto_server import MotoServer, shared
from tests.test_backup import _delete_region, outputs, small_file

BUCKET = "mrbatch-backups"
DEST = f"s3://{BUCKET}/ws/nightly"


@pytest.fixture
def server() -> MotoServer:
    """The session's moto server, emptied, holding the (operator-made) backup bucket."""
    moto = shared()
    moto.reset()
    s3_client(moto).create_bucket(Bucket=BUCKET)
    return moto


def s3_client(moto: MotoServer) -> Any:
    config = Config(s3={"addressing_style": "path"})
    return boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", config=config)


def stored_blobs(moto: MotoServer) -> tuple[int, int]:
    pages = (
        s3_client(moto)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=BUCKET, Prefix="ws/nightly/blobs/")
    )
    sizes = [o["Size"] for page in pages for o in page.get("Contents", [])]
    return len(sizes), sum(sizes)


def cli_json(ws: Workspace, *args: str) -> Any:
    done = mrbatch(ws, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_backup_to_s3_and_restore_a_deleted_region(tmp_path: Path, server: MotoServer) -> None:
    # The embedded backends; only [s3] endpoint_url says where the backup bucket is.
    ws = make_workspace(tmp_path / "ws", s3={"endpoint_url": server.url})
    lost, other = ws.regions
    with Deployment(ws) as dep:
        assert finished(ws, put(ws, "input/a0.csv", small_file(0))).status is RunStatus.COMPLETED
        drained(ws)
        first = cli_json(ws, "backup", "--to", DEST)
        assert first["full"] and first["target"] == DEST and first["blobs_copied"] > 0
        assert stored_blobs(server) == (first["blobs_copied"], first["bytes_copied"])

        assert finished(ws, put(ws, "input/a1.csv", small_file(1))).status is RunStatus.COMPLETED
        drained(ws)
        second = cli_json(ws, "backup", "--to", DEST)
        # Incremental: only what changed, and only blobs the prefix did not hold are uploaded.
        assert not second["full"] and second["base"] == first["id"]
        assert 0 < second["objects"] < first["objects"] and second["blobs_copied"] > 0
        assert stored_blobs(server) == (
            first["blobs_copied"] + second["blobs_copied"],
            first["bytes_copied"] + second["bytes_copied"],
        )
        listed = cli_json(ws, "backups", "--from", DEST)
        assert [b["id"] for b in listed] == [first["id"], second["id"]]
        table = mrbatch(ws, "backups", "--from", DEST)
        assert table.returncode == 0 and "incremental" in table.stdout, table.stderr
        before = outputs(ws, lost)
        assert len(before) == 2
        dep.down()

        _delete_region(ws.region_dir(lost))
        done = cli_json(ws, "restore", "--from", DEST, "--region", lost)
        assert done["target"] == DEST and done["backups"] == 2 and done["rpo"] is not None
        assert outputs(ws, lost) == before  # byte-identical, from the prefix alone

        dep.up()
        after = put(ws, "input/b-other.csv", small_file(4), region=other)
        assert finished(ws, after).status is RunStatus.COMPLETED
        store = backends.open_object_store(ws, lost)
        eventually(lambda: store.head(after.key), 30, f"{after.key} in {lost}")
        drained(ws)
        report = cli_json(ws, "verify", "--final", "--wait", "60s")
        assert report["ok"], report["violations"]
        assert report["counts"]["ok"] + report["counts"]["recovered"] == 3


def test_an_interrupted_backup_leaves_the_prefix_usable(
    tmp_path: Path, server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without [s3] endpoint_url, the environment's AWS_ENDPOINT_URL names the endpoint.
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    ws = make_workspace(tmp_path / "ws")
    region = ws.regions[0]
    put(ws, "input/one.csv", small_file(0), region=region)
    first = take_backup(ws, DEST)
    put(ws, "input/two.csv", small_file(1), region=region)
    # The bucket fails after the records were read: their file is uploaded, no index entry.
    with FaultPoints(ws.faults_path).armed("storage", region=region):
        with pytest.raises(UnavailableError):
            take_backup(ws, DEST, full=True)
    target = open_target(DEST, ws=ws)
    assert len({name.split("/")[1] for name in target.list("changes/")}) == 2
    assert [e.id for e in catalog(target)] == [first.id]
    second = take_backup(ws, DEST)
    assert second.base == first.id and second.objects == 2  # input/two.csv and its version
    assert second.blobs_copied + second.blobs_reused == 2  # the key and its version: one blob

    _delete_region(ws.region_dir(region))
    report = restore(ws, DEST, region=region)
    assert report.backups == 2
    assert backends.open_object_store(ws, region).get("input/two.csv") == small_file(1)

    # Listed from outside any workspace: the environment alone reaches the prefix.
    env = {**os.environ, "AWS_ENDPOINT_URL": server.url}
    listed = mrbatch(tmp_path, "backups", "--from", DEST, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [b["id"] for b in json.loads(listed.stdout)] == [first.id, second.id]


def test_a_big_blob_goes_in_parts_whole_or_not_at_all(tmp_path: Path, server: MotoServer) -> None:
    part = 5 * 1024 * 1024  # S3's smallest part
    ws = make_workspace(
        tmp_path / "ws",
        s3={"endpoint_url": server.url, "multipart_threshold": part, "part_size": part},
    )
    target: Any = open_target(DEST, create=True, ws=ws)
    data = os.urandom(2 * part + 1234)
    sha = hashlib.sha256(data).hexdigest()

    # Bytes that do not hash to the blob's name are never uploaded.
    with pytest.raises(MrbatchError, match="hash to"):
        target.put_blob(sha, io.BytesIO(data[:-1]))
    assert not target.has_blob(sha)

    # A multipart upload cut short after its first part: nothing visible, nothing left.
    calls = []

    def cut(**_: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionResetError("cut")

    events = target.b.client.meta.events
    events.register("before-call.s3.UploadPart", cut, unique_id="cut-test")
    try:
        with pytest.raises(ConnectionResetError):
            target.put_blob(sha, io.BytesIO(data))
    finally:
        events.unregister("before-call.s3.UploadPart", unique_id="cut-test")
    assert not target.has_blob(sha)
    assert s3_client(server).list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []

    assert target.put_blob(sha, io.BytesIO(data)) == len(data)
    assert dict(target.blobs()) == {sha: len(data)}
    with target.open_blob(sha) as stream:  # read back in blocks, as a restore does
        digest = hashlib.sha256()
        while block := stream.read(1 << 20):
            digest.update(block)
    assert digest.hexdigest() == sha


def test_bad_s3_targets_are_refused_clearly(tmp_path: Path, server: MotoServer) -> None:
    ws = make_workspace(tmp_path / "ws", s3={"endpoint_url": server.url})
    region = ws.regions[0]
    missing = "s3://no-such-bucket/ws"
    for args in (
        ("backup", "--to", missing),
        ("restore", "--from", missing, "--region", region),
        ("backups", "--from", missing),
    ):
        refused = mrbatch(ws, *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert "bucket 'no-such-bucket' does not exist" in refused.stderr, refused.stderr
    with pytest.raises(UsageError, match="no-such-bucket"):
        take_backup(ws, missing)

    s3_client(server).put_object(Bucket=BUCKET, Key="other/notes.txt", Body=b"not a backup")
    for args in (
        ("backup", "--to", f"s3://{BUCKET}/other"),
        ("restore", "--from", f"s3://{BUCKET}/other", "--region", region),
        ("restore", "--from", f"s3://{BUCKET}/empty", "--region", region),
    ):
        refused = mrbatch(ws, *args)
        assert refused.returncode == 2 and "mrbatch-backup.json" in refused.stderr, refused.stderr

    bad = mrbatch(ws, "backup", "--to", "s3://B/x")
    assert bad.returncode == 2 and "not a bucket name" in bad.stderr
