"""A presigned link mailed before a failover downloads the same bytes after it, while the old
region is down (its process killed and its bucket unreachable)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mrbatch import backends
from mrbatch.config.initialize import sample_bytes
from mrbatch.faults import FaultPoints
from mrbatch.model.records import RunStatus
from mrbatch.recovery import runbook
from tests.conftest import Deployment, make_workspace
from tests.gateway_support import metric, metrics
from tests.helpers import eventually, finished, mail_link, mails, put

SAMPLE = sample_bytes("orders.csv")


@pytest.fixture
def dep(tmp_path: Path) -> Iterator[Deployment]:
    ws = make_workspace(tmp_path / "ws", failover={"min_switch_interval": "1s", "max_wait": "5s"})
    with Deployment(ws) as deployment:
        yield deployment


def test_a_link_from_before_a_failover_works_after_it(dep: Deployment) -> None:
    ws = dep.ws
    old, new = ws.regions
    info = put(ws, "input/linked.csv", SAMPLE)
    run = finished(ws, info)
    assert run.status is RunStatus.COMPLETED, run.reason
    (message,) = mails(ws)
    link = mail_link(message)
    client = httpx.Client(timeout=30)
    before = client.get(link)
    assert before.status_code == 200 and before.headers["x-mrbatch-region"] == old
    body = before.content
    assert len(body) > 100_000
    # The output has replicated (as it would have, long before a disaster).
    standby = backends.open_object_store(ws, new)
    eventually(lambda: standby.head("output/linked.csv"), 30, "the output to replicate")

    # The old region goes down: process killed, bucket unreachable.
    dep.kill_region(old)
    FaultPoints(ws.faults_path).arm("storage", region=old, duration=600, note="region down")
    # Still the active region on paper: the access point reads around its dead bucket.
    during = client.get(link)
    assert during.status_code == 200 and during.content == body
    assert during.headers["x-mrbatch-region"] == new
    execution = runbook.Runbook(ws, "failover", new, yes=True).execute()
    assert execution.outcome == "succeeded", execution.reason
    routing = backends.open_control_plane(ws).routing()
    assert routing.active_region == new and routing.epoch == 2

    after = client.get(link)
    assert after.status_code == 200
    assert after.content == body
    assert after.headers["x-mrbatch-region"] == new
    assert after.headers["etag"] == before.headers["etag"]
    head = client.head(link)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(body))
    part = client.get(link, headers={"range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == body[100:1100]
    client.close()

    # The gateway's view of it: the new region serves, the old one is fenced and down.
    values = metrics(ws)
    assert metric(values, "mrbatch_gateway_downloads_total", region=new) == 3
    assert metric(values, "mrbatch_region_state", region=old, state="FENCED") == 1
    assert metric(values, "mrbatch_region_up", region=old) == 0
    assert metric(values, "mrbatch_routing_epoch") == 2
    assert metric(values, "mrbatch_plan_executions", plan="failover", outcome="succeeded") == 1
