"""Durable orchestration: a region process killed at any moment, started again, finishes every
run with byte-identical output and no effect doubled (one output version, one mail)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from mrbatch import backends
from mrbatch.config.initialize import sample_bytes
from mrbatch.faults import FaultPoints
from mrbatch.model.records import RunStatus
from mrbatch.observe import views
from mrbatch.runtime import supervisor
from tests.conftest import Deployment, make_workspace
from tests.expected import expected_output
from tests.helpers import eventually, finished, loop_passes, mails, put, run_of
from tests.smtp_server import SmtpServer

SAMPLE = sample_bytes("orders.csv")


def _region_dead(dep: Deployment, region: str) -> bool:
    return supervisor.pid_of(dep.ws, supervisor.Proc("region", region)) is None


def test_kill_9_at_random_moments(tmp_path: Path) -> None:
    """SIGKILL the active region's process group (process and workers) repeatedly while three
    multi-chunk files are in flight, restarting it each time."""
    ws = make_workspace(tmp_path / "ws", chunk_rows=400)  # 25 chunks per file
    dep = Deployment(ws)
    dep.up()
    rng = random.Random(20261123)
    try:
        active = ws.regions[0]
        bodies = {f"input/crash-{i}.csv": SAMPLE for i in range(3)}
        infos = [put(ws, key, data) for key, data in bodies.items()]
        kills = 0
        for _ in range(6):
            time.sleep(rng.uniform(0.05, 0.6))
            if dep.kill_region(active) is not None:
                kills += 1
            supervisor.start(ws, only=[supervisor.Proc("region", active)])
        assert kills >= 5
        runs = [finished(ws, info, timeout=80) for info in infos]
        for run in runs:
            assert run.status is RunStatus.COMPLETED, run.reason
            assert (run.rows_in, run.rows_out, run.rows_rejected) == (10_000, 10_000, 0)
        store = backends.open_object_store(ws, active)
        for key in bodies:
            assert store.get(key.replace("input/", "output/")) == expected_output()
        assert len(mails(ws)) == 3
        assert len(views.all_runs(ws)) == 3
    finally:
        dep.down()


CRASH_POINTS = ["after-claim", "after-split", "after-publish-copy", "after-mail-sent"]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_between_an_effect_and_its_record(deployment: Deployment, point: str) -> None:
    ws = deployment.ws
    active = ws.regions[0]
    faults = FaultPoints(ws.faults_path)
    fault = faults.arm(f"crash:{point}", region=active)
    info = put(ws, "input/crash.csv", SAMPLE)
    eventually(lambda: _region_dead(deployment, active), 60, f"the crash at {point}")
    faults.disarm(fault.id)
    store = backends.open_object_store(ws, active)
    published = store.head("output/crash.csv")
    supervisor.start(ws, only=[supervisor.Proc("region", active)])
    run = finished(ws, info)
    assert run.status is RunStatus.COMPLETED, run.reason
    assert store.get("output/crash.csv") == expected_output()
    after = store.head("output/crash.csv")
    assert after is not None
    if published is not None:  # the publish before the crash is not repeated as a new version
        assert after.seq == published.seq
    assert len(mails(ws)) == 1
    statuses = [h["status"] for h in run.history]
    assert statuses.count("COMPLETED") == 1 and statuses.count("PUBLISHED") == 1


def test_a_failing_mail_server_is_retried_and_shows(tmp_path: Path) -> None:
    with SmtpServer() as smtp:
        ws = make_workspace(
            tmp_path / "ws",
            backends={"notifier": "smtp"},
            notify={
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp.port,
                "retry_backoff": "200ms",
                "attempts": 100,
            },
        )
        smtp.handler.failing = True
        dep = Deployment(ws)
        dep.up()
        try:
            info = put(ws, "input/mail.csv", SAMPLE)

            def stuck_with_error() -> object:
                run = run_of(ws, info.key, info.sha256)
                return run if run and run.mail_error and run.mail_attempts >= 2 else None

            run = eventually(stuck_with_error, 60, "failed mail attempts to be recorded")
            assert run.status is RunStatus.PUBLISHED  # never COMPLETED without its mail
            assert "451" in (run.mail_error or "")

            def shown_in_status() -> list | None:  # type: ignore[type-arg]
                region = views.status(ws)["regions"][ws.regions[0]]
                return region.get("mail_retrying") or None

            retrying = eventually(shown_in_status, 30, "the failing mail to show in status")
            assert retrying[0]["input_key"] == "input/mail.csv" and "451" in retrying[0]["error"]
            assert smtp.handler.refused >= 2
            smtp.handler.failing = False
            run = finished(ws, info)
            assert run.status is RunStatus.COMPLETED and run.mail_error is None
            loop_passes(ws, ws.regions[0])  # the region goes on; it sends nothing more
            assert len(smtp.handler.messages) == 1
            assert smtp.handler.messages[0]["Message-ID"] == f"<{run.run_id}@mrbatch>"
        finally:
            dep.down()


def test_a_storage_outage_longer_than_the_retry_budget_fails_nothing(tmp_path: Path) -> None:
    """Chunk tasks that fail because the bucket is unavailable wait for it; they do not use up
    the chunk's attempts (4 attempts with 0.5 s backoff would be spent in about 4 s)."""
    ws = make_workspace(tmp_path / "ws", chunk_rows=400)
    dep = Deployment(ws)
    dep.up()
    try:
        active = ws.regions[0]
        table = backends.open_state_table(ws, active)
        infos = [put(ws, f"input/outage-{i}.csv", SAMPLE) for i in range(3)]
        eventually(lambda: any(True for _ in table.scan("chunk")), 30, "chunks to start")
        FaultPoints(ws.faults_path).arm("storage", region=active, duration=6.0)
        for info in infos:
            run = finished(ws, info, timeout=80)
            assert run.status is RunStatus.COMPLETED, run.reason
        store = backends.open_object_store(ws, active)
        for info in infos:
            assert store.get(info.key.replace("input/", "output/")) == expected_output()
        assert len(mails(ws)) == 3
        heartbeat = backends.open_control_plane(ws).heartbeats()[active]
        assert heartbeat.info["stats"].get("chunk_executions_failed", 0) > 0  # the fault bit
    finally:
        dep.down()
