"""What the S3 object store does beyond the port's contract (tests/contracts/): multipart uploads
and part-by-part copies, a write cut short before its change-feed entry fed by the next
identical write, objects written by other tools, mrbatch's reserved prefix, and what purge
leaves for readers."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from mrbatch import backends
from mrbatch.backends.s3cache import IDS
from mrbatch.backends.s3feed import feed_key
from mrbatch.config.workspace import Workspace
from mrbatch.errors import UsageError
from mrbatch.runtime.replication import Replicator, cursor_name
from tests.conftest import make_workspace
from tests.moto_server import shared

MIB = 1024 * 1024


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    server = shared()
    server.reset()
    return make_workspace(
        tmp_path / "ws",
        init={"object_store": "s3", "endpoint_url": server.url},
        s3={"multipart_threshold": 5 * MIB, "part_size": 5 * MIB},
    )


def _raw(ws: Workspace) -> tuple[Any, str]:
    """A plain boto3 client on the first region's bucket: another tool, or a crash's leftovers."""
    target = ws.config.s3.for_region(ws.regions[0])
    client = boto3.client(
        "s3",
        endpoint_url=target.endpoint_url,
        region_name=target.aws_region,
        config=Config(s3={"addressing_style": "path"}),
    )
    return client, target.name


def test_large_objects_go_up_in_parts_and_are_copied_part_by_part(ws: Workspace) -> None:
    store = backends.open_object_store(ws, ws.regions[0])
    data = os.urandom(12 * MIB + 123)
    info = store.put("runs/big/output.csv", data)
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)
    client, bucket = _raw(ws)
    head = client.head_object(Bucket=bucket, Key="runs/big/output.csv")
    assert head["ETag"].strip('"').endswith("-3")  # three parts of 5 MiB at most
    assert (
        store.get_range("runs/big/output.csv", 5 * MIB - 10, 20)
        == data[5 * MIB - 10 : 5 * MIB + 10]
    )
    with store.open("runs/big/output.csv") as stream:
        stream.seek(10 * MIB)
        assert stream.read(5) == data[10 * MIB : 10 * MIB + 5]
    store.inner.b.max_single_copy = 5 * MIB  # type: ignore[attr-defined]
    copy = store.copy("runs/big/output.csv", "output/big.csv", meta={"run_id": "r"})
    assert copy.version == info.version and store.get("output/big.csv") == data
    assert client.head_object(Bucket=bucket, Key="output/big.csv")["ETag"].strip('"').endswith("-3")


def test_a_write_cut_short_before_its_feed_entry_is_fed_by_the_next(ws: Workspace) -> None:
    store = backends.open_object_store(ws, ws.regions[0])
    first = store.put("input/a.csv", b"a\n1\n")
    start = store.last_seq()
    # What a crash between the version and its feed entry leaves: the version, described,
    # without a feed entry or the tag that records its position.
    client, bucket = _raw(ws)
    described = {
        "sha256": hashlib.sha256(b"a\n2\n").hexdigest(),
        "epoch": 0,
        "origin": store.region,
        "modified": repr(first.modified + 1),
        "meta": {},
    }
    client.put_object(
        Bucket=bucket,
        Key="input/a.csv",
        Body=b"a\n2\n",
        Metadata={"mrbatch": json.dumps(described)},
    )
    assert store.changes(start) == []
    again = store.put("input/a.csv", b"a\n2\n")  # the durable step repeats its effect
    fed = store.changes(start)
    assert [(c.key, c.sha256, c.seq) for c in fed] == [
        ("input/a.csv", described["sha256"], again.seq)
    ]
    assert store.put("input/a.csv", b"a\n2\n").seq == again.seq  # fed once, then a no-op


def test_objects_other_tools_wrote_are_listed_with_their_sha256(ws: Workspace) -> None:
    store = backends.open_object_store(ws, ws.regions[0])
    client, bucket = _raw(ws)
    client.put_object(Bucket=bucket, Key="input/direct.csv", Body=b"x,y\n1,2\n")
    [info] = store.list("input/")
    assert info.sha256 == hashlib.sha256(b"x,y\n1,2\n").hexdigest() and info.epoch == 0
    assert store.get("input/direct.csv", version=info.version) == b"x,y\n1,2\n"
    assert all(not i.key.startswith("_mrbatch/") for i in store.list())


def test_the_change_feed_prefix_is_mrbatchs_own(ws: Workspace) -> None:
    store = backends.open_object_store(ws, ws.regions[0])
    with pytest.raises(UsageError, match="mrbatch's own"):
        store.put("_mrbatch/feed/00000000000000000001", b"{}")


def test_purge_blanks_feed_entries_and_aborts_abandoned_uploads(ws: Workspace) -> None:
    store = backends.open_object_store(ws, ws.regions[0])
    client, bucket = _raw(ws)
    old = store.put("input/a.csv", b"a\n1\n")
    store.put("input/a.csv", b"a\n2\n")
    started = client.create_multipart_upload(Bucket=bucket, Key="runs/dead/out.csv")
    end = store.last_seq()
    purged = store.purge(older_than=time.time() + 1)
    assert (purged.versions, purged.bytes) == (1, 4)
    # The superseded version's entry is empty, not gone: its position stays taken.
    entry = client.get_object(Bucket=bucket, Key=feed_key(old.seq))["Body"].read()
    assert entry == b""
    assert [c.seq for c in store.changes(0) if c.key == "input/a.csv"] == [end]
    versions = client.list_object_versions(Bucket=bucket, Prefix=feed_key(old.seq))["Versions"]
    assert [v["Size"] for v in versions] == [0]  # the entry's old bytes left the bucket
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert started["UploadId"] not in [u["UploadId"] for u in uploads]


def test_a_version_another_process_purged_is_found_again(ws: Workspace) -> None:
    """A process remembers which S3 version holds which bytes; when another process purged that
    version while the same bytes came back in a newer one, a read finds the newer one."""
    store = backends.open_object_store(ws, ws.regions[0])
    client, bucket = _raw(ws)
    first = store.put("reference/r.csv", b"k\n1\n")
    store.put("reference/r.csv", b"k\n2\n")
    first_id = IDS[(bucket, "reference/r.csv", first.sha256)]
    store.put("reference/r.csv", b"k\n1\n")  # the same bytes again, in a third version
    # What this process knew before, and what another process's purge did meanwhile:
    IDS[(bucket, "reference/r.csv", first.sha256)] = first_id
    client.delete_object(Bucket=bucket, Key="reference/r.csv", VersionId=first_id)
    assert store.get("reference/r.csv", version=first.sha256) == b"k\n1\n"
    IDS[(bucket, "reference/r.csv", first.sha256)] = first_id
    assert store.get_range("reference/r.csv", 2, 1, version=first.sha256) == b"1"


def test_a_replicator_passes_a_change_whose_bytes_are_gone(ws: Workspace) -> None:
    """A feed entry can outlive its version (written twice by a crash between the entry and
    its tag, then purged): replication passes it once the key has moved on."""
    source = backends.open_object_store(ws, ws.regions[0])
    client, bucket = _raw(ws)
    gone = source.put("input/a.csv", b"a\n1\n")
    source.put("input/a.csv", b"a\n2\n")
    gone_id = IDS[(bucket, "input/a.csv", gone.sha256)]
    client.delete_object(Bucket=bucket, Key="input/a.csv", VersionId=gone_id)
    replicator = Replicator(ws, ws.regions[1])
    replicator.run_once()
    dest = backends.open_object_store(ws, ws.regions[1])
    assert dest.get("input/a.csv") == b"a\n2\n"
    assert replicator.dest_table.get_cursor(cursor_name("objects", ws.regions[0])) > gone.seq
