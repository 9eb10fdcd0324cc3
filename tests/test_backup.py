"""Backup and point-in-time restore, with real processes and the real command line.

A region whose bucket and state are deleted outright is rebuilt from a backup directory,
catches up by replication (both ways: its cursors and the other region's on it are handled)
and ``verify`` is clean; a restore to a time before a bad reference upload brings the old
reference back; bad input is refused with a clear message and the right exit code."""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from mrbatch import backends
from mrbatch.config.initialize import sample_bytes
from mrbatch.config.workspace import Workspace
from mrbatch.maintain.backup import take_backup
from mrbatch.maintain.restore import restore
from mrbatch.model.records import RunStatus
from tests.conftest import Deployment, make_workspace
from tests.helpers import drained, eventually, finished, mrbatch, put

SAMPLE = sample_bytes("orders.csv").split(b"\n")
REFERENCE = sample_bytes("financial.csv")


def small_file(index: int, rows: int = 40) -> bytes:
    """A valid orders file: the header and a slice of the sample's rows (uuids it can join)."""
    start = 1 + index * rows
    return b"\n".join([SAMPLE[0], *SAMPLE[start : start + rows]]) + b"\n"


def blobs(dest: Path) -> tuple[int, int]:
    files = [p for p in (dest / "blobs").rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def cli_json(ws: Workspace, *args: str) -> dict:
    done = mrbatch(ws, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def outputs(ws: Workspace, region: str) -> dict[str, bytes]:
    store = backends.open_object_store(ws, region)
    return {i.key: store.get(i.key) for i in store.list("output/")}


def test_a_deleted_region_is_restored_and_catches_up(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    lost, other = ws.regions  # the active region: it wrote nearly everything
    dest = tmp_path / "backup"
    with Deployment(ws) as dep:
        assert finished(ws, put(ws, "input/a0.csv", small_file(0))).status is RunStatus.COMPLETED
        drained(ws)
        first = cli_json(ws, "backup", "--to", str(dest))
        assert first["full"] and first["region"] == lost and first["blobs_copied"] > 0
        after_first = blobs(dest)
        assert after_first == (first["blobs_copied"], first["bytes_copied"])

        assert finished(ws, put(ws, "input/a1.csv", small_file(1))).status is RunStatus.COMPLETED
        drained(ws)
        second = cli_json(ws, "backup", "--to", str(dest))
        # Incremental: only what changed, and no blob copied twice.
        assert not second["full"] and second["base"] == first["id"]
        assert 0 < second["objects"] < first["objects"]
        assert blobs(dest) == (
            after_first[0] + second["blobs_copied"],
            after_first[1] + second["bytes_copied"],
        )
        before = outputs(ws, lost)
        assert len(before) == 2

        # A restore refuses a region whose processes run, and says which.
        refused = mrbatch(ws, "restore", "--from", str(dest), "--region", lost)
        assert refused.returncode == 1
        assert f"{lost}: its region process is running" in refused.stderr
        dep.down()

        # ... and one that still holds data, naming what it holds.
        refused = mrbatch(ws, "restore", "--from", str(dest), "--region", lost)
        assert refused.returncode == 1 and f"{lost} still holds data" in refused.stderr
        assert "--force" in refused.stderr

        _delete_region(ws.region_dir(lost))  # its bucket and its state, entirely
        started = time.monotonic()
        done = mrbatch(ws, "restore", "--from", str(dest), "--region", lost)
        assert done.returncode == 0, done.stderr
        assert "RPO" in done.stdout and "took" in done.stdout, done.stdout
        assert f"reset in {other}" in done.stdout
        print(f"restore command: {time.monotonic() - started:.2f} s\n{done.stdout}")
        assert outputs(ws, lost) == before  # the restore alone brought every output back

        dep.up()
        # One upload into each region after the restore: each reaches the other.
        into_lost = put(ws, "input/b-lost.csv", small_file(3), region=lost)
        into_other = put(ws, "input/b-other.csv", small_file(4), region=other)
        for info in (into_lost, into_other):
            assert finished(ws, info).status is RunStatus.COMPLETED
        for region in (lost, other):
            store = backends.open_object_store(ws, region)
            for info in (into_lost, into_other):
                eventually(lambda s=store, i=info: s.head(i.key), 30, f"{info.key} in {region}")
        drained(ws)
        report = cli_json(ws, "verify", "--final", "--wait", "60s")
        assert report["ok"], report["violations"]
        assert report["counts"]["ok"] + report["counts"]["recovered"] == 4
        after = outputs(ws, lost)
        assert {k: after[k] for k in before} == before  # byte-identical
        assert outputs(ws, other) == after


def test_point_in_time_restore_before_a_bad_reference_upload(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    region = ws.regions[0]
    dest = tmp_path / "backup"
    bad = tmp_path / "financial.csv"
    bad.write_bytes(REFERENCE.replace(b"\n535113847,934,", b"\n535113847,999934,", 1))
    with Deployment(ws) as dep:
        assert finished(ws, put(ws, "input/p.csv", small_file(0))).status is RunStatus.COMPLETED
        drained(ws)
        cli_json(ws, "backup", "--to", str(dest))
        good_until = time.time()
        uploaded = mrbatch(ws, "put", str(bad), "--key", "reference/financial.csv")
        assert uploaded.returncode == 0, uploaded.stderr
        drained(ws)
        second = cli_json(ws, "backup", "--to", str(dest))
        assert second["objects"] >= 1  # the bad reference is in the second backup
        dep.down()

        _delete_region(ws.region_dir(region))
        at = datetime.fromtimestamp(good_until, UTC).isoformat()
        restored = cli_json(ws, "restore", "--from", str(dest), "--region", region, "--at", at)
        assert restored["rpo"] <= good_until and restored["backups"] >= 1
        store = backends.open_object_store(ws, region)
        assert store.get("reference/financial.csv") == REFERENCE  # the old one

        # One region restored to a point in time is rebuilt data, not a rollback of the
        # deployment: the bad reference still lives in the other region and comes back.
        dep.up()
        eventually(
            lambda: store.get("reference/financial.csv") == bad.read_bytes(),
            30,
            "the newer reference to come back from the other region",
        )
        drained(ws)
        report = cli_json(ws, "verify", "--final", "--wait", "60s")
        assert report["ok"], report["violations"]


def test_bad_input_is_refused_clearly(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    region = ws.regions[1]

    missing = mrbatch(ws, "restore", "--from", str(tmp_path / "nope"), "--region", region)
    assert missing.returncode == 2 and "no such directory" in missing.stderr

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a backup")
    for args in (
        ("restore", "--from", str(other), "--region", region),
        ("backup", "--to", str(other)),
    ):
        refused = mrbatch(ws, *args)
        assert refused.returncode == 2 and "mrbatch-backup.json" in refused.stderr, refused.stderr

    dest = tmp_path / "backup"
    first = take_backup(ws, str(dest))
    listed = mrbatch(ws, "backups", "--from", str(dest), "--json")
    assert listed.returncode == 0 and [b["id"] for b in json.loads(listed.stdout)] == [first.id]
    early = datetime.fromtimestamp(first.taken_at - 3600, UTC).isoformat()
    before = mrbatch(ws, "restore", "--from", str(dest), "--region", region, "--at", early)
    assert before.returncode == 2 and "before the first backup" in before.stderr

    garbled = mrbatch(ws, "restore", "--from", str(dest), "--region", region, "--at", "noon")
    assert garbled.returncode == 2 and "not a time" in garbled.stderr

    unknown = mrbatch(ws, "restore", "--from", str(dest), "--region", "mars-1")
    assert unknown.returncode == 2 and "unknown region" in unknown.stderr

    # A directory or an S3 prefix (tests/test_backup_s3.py); any other scheme is named.
    gs = mrbatch(ws, "backup", "--to", "gs://bucket/prefix")
    assert gs.returncode == 2 and "gs:// is not a kind of backup target" in gs.stderr


# --------------------------------------------------------------------------- the replicator
def _wipe(ws: Workspace, region: str) -> None:
    _delete_region(ws.region_dir(region))


def _busy_history(ws: Workspace, region: str, writes: int = 6) -> None:
    """Enough writes in ``region`` that its feeds reach high positions."""
    store = backends.open_object_store(ws, region)
    table = backends.open_state_table(ws, region)
    record = table.insert("note/x", "note", {"n": 0}, epoch=1)
    for n in range(writes):
        store.put("notes/x", f"version {n}".encode())
        record = table.update("note/x", {"n": n + 1}, expected_version=record.version, epoch=1)


def test_replicator_reads_a_feed_that_went_backwards_again(tmp_path: Path, caplog) -> None:
    from mrbatch.runtime.replication import Replicator

    ws = make_workspace(tmp_path / "ws")
    source, dest = ws.regions
    _busy_history(ws, source)
    Replicator(ws, dest).run_once()
    into = backends.open_object_store(ws, dest)
    assert into.get("notes/x") == b"version 5"

    # The source is wiped and refilled by hand (no restore): its feeds restart at 1.
    _wipe(ws, source)
    backends.open_object_store(ws, source).put("notes/new", b"after the wipe")
    backends.open_state_table(ws, source).insert("note/new", "note", {"n": 1}, epoch=1)
    replicator = Replicator(ws, dest)
    with caplog.at_level("WARNING", logger="mrbatch.replication"):
        for _ in range(3):
            replicator.run_once()
    assert into.get("notes/new") == b"after the wipe"
    assert backends.open_state_table(ws, dest).get("note/new") is not None
    assert "reading it again from the start" in caplog.text


def test_replicator_follows_a_new_feed_generation(tmp_path: Path) -> None:
    """A rebuilt feed that already grew past the old cursor: only the generation tells."""
    from mrbatch.runtime.replication import GENERATION_CURSOR, Replicator

    ws = make_workspace(tmp_path / "ws")
    source, dest = ws.regions
    backends.open_object_store(ws, source).put("notes/old", b"old")
    Replicator(ws, dest).run_once()

    _wipe(ws, source)
    store = backends.open_object_store(ws, source)
    for n in range(6):  # positions 1..6, past the old cursor
        store.put(f"notes/new-{n}", f"new {n}".encode())
    backends.open_state_table(ws, source).set_cursor(GENERATION_CURSOR, 7)
    Replicator(ws, dest).run_once()
    into = backends.open_object_store(ws, dest)
    assert [i.key for i in into.list("notes/new-")] == [f"notes/new-{n}" for n in range(6)]


def test_a_restored_region_reclaims_its_own_changes(tmp_path: Path) -> None:
    """What a region wrote after its last backup lives on in the others, with that region
    as its origin; replication normally skips a region's own changes, a restored one must
    take them back."""
    from mrbatch.maintain.restore import restore
    from mrbatch.runtime.replication import Replicator, backlog

    ws = make_workspace(tmp_path / "ws")
    lost, other = ws.regions
    dest = tmp_path / "backup"
    take_backup(ws, str(dest), region=lost)
    _busy_history(ws, lost)  # after the backup: only replication has it
    Replicator(ws, other).run_once()
    _wipe(ws, lost)
    restore(ws, str(dest), region=lost)
    store = backends.open_object_store(ws, lost)
    assert store.head("notes/x") is None
    assert backlog(ws, other, lost).total > 0  # the reclaim counts as backlog
    Replicator(ws, lost).run_once()
    assert store.get("notes/x") == b"version 5"
    assert backends.open_state_table(ws, lost).get("note/x").body == {"n": 6}
    assert backlog(ws, other, lost).total == 0


# --------------------------------------------------------------------------- in-process
def test_an_interrupted_backup_leaves_dest_usable(tmp_path: Path) -> None:
    import pytest

    from mrbatch.errors import UnavailableError
    from mrbatch.faults import FaultPoints
    from mrbatch.maintain.catalog import catalog
    from mrbatch.maintain.restore import restore
    from mrbatch.maintain.target import open_target

    ws = make_workspace(tmp_path / "ws")
    region = ws.regions[0]
    dest = tmp_path / "backup"
    put(ws, "input/one.csv", small_file(0), region=region)
    first = take_backup(ws, str(dest))
    put(ws, "input/two.csv", small_file(1), region=region)
    # The bucket fails after the records were read: their file is written, no index entry.
    with FaultPoints(ws.faults_path).armed("storage", region=region):
        with pytest.raises(UnavailableError):
            take_backup(ws, str(dest), full=True)
    assert len(list((dest / "changes").iterdir())) == 2
    assert [e.id for e in catalog(open_target(str(dest)))] == [first.id]
    second = take_backup(ws, str(dest))
    assert second.base == first.id and second.objects == 2  # input/two.csv and its version

    _wipe(ws, region)
    report = restore(ws, str(dest), region=region)
    assert report.backups == 2
    assert backends.open_object_store(ws, region).get("input/two.csv") == small_file(1)


def test_a_lost_control_plane_comes_back_from_the_newest_snapshot(tmp_path: Path) -> None:
    from mrbatch.maintain.restore import restore

    ws = make_workspace(tmp_path / "ws")
    first, second = ws.regions
    control = backends.open_control_plane(ws)
    for target in (second, first, second):  # epoch 4, the second region active
        control.switch(target, expected_epoch=control.routing().epoch, min_interval=0, force=True)
    control.set_region_state(first, "STANDBY", expected_epoch=4)
    control.put_document("plan/20261130-x", {"plan": "failover", "outcome": "ok"})
    routing, documents = control.routing(), control.documents("")
    dest = tmp_path / "backup"
    take_backup(ws, str(dest))

    for path in ws.data_dir.glob("control.sqlite*"):
        path.unlink()
    _wipe(ws, first)
    report = restore(ws, str(dest), region=first)
    assert report.control_plane.startswith("restored from the snapshot: epoch 4")
    control = backends.open_control_plane(ws)
    again = control.routing()
    assert (again.epoch, again.active_region, again.regions, again.phase) == (
        routing.epoch,
        routing.active_region,
        routing.regions,
        routing.phase,
    )
    assert control.documents("") == documents  # the real epoch log and the plan log

    # An initialized control plane is shared: a restore leaves it as it is.
    _wipe(ws, first)
    kept = restore(ws, str(dest), region=first)
    assert kept.control_plane.startswith("kept")


def test_a_deleted_record_is_restored_deleted(tmp_path: Path) -> None:
    """A tombstone in a backup (a record garbage collection deleted) comes back as a
    tombstone, not as a live record with an empty body."""
    ws = make_workspace(tmp_path / "ws")
    region = ws.regions[0]
    table = backends.open_state_table(ws, region)
    table.insert("note/gone", "note", {"n": 1}, epoch=1)
    table.delete("note/gone", epoch=1)
    table.insert("note/kept", "note", {"n": 2}, epoch=1)
    take_backup(ws, str(tmp_path / "backup"), region=region)
    _wipe(ws, region)
    restore(ws, str(tmp_path / "backup"), region=region)
    table = backends.open_state_table(ws, region)
    assert table.get("note/gone") is None and [r.pk for r in table.scan("note")] == ["note/kept"]
    assert [r.deleted for r in table.changes(0) if r.pk == "note/gone"] == [True]


def _delete_region(path: Path) -> None:
    """Delete a region's data, as a lost disk would. SQLite removes its -wal file when the last
    connection closes, which a connection of this process being collected may do mid-walk."""

    def gone_already(function: object, name: str, exc_info: tuple[type, Exception, object]) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    shutil.rmtree(path, onerror=gone_already)
