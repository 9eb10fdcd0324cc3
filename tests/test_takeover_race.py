"""Regression: a losing taker must not strand a run.

Found by the scenario runner (seed 1, crash-failover): the failover plan's reconcile step and
the new region's own continuous takeover raced for the same run. The loser had read the run
before the winner took it over, reset a chunk record (bumping its version) and only then lost
the conditional write of the run. The winner's next chunk write met the bumped version, so its
orchestrator "let go" of a run nobody else owned: the run stayed PROCESSING for ever.

Deterministic here: one region process driven tick by tick with the inline executor, and the
loser's write made by hand between two ticks."""

from __future__ import annotations

from pathlib import Path

from mrbatch import backends
from mrbatch.initialize import sample_bytes
from mrbatch.keys import run_id_for
from mrbatch.records import CHUNK, ChunkRun, ChunkStatus, FileRun, RunStatus, run_pk
from mrbatch.region import RegionProcess
from tests.conftest import make_workspace
from tests.expected import expected_output

SAMPLE = sample_bytes("orders.csv")


def test_a_chunk_reset_by_a_losing_taker_does_not_strand_the_run(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", chunk_rows=2_500, backends={"executor": "inline"})
    region = ws.regions[0]
    store = backends.open_object_store(ws, region)
    table = backends.open_state_table(ws, region)
    info = store.put("input/race.csv", SAMPLE)
    pk = run_pk(run_id_for(info.key, info.sha256))
    process = RegionProcess(ws, region)
    try:
        for _ in range(50):  # until chunk tasks have run but their results are not recorded
            process.tick()
            progress = process.orch.runs.get(pk.removeprefix("run/"))
            if progress is not None and progress.chunk_futures:
                break
        else:
            raise AssertionError("the run never reached its chunk tasks")
        chunks = [
            r for r in table.scan(CHUNK) if ChunkRun.from_record(r).status is ChunkStatus.PENDING
        ]
        assert chunks
        # The losing taker: it resets a chunk (same content, new version), then loses the run.
        victim = chunks[0]
        table.update(victim.pk, victim.body, expected_version=victim.version, epoch=victim.epoch)
        for _ in range(200):
            process.tick()
            record = table.get(pk)
            assert record is not None
            if FileRun.from_record(record).status.terminal:
                break
        run = FileRun.from_record(table.get(pk))  # type: ignore[arg-type]
        assert run.status is RunStatus.COMPLETED, (run.status, run.reason)
        assert store.get("output/race.csv") == expected_output()
    finally:
        process.orch.shutdown()
        process.executor.shutdown()
