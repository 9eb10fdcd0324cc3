"""``replication = "native"``: S3 Cross-Region Replication and DynamoDB global tables copy,
mrbatch copies nothing and still measures backlog and lag. moto replicates nothing, so the
test plays the provider's part itself (a copy that keeps the version's metadata and the
record's attributes, as CRR and global tables do) and watches the replicator see it arrive."""

from __future__ import annotations

from pathlib import Path

from mrbatch import backends
from mrbatch.runtime.replication import Replicator, backlog
from tests.moto_server import fresh_workspace


def test_native_replication_copies_nothing_and_measures_backlog(tmp_path: Path) -> None:
    ws = fresh_workspace(tmp_path / "ws", backends={"replication": "native"})
    a, b = ws.regions
    store_a, store_b = (backends.open_object_store(ws, r) for r in (a, b))
    table_a, table_b = (backends.open_state_table(ws, r) for r in (a, b))
    replicator = Replicator(ws, b)
    replicator.run_once()
    assert backlog(ws, a, b).total == 0  # the seeded reference data is in both already
    info = store_a.put("input/x.csv", b"a,b\n1,2\n")
    record = table_a.insert("accepted/x", "accepted", {"key": "input/x.csv"}, epoch=0)
    for _ in range(3):
        assert replicator.run_once() == 0  # copies nothing
    assert store_b.head("input/x.csv") is None and table_b.get("accepted/x") is None
    waiting = backlog(ws, a, b)
    assert (waiting.objects, waiting.records) == (1, 1) and waiting.oldest is not None
    assert waiting.lag(info.modified + 5) >= 5
    # The provider copies the object; the record is still on its way.
    store_b.apply_replica(info, store_a.open(info.key))
    replicator.run_once()
    assert (backlog(ws, a, b).objects, backlog(ws, a, b).records) == (0, 1)
    table_b.apply_replica(record)
    replicator.run_once()
    assert backlog(ws, a, b).total == 0 and replicator.applied == {"objects": 0, "records": 0}
