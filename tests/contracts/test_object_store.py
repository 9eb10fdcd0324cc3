"""The object store contract, run against every object store in :mod:`tests.contracts.backends`."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Callable

import pytest

from mrbatch.config.workspace import Workspace
from mrbatch.errors import NotFoundError, UnavailableError, UsageError
from mrbatch.faults import FaultPoints
from mrbatch.ports import ObjectInfo, ObjectStore, Purged


def test_put_then_get_head_and_stream(store: ObjectStore) -> None:
    info = store.put("input/a.csv", b"hello\n", meta={"k": "v"})
    assert info.key == "input/a.csv"
    assert info.size == 6
    assert info.sha256 == hashlib.sha256(b"hello\n").hexdigest()
    assert store.get("input/a.csv") == b"hello\n"
    with store.open("input/a.csv") as stream:
        assert stream.read() == b"hello\n"
    head = store.head("input/a.csv")
    assert head is not None and head.sha256 == info.sha256 and dict(head.meta) == {"k": "v"}


def test_put_streams_files_and_iterables(store: ObjectStore) -> None:
    big = bytes(range(256)) * 20_000  # 5 MB, several copy blocks
    assert store.put("x/file", io.BytesIO(big)).size == len(big)
    assert store.get("x/file") == big
    # Bytes and blocks larger than a copy block (the embedded store writes them in pieces).
    whole = store.put("x/bytes", big + b"!")
    assert whole.sha256 == hashlib.sha256(big + b"!").hexdigest() and whole.size == len(big) + 1
    assert store.get("x/bytes") == big + b"!"
    assert store.put("x/blocks", iter([b"<", big, memoryview(big)[:3_000_001]])).size == (
        1 + len(big) + 3_000_001
    )
    assert store.get("x/blocks") == b"<" + big + big[:3_000_001]
    assert (
        store.put("x/iter", iter([b"ab", b"", b"cd"])).sha256 == hashlib.sha256(b"abcd").hexdigest()
    )


def test_missing_objects(store: ObjectStore) -> None:
    assert store.head("nope") is None
    with pytest.raises(NotFoundError):
        store.get("nope")
    with pytest.raises(NotFoundError):
        store.open("nope")
    with pytest.raises(NotFoundError):
        store.copy("nope", "other")
    assert store.delete("nope") is False


def test_identical_put_is_a_no_op(store: ObjectStore) -> None:
    first = store.put("k", b"same", meta={"a": "1"})
    again = store.put("k", b"same", meta={"a": "1"})
    assert again.seq == first.seq  # no new version, no change-feed entry
    changed = store.put("k", b"same", meta={"a": "2"})
    assert changed.seq > first.seq


def test_a_version_stays_readable_after_overwrite(store: ObjectStore) -> None:
    old = store.put("k", b"old bytes")
    store.put("k", b"new bytes")
    assert store.get("k") == b"new bytes"
    assert store.get("k", version=old.version) == b"old bytes"
    with pytest.raises(NotFoundError):
        store.get("k", version="0" * 64)


def test_list_is_sorted_and_prefixed(store: ObjectStore) -> None:
    for key in ["input/b", "input/a", "output/a", "input/c/d"]:
        store.put(key, key.encode())
    assert [i.key for i in store.list("input/")] == ["input/a", "input/b", "input/c/d"]
    everything = [i.key for i in store.list()]
    assert everything == sorted(everything) and "output/a" in everything
    store.delete("input/b")
    assert [i.key for i in store.list("input/")] == ["input/a", "input/c/d"]


def test_copy_keeps_bytes_and_sets_meta(store: ObjectStore) -> None:
    src = store.put("a", b"payload")
    copy = store.copy("a", "b", meta={"run_id": "r1"}, epoch=3)
    assert copy.sha256 == src.sha256 and copy.epoch == 3 and dict(copy.meta) == {"run_id": "r1"}
    assert store.get("b") == b"payload"
    store.put("a", b"changed")
    assert store.copy("a", "c", version=src.version).sha256 == src.sha256


def test_delete_hides_and_feeds_a_tombstone(store: ObjectStore) -> None:
    info = store.put("gone", b"x")
    assert store.delete("gone") is True
    assert store.head("gone") is None
    tomb = [c for c in store.changes(info.seq) if c.key == "gone"]
    assert len(tomb) == 1 and tomb[0].deleted


def test_change_feed_orders_and_filters(store: ObjectStore) -> None:
    start = store.last_seq()
    store.put("input/1", b"1")
    store.put("output/1", b"1")
    store.put("input/2", b"2")
    inputs = store.changes(start, prefix="input/")
    assert [c.key for c in inputs] == ["input/1", "input/2"]
    everything = store.changes(start)
    assert [c.seq for c in everything] == sorted(c.seq for c in everything)
    assert store.last_seq() == everything[-1].seq
    assert store.changes(start, limit=1)[0].key == "input/1"


@pytest.mark.parametrize(
    "key", ["../etc/passwd", "/abs", "a//b", "a/./b", "a\x00b", "a\nb", "", "a\\b"]
)
def test_unsafe_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(UsageError):
        store.put(key, b"x")


def test_replica_merge_rule(
    store_factory: Callable[[str], ObjectStore], store_workspace: Workspace
) -> None:
    a = store_factory(store_workspace.regions[0])
    b = store_factory(store_workspace.regions[1])
    info = a.put("k", b"from a", epoch=1)
    assert b.apply_replica(info, a.open("k")) is True
    assert b.get("k") == b"from a"
    assert b.head("k").origin == a.region  # type: ignore[union-attr]
    assert b.apply_replica(info, a.open("k")) is False  # idempotent
    newer_epoch = b.put("k", b"from b, epoch 2", epoch=2)
    late = a.put("k", b"late write from a, epoch 1", epoch=1)
    assert late.modified > newer_epoch.modified
    assert b.apply_replica(late, a.open("k")) is False  # the higher epoch wins
    assert a.apply_replica(newer_epoch, b.open("k")) is True
    assert a.get("k") == b.get("k") == b"from b, epoch 2"
    a.sync()  # every backend can make its applied replicas durable (the replicator asks)
    assert a.head("k").sha256 == newer_epoch.sha256  # type: ignore[union-attr]


def test_replica_deletion_and_corruption(
    store_factory: Callable[[str], ObjectStore], store_workspace: Workspace
) -> None:
    a = store_factory(store_workspace.regions[0])
    b = store_factory(store_workspace.regions[1])
    info = a.put("k", b"bytes")
    b.apply_replica(info, a.open("k"))
    a.delete("k")
    tomb = a.changes(info.seq)[-1]
    assert b.apply_replica(tomb, None) is True
    assert b.head("k") is None
    other = a.put("j", b"real")
    with pytest.raises(Exception, match="corrupt"):
        b.apply_replica(other, io.BytesIO(b"tampered"))
    assert b.head("j") is None


def test_concurrent_writers_never_tear(store: ObjectStore) -> None:
    payloads = [bytes([i]) * 300_000 for i in range(8)]
    errors: list[BaseException] = []

    def write(p: bytes) -> None:
        try:
            for _ in range(5):
                store.put("contended", p)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a write did not return"
    assert not errors
    assert store.get("contended") in payloads


def test_storage_fault_makes_every_call_unavailable(
    store: ObjectStore, store_workspace: Workspace
) -> None:
    store.put("k", b"x")
    faults = FaultPoints(store_workspace.faults_path)
    with faults.armed("storage", region=store.region):
        for call in (
            lambda: store.get("k"),
            lambda: store.put("k2", b"y"),
            lambda: store.head("k"),
            lambda: list(store.list()),
        ):
            with pytest.raises(UnavailableError, match="injected fault"):
                call()
    assert store.get("k") == b"x"


def test_info_is_a_value(store: ObjectStore) -> None:
    info = store.put("v", b"1")
    assert isinstance(info, ObjectInfo)
    assert info.version and info.modified > 0 and info.origin == store.region


def test_get_range_reads_a_slice_of_a_version(store: ObjectStore) -> None:
    old = store.put("r", b"0123456789")
    store.put("r", b"abcdefghij")
    assert store.get_range("r", 2, 3) == b"cde"
    assert store.get_range("r", 8, 100) == b"ij"  # fewer bytes at the end of the object
    assert store.get_range("r", 2, 3, version=old.version) == b"234"
    with pytest.raises(NotFoundError):
        store.get_range("nope", 0, 1)


def test_a_version_opens_in_every_region_by_its_name(
    store_factory: Callable[[str], ObjectStore], store_workspace: Workspace
) -> None:
    """The rule every caller relies on: ``version`` names the bytes, not one bucket's copy.
    A version recorded in one region (a run's input, its reference, a chunk's output) opens
    in another after replication, even once the key has moved on there."""
    a = store_factory(store_workspace.regions[0])
    b = store_factory(store_workspace.regions[1])
    old = a.put("k", b"version one")
    assert b.apply_replica(old, a.open("k", version=old.version)) is True
    assert b.head("k").version == old.version  # type: ignore[union-attr]
    newer = a.put("k", b"version two")
    assert b.apply_replica(newer, a.open("k", version=newer.version)) is True
    assert b.get("k") == b"version two"
    assert b.get("k", version=old.version) == b"version one"
    assert b.get_range("k", 8, 3, version=old.version) == b"one"
    with b.open("k", version=newer.version) as stream:
        assert stream.read() == b"version two"
    assert b.copy("k", "k-old", version=old.version).version == old.version
    assert b.get("k-old") == b"version one"


def test_concurrent_replicas_converge_on_the_merge_rule(
    store_factory: Callable[[str], ObjectStore], store_workspace: Workspace
) -> None:
    """Two replicators applying versions of one key at once never let the lesser one win."""
    a = store_factory(store_workspace.regions[0])
    dest = store_workspace.regions[1]
    versions = [a.put(f"src/{i}", f"payload {i}".encode(), epoch=i % 3) for i in range(6)]
    infos = [
        ObjectInfo(
            key="contended",
            size=v.size,
            sha256=v.sha256,
            version=v.version,
            modified=v.modified,
            origin=a.region,
            epoch=v.epoch,
        )
        for v in versions
    ]
    errors: list[BaseException] = []

    def replicate(order: list[int]) -> None:
        mine = store_factory(dest)
        try:
            for i in order:
                mine.apply_replica(infos[i], a.open(versions[i].key))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=replicate, args=(order,))
        for order in ([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 5, 0, 3, 1, 4])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    best = max(infos, key=lambda i: (i.epoch, i.modified, i.origin))
    assert store_factory(dest).get("contended") == a.get(versions[infos.index(best)].key)


def test_purge_frees_superseded_versions_and_old_tombstones(store: ObjectStore) -> None:
    old = store.put("k", b"old bytes")
    new = store.put("k", b"new bytes")
    gone = store.put("gone", b"deleted bytes")
    store.delete("gone")
    store.put("last", b"a later change")  # the tombstone is not the newest position
    young_cutoff = time.time() - 60  # everything above is younger: nothing may go yet
    assert store.purge(older_than=young_cutoff) == Purged()
    assert store.get("k", version=old.version) == b"old bytes"
    cutoff = time.time() + 1
    purged = store.purge(older_than=cutoff)
    assert purged.tombstones == 1 and purged.versions == 2
    assert purged.bytes == len(b"old bytes") + len(b"deleted bytes")
    with pytest.raises(NotFoundError):
        store.get("k", version=old.version)  # the superseded version is gone...
    with pytest.raises(NotFoundError):
        store.get("gone", version=gone.version)
    assert store.get("k") == b"new bytes" == store.get("k", version=new.version)  # ...not the live
    assert "gone" not in [c.key for c in store.changes(0)]  # the tombstone left the feed
    assert store.purge(older_than=cutoff) == Purged()  # idempotent
    again = store.put("other", b"old bytes")  # bytes seen before, written again: readable
    assert store.get("other", version=again.version) == b"old bytes"


def test_purge_never_gives_a_feed_position_out_twice(store: ObjectStore) -> None:
    store.put("gone", b"x")
    store.delete("gone")  # the newest change is this tombstone
    newest = store.last_seq()
    store.purge(older_than=time.time() + 1)
    assert store.put("fresh", b"y").seq > newest


def test_after_a_purge_a_writer_that_knows_no_positions_writes_after_the_end(
    store_factory: Callable[[str], ObjectStore], store_workspace: Workspace
) -> None:
    """Another process knows nothing of the feed: after a purge freed the changes at earlier
    positions, its write still lands after every position a reader has passed."""
    region = store_workspace.regions[0]
    store = store_factory(region)
    store.put("k", b"one")
    store.put("k", b"two")
    store.put("gone", b"x")
    store.delete("gone")
    store.put("last", b"a later change")
    store.purge(older_than=time.time() + 1)
    seen = store.last_seq()
    written = store_factory(region).put("fresh", b"y")
    assert written.seq > seen
    assert [c.key for c in store.changes(seen)] == ["fresh"]
