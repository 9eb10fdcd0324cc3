"""An outage is not the step's fault: a bucket that stays unavailable for longer than a step's
retry budget fails nothing; the run waits and then finishes. Deterministic: one region process
driven step by step with the inline executor and a clock the test moves."""

from __future__ import annotations

from concurrent.futures import wait
from pathlib import Path

from mrbatch import backends
from mrbatch.access.accesspoint import AccessPoint
from mrbatch.config.initialize import sample_bytes
from mrbatch.engine.region import RegionProcess
from mrbatch.faults import FaultPoints
from mrbatch.model.keys import run_id_for
from mrbatch.model.records import FileRun, RunStatus, run_pk
from tests.conftest import make_workspace
from tests.expected import expected_output

SAMPLE = sample_bytes("orders.csv")


def test_a_storage_outage_during_split_uses_up_no_attempts(tmp_path: Path) -> None:
    ws = make_workspace(
        tmp_path / "ws", chunk_rows=2_500, backends={"executor": "inline"},
        pipeline={"chunk_attempts": 2},
    )  # fmt: skip
    region = ws.regions[0]
    located = AccessPoint(ws).put("input/outage.csv", SAMPLE)
    assert located.accepted is not None
    run_id = run_id_for(located.info.key, located.info.sha256)
    process = RegionProcess(ws, region)
    now = [1_000_000.0]
    process.orch.clock = lambda: now[0]
    faults = FaultPoints(ws.faults_path)
    try:
        routing = process.control.routing()
        process.orch.activate(routing)
        source = process.store.head(located.accepted.object_key)
        assert source is not None
        assert process.orch.claim(located.accepted, source, routing) is not None
        progress = process.orch.runs[run_id]
        with faults.armed("storage", region=region):  # the bucket goes before SPLIT runs
            for _ in range(12):  # six times the attempts it has, a minute of clock
                process.orch.step(routing)
                now[0] += 5.0
            assert run_id in process.orch.runs, "the run was given up during the outage"
            assert progress.attempts == 0 and progress.waits >= 10
        for _ in range(200):
            process.orch.step(routing)
            now[0] += 5.0
            if run_id not in process.orch.runs:
                break
            # The merge runs in a thread of its own: wait for it as the region loop does.
            wait([f for f in process.orch.futures() if not f.done()], timeout=5)
        run = FileRun.from_record(backends.open_state_table(ws, region).get(run_pk(run_id)))  # type: ignore[arg-type]
        assert run.status is RunStatus.COMPLETED, run.reason
        store = backends.open_object_store(ws, region)
        assert store.get("output/outage.csv") == expected_output()
    finally:
        process.orch.shutdown()
        process.executor.shutdown()
