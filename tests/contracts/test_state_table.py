"""The state table contract, run against every state table in :mod:`tests.contracts.backends`."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from mrbatch.config.workspace import Workspace
from mrbatch.errors import ConflictError, NotFoundError, UnavailableError
from mrbatch.faults import FaultPoints
from mrbatch.ports import Record, StateTable


def test_insert_get_and_conflict(table: StateTable) -> None:
    rec = table.insert("run/1", "run", {"status": "CLAIMED"}, epoch=1)
    assert (rec.version, rec.epoch, rec.writer) == (1, 1, table.region)
    got = table.get("run/1")
    assert got is not None and dict(got.body) == {"status": "CLAIMED"} and got.kind == "run"
    with pytest.raises(ConflictError):
        table.insert("run/1", "run", {"status": "CLAIMED"}, epoch=1)
    assert table.get("run/none") is None
    table.sync()  # every backend can make its writes durable (a restore asks before it reports)
    assert table.get("run/1") is not None


def test_update_is_compare_and_set(table: StateTable) -> None:
    table.insert("run/1", "run", {"n": 0}, epoch=1)
    rec = table.update("run/1", {"n": 1}, expected_version=1, epoch=1)
    assert rec.version == 2
    with pytest.raises(ConflictError):
        table.update("run/1", {"n": 99}, expected_version=1, epoch=1)
    with pytest.raises(NotFoundError):
        table.update("run/none", {}, expected_version=1, epoch=1)
    assert table.get("run/1").body == {"n": 1}  # type: ignore[union-attr]


def test_a_write_from_an_older_epoch_is_stale(table: StateTable) -> None:
    table.insert("run/1", "run", {"n": 0}, epoch=2)
    with pytest.raises(ConflictError, match="stale"):
        table.update("run/1", {"n": 1}, expected_version=1, epoch=1)


def test_only_one_of_many_concurrent_claims_wins(
    table_factory: Callable[[str], StateTable], table_workspace: Workspace
) -> None:
    wins: list[int] = []
    barrier = threading.Barrier(8, timeout=30)

    def claim(i: int) -> None:
        mine = table_factory(table_workspace.regions[0])
        barrier.wait()
        try:
            mine.insert("run/contended", "run", {"by": i}, epoch=1)
            wins.append(i)
        except ConflictError:
            pass

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a claim did not return"
    assert len(wins) == 1


def test_scan_by_kind_and_prefix(table: StateTable) -> None:
    table.insert("chunk/r1/00001", "chunk", {"i": 1}, epoch=1)
    table.insert("chunk/r1/00000", "chunk", {"i": 0}, epoch=1)
    table.insert("chunk/r2/00000", "chunk", {"i": 0}, epoch=1)
    table.insert("run/r1", "run", {}, epoch=1)
    assert [r.pk for r in table.scan("chunk", prefix="chunk/r1/")] == [
        "chunk/r1/00000",
        "chunk/r1/00001",
    ]
    assert [r.pk for r in table.scan("run")] == ["run/r1"]


def test_change_feed(table: StateTable) -> None:
    start = table.last_seq()
    table.insert("a", "run", {}, epoch=1)
    table.insert("b", "run", {}, epoch=1)
    table.update("a", {"x": 1}, expected_version=1, epoch=1)
    changes = table.changes(start)
    assert [c.pk for c in changes] == ["b", "a"]  # a record appears once, at its latest seq
    assert table.changes(changes[-1].seq) == []


def test_replica_merge_rule(
    table_factory: Callable[[str], StateTable], table_workspace: Workspace
) -> None:
    a, b = table_factory(table_workspace.regions[0]), table_factory(table_workspace.regions[1])
    rec = a.insert("run/1", "run", {"n": 1}, epoch=1)
    assert b.apply_replica(rec) is True
    assert b.apply_replica(rec) is False  # idempotent
    assert b.get("run/1").writer == a.region  # type: ignore[union-attr]
    newer = b.update("run/1", {"n": "epoch 2"}, expected_version=1, epoch=2)
    late = a.update("run/1", {"n": "late, epoch 1"}, expected_version=1, epoch=1)
    assert late.updated > newer.updated
    assert b.apply_replica(late) is False  # higher epoch wins over a later write
    assert a.apply_replica(newer) is True
    assert a.get("run/1").body == b.get("run/1").body == {"n": "epoch 2"}  # type: ignore[union-attr]
    later = replace(newer, updated=newer.updated + 1, body={"n": "later"}, writer=a.region)
    assert b.apply_replica(later) is True  # within an epoch, the last writer wins


def test_cursors_are_local(table: StateTable) -> None:
    assert table.get_cursor("x") == 0
    start = table.last_seq()
    table.set_cursor("x", 42)
    table.set_cursor("x", 43)
    assert table.get_cursor("x") == 43
    assert table.changes(start) == []  # cursors never enter the change feed


def test_state_fault(table: StateTable, table_workspace: Workspace) -> None:
    with FaultPoints(table_workspace.faults_path).armed("state", region=table.region):
        with pytest.raises(UnavailableError):
            table.get("x")
        with pytest.raises(UnavailableError):
            table.insert("x", "run", {}, epoch=1)
    assert table.get("x") is None


def test_a_large_record_round_trips(
    table_factory: Callable[[str], StateTable], table_workspace: Workspace
) -> None:
    """A body larger than a DynamoDB item may hold (400 KB) is stored all the same, and its
    every path (insert, update, get, scan, the change feed, replication) keeps it whole."""
    a, b = table_factory(table_workspace.regions[0]), table_factory(table_workspace.regions[1])
    # Random hex compresses to about half: 1.2 MB of it is still 600 KB compressed.
    big = {"history": [secrets.token_hex(600) for _ in range(1000)]}
    start = a.last_seq()
    rec = a.insert("run/big", "run", big, epoch=1)
    assert a.get("run/big").body == big  # type: ignore[union-attr]
    smaller = {"history": big["history"][:400], "n": 2}
    rec = a.update("run/big", smaller, expected_version=1, epoch=1)
    assert a.get("run/big").body == smaller  # type: ignore[union-attr]
    assert [r.body for r in a.scan("run", prefix="run/big")] == [smaller]
    fed = [r for r in a.changes(start) if r.pk == "run/big"]
    assert [r.body for r in fed] == [smaller]
    assert b.apply_replica(rec) is True
    assert b.get("run/big").body == smaller  # type: ignore[union-attr]
    small = a.update("run/big", {"n": 3}, expected_version=2, epoch=1)
    assert a.get("run/big").body == {"n": 3} and small.version == 3  # type: ignore[union-attr]


def test_another_handle_replicates_over_a_local_record(
    table_factory: Callable[[str], StateTable], table_workspace: Workspace
) -> None:
    """The replicator is another process than the region that wrote a record: its write over
    that record, and its updates after, keep the change feed in order."""
    a, b = table_factory(table_workspace.regions[0]), table_factory(table_workspace.regions[1])
    b.insert("run/1", "run", {"n": "b"}, epoch=1)
    newer = a.insert("run/1", "run", {"n": "a"}, epoch=2)
    start = b.last_seq()
    replicator = table_factory(table_workspace.regions[1])  # knows nothing of b's positions
    assert replicator.apply_replica(newer) is True
    assert b.get("run/1").body == {"n": "a"}  # type: ignore[union-attr]
    fed = b.changes(start)
    assert [r.pk for r in fed] == ["run/1"] and fed[0].seq > start


def test_delete_leaves_a_tombstone_that_replicates(
    table_factory: Callable[[str], StateTable], table_workspace: Workspace
) -> None:
    a, b = table_factory(table_workspace.regions[0]), table_factory(table_workspace.regions[1])
    rec = a.insert("run/1", "run", {"n": 1}, epoch=1)
    assert b.apply_replica(rec)
    start = a.last_seq()
    assert a.delete("run/1", epoch=1) is True
    assert a.delete("run/1", epoch=1) is False  # idempotent
    assert a.delete("run/none", epoch=1) is False
    assert a.get("run/1") is None and list(a.scan("run")) == []
    with pytest.raises(NotFoundError):
        a.update("run/1", {"n": 2}, expected_version=rec.version, epoch=1)
    [tombstone] = a.changes(start)
    assert tombstone.deleted and tombstone.pk == "run/1" and tombstone.version > rec.version
    assert b.apply_replica(tombstone) is True  # the deletion replicates...
    assert b.get("run/1") is None
    assert b.apply_replica(rec) is False  # ...and the record it deleted cannot come back
    again = a.insert("run/1", "run", {"n": "again"}, epoch=1)  # a pk may be created again
    assert again.version > tombstone.version and a.get("run/1").body == {"n": "again"}  # type: ignore[union-attr]


def test_purge_forgets_old_tombstones_only(table: StateTable) -> None:
    table.insert("run/old", "run", {}, epoch=1)
    table.delete("run/old", epoch=1)
    table.insert("run/live", "run", {}, epoch=1)  # newer than the tombstone
    cutoff = time.time() + 1  # every tombstone so far is older than this
    assert table.purge(older_than=cutoff - 60) == 0  # too young
    assert table.purge(older_than=cutoff) == 1
    assert table.purge(older_than=cutoff) == 0  # idempotent
    assert [r.pk for r in table.changes(0)] == ["run/live"]
    assert table.get("run/live") is not None


def test_purge_never_gives_a_feed_position_out_twice(table: StateTable) -> None:
    table.insert("run/a", "run", {}, epoch=1)
    table.delete("run/a", epoch=1)  # the newest change is this tombstone
    newest = table.last_seq()
    table.purge(older_than=time.time() + 1)
    fresh = table.insert("run/b", "run", {}, epoch=1)
    assert fresh.seq > newest  # a replicator whose cursor is at `newest` must see it


def test_a_writer_that_knows_no_positions_writes_after_the_end(
    table_factory: Callable[[str], StateTable], table_workspace: Workspace
) -> None:
    """Another process (a `put`, a replicator) knows nothing of the feed: its write still
    lands after every position a reader has passed, even where writing a record again or
    deleting it left no change at an earlier position."""
    region = table_workspace.regions[0]
    a = table_factory(region)
    a.insert("run/1", "run", {}, epoch=1)
    a.update("run/1", {"n": 2}, expected_version=1, epoch=1)
    a.insert("run/2", "run", {}, epoch=1)
    a.delete("run/2", epoch=1)
    seen = a.last_seq()
    fresh = table_factory(region)
    written = fresh.insert("run/3", "run", {}, epoch=1)
    assert written.seq > seen
    assert [r.pk for r in a.changes(seen)] == ["run/3"]


def test_a_writer_that_saw_the_feed_long_ago_writes_over_a_record_moved_on(
    table_factory: Callable[[str], StateTable], table_workspace: Workspace
) -> None:
    """A replicator saw the feed's end a while ago; meanwhile the region's own process wrote a
    record at the next position, or again at later ones. The replicator's write over that
    record still lands after it, and the feed stays in order."""
    region = table_workspace.regions[0]
    replicator, process = table_factory(region), table_factory(region)
    replicator.insert("note/seen", "note", {}, epoch=1)  # the replicator knows the end here
    rec = process.insert("run/1", "run", {"n": 1}, epoch=1)  # the position after it
    rec = _over(replicator, process, rec, start=process.last_seq())
    rec = process.update("run/1", {"n": 2}, expected_version=rec.version, epoch=2)
    rec = process.update("run/1", {"n": 3}, expected_version=rec.version, epoch=2)
    _over(replicator, process, rec, start=process.last_seq())


def _over(replicator: StateTable, process: StateTable, rec: Record, start: int) -> Record:
    newer = replace(rec, body={"n": "replica"}, writer="elsewhere", updated=rec.updated + 1)
    assert replicator.apply_replica(newer) is True
    fed = process.changes(start)
    assert [r.pk for r in fed] == ["run/1"] and fed[0].seq > rec.seq
    stored = process.get("run/1")
    assert stored is not None and stored.body == {"n": "replica"}
    return stored
