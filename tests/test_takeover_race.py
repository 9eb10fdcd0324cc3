"""Two takers race for one run: the loser writes nothing at all.

Found by the scenario runner (seed 1, crash-failover): the failover plan's reconcile step and
the new region's own continuous takeover raced for the same run. The loser had reset a chunk
record before it lost the conditional write of the run, and the winner's next chunk write met
the bumped version, so a run nobody else owned was let go and stayed PROCESSING for ever. A
takeover is now one conditional write of the run record (the chunks to run again are listed in
it, and the winner's driver resets them), so a loser has nothing to undo.

Deterministic: region processes driven tick by tick with the inline executor, replication
applied by hand, the routing switched by hand."""

from __future__ import annotations

import time
from concurrent.futures import wait
from pathlib import Path

from mrbatch import backends
from mrbatch.config.initialize import sample_bytes
from mrbatch.engine.region import RegionProcess
from mrbatch.engine.takeover import Takeover, take_over
from mrbatch.faults import FaultPoints
from mrbatch.model.keys import run_id_for
from mrbatch.model.records import CHUNK, ChunkRun, ChunkStatus, FileRun, RunStatus, run_pk
from mrbatch.runtime.replication import Replicator
from tests.conftest import make_workspace
from tests.expected import expected_output
from tests.helpers import put

SAMPLE = sample_bytes("orders.csv")


def test_a_losing_taker_writes_nothing_and_the_winner_finishes(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", chunk_rows=1_000, backends={"executor": "inline"})
    old, new = ws.regions
    info = put(ws, "input/race.csv", SAMPLE, region=old)
    run_id = run_id_for(info.key, info.sha256)
    first = RegionProcess(ws, old)
    try:
        for _ in range(100):  # until every chunk is DONE and recorded, before the merge
            first.tick()
            done = [
                ChunkRun.from_record(r).status is ChunkStatus.DONE
                for r in backends.open_state_table(ws, old).scan(CHUNK)
            ]
            if done and all(done):
                break
        else:
            raise AssertionError("the run never got through its chunks")
    finally:
        first.orch.shutdown()
        first.executor.shutdown()
    # The records replicate; of the objects only the input and half the chunk outputs make it
    # to the new region before the old one dies.
    with FaultPoints(ws.faults_path).armed("replication:objects", region=new):
        replicator = Replicator(ws, new)
        while replicator.run_once():
            pass
    source, replica = (backends.open_object_store(ws, r) for r in (old, new))
    wanted = [info.key for info in source.list("versions/")]
    for record in backends.open_state_table(ws, new).scan(CHUNK):
        chunk = ChunkRun.from_record(record)
        if chunk.index % 2:
            wanted += [chunk.output_key or "", chunk.rejected_key or ""]
    for key in wanted:
        info = source.head(key)
        assert info is not None
        with source.open(key) as stream:
            assert replica.apply_replica(info, stream)
    control = backends.open_control_plane(ws)
    routing = control.switch(new, expected_epoch=1, min_interval=0, force=True)
    store = backends.open_object_store(ws, new)
    table = backends.open_state_table(ws, new)
    stale = table.get(run_pk(run_id))
    assert stale is not None and FileRun.from_record(stale).status is RunStatus.PROCESSING

    def chunk_versions() -> dict[str, int]:
        return {r.pk: r.version for r in table.scan(CHUNK)}

    before = chunk_versions()
    args = {"region": new, "routing": routing, "store": store, "table": table}
    winner = take_over(stale, config=ws.config, **args)  # type: ignore[arg-type]
    assert isinstance(winner, Takeover)
    assert winner.chunks_redone == 5 and winner.chunks_kept == 5
    assert chunk_versions() == before  # the winner's write is the run record alone
    # The loser read the run before the winner's write: it loses and touches nothing.
    assert take_over(stale, config=ws.config, **args) is None  # type: ignore[arg-type]
    assert chunk_versions() == before
    run = FileRun.from_record(table.get(run_pk(run_id)))  # type: ignore[arg-type]
    assert run.region == new and run.epoch == 2 and run.redo_chunks
    second = RegionProcess(ws, new)
    try:
        # Ticks as the region loop makes them, waiting (bounded) between two for what is in
        # flight: the merge runs in a thread of its own, and on a busy machine 300 ticks in a
        # row could pass before it finished (the test then failed now and then).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            second.tick()
            record = table.get(run_pk(run_id))
            assert record is not None
            if FileRun.from_record(record).status.terminal:
                break
            wait([f for f in second.orch.futures() if not f.done()], timeout=0.5)
    finally:
        second.orch.shutdown()
        second.executor.shutdown()
    run = FileRun.from_record(table.get(run_pk(run_id)))  # type: ignore[arg-type]
    assert run.status is RunStatus.COMPLETED, (run.status, run.reason)
    assert store.get("output/race.csv") == expected_output()
    # The chunks it ran again were reset in the new round by the new driver, the kept ones not.
    chunks = [ChunkRun.from_record(r) for r in table.scan(CHUNK)]
    assert {c.index for c in chunks if c.round == run.redriven} == set(run.redo_chunks)
