"""Crashes and failover on S3 + DynamoDB (moto's server mode): kill -9 of the active region
mid-run and `up` again (byte-identical output, one mail), then failover with the active region
killed; `verify` clean after each. One deployment, in that order."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from mrbatch import backends
from mrbatch.config.initialize import sample_bytes
from mrbatch.model.records import RunStatus
from mrbatch.observe import views
from mrbatch.runtime import supervisor
from tests.conftest import Deployment
from tests.expected import expected_output
from tests.helpers import mails, mrbatch, put, run_of
from tests.moto_server import clean, done_chunks, eventually, finished, fresh_workspace

SAMPLE = sample_bytes("orders.csv")


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # 2,000-row chunks: the sample file is 5 chunk tasks, so a kill after the first lands
    # mid-run (a chunk takes about a second on the test server).
    ws = fresh_workspace(tmp_path_factory.mktemp("aws-recovery") / "ws", chunk_rows=2000)
    with Deployment(ws) as deployment:
        yield deployment


def test_kill_9_mid_run_and_up_again(dep: Deployment) -> None:
    ws = dep.ws
    active = ws.regions[0]
    info = put(ws, "input/crash.csv", SAMPLE)
    eventually(lambda: done_chunks(ws, active) >= 1, 60, "a chunk to finish")
    assert dep.kill_region(active) is not None  # SIGKILL of its process group
    run = run_of(ws, info.key, info.sha256)
    assert run is not None and not run.status.terminal
    again = mrbatch(ws, "up", "--detach")
    assert again.returncode == 0, again.stdout + again.stderr
    run = finished(ws, info)
    assert run.status is RunStatus.COMPLETED, run.reason
    assert backends.open_object_store(ws, active).get("output/crash.csv") == expected_output()
    assert len(mails(ws)) == 1 and len(views.all_runs(ws)) == 1
    statuses = [h["status"] for h in run.history]
    assert statuses.count("PUBLISHED") == statuses.count("COMPLETED") == 1
    clean(ws)


def test_failover_with_the_active_region_killed(dep: Deployment) -> None:
    ws = dep.ws
    old, new = ws.regions
    info = put(ws, "input/mid.csv", SAMPLE)
    eventually(lambda: done_chunks(ws, old) >= 6, 60, "a chunk of this file to finish")
    dep.kill_region(old)
    run = run_of(ws, info.key, info.sha256)
    assert run is not None and not run.status.terminal
    result = mrbatch(ws, "failover", "--yes", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["epoch_after"] == 2
    run = finished(ws, info)
    assert run.status is RunStatus.COMPLETED, run.reason
    assert (run.region, run.epoch) == (new, 2)
    assert backends.open_object_store(ws, new).get("output/mid.csv") == expected_output()
    ids = [m["Message-ID"] for m in mails(ws)]
    assert len(ids) == len(set(ids)) == 2
    assert backends.open_control_plane(ws).routing().active_region == new
    supervisor.start(ws, only=[supervisor.Proc("region", old)])  # back, and fenced
    clean(ws)
