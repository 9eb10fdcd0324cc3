"""/metrics (parsed with prometheus-client's parser) and the JSON API, against a deployment of
real region, replicator and gateway processes."""

from __future__ import annotations

import json

from mrbatch.config.initialize import sample_bytes
from mrbatch.model.records import RunStatus
from mrbatch.observe.metrics import MonotonicCounters, app_state
from mrbatch.runtime import supervisor
from tests.conftest import Deployment
from tests.gateway_support import get_json, metric, metrics, mrbatch
from tests.helpers import eventually, finished, put

SAMPLE = sample_bytes("orders.csv")
HEADER, *ROWS = SAMPLE.decode().splitlines(keepends=True)


def _orders(rows: int, bad: int = 0) -> bytes:
    """``rows`` sample rows, the last ``bad`` of them with an invalid uuid (rejected)."""
    lines = ROWS[:rows]
    for i in range(rows - bad, rows):
        lines[i] = "x" + lines[i]
    return (HEADER + "".join(lines)).encode()


def test_metrics_count_what_the_regions_do(deployment: Deployment) -> None:
    ws = deployment.ws
    active, standby = ws.regions
    before = metrics(ws)
    assert metric(before, "mrbatch_files_processed_total", region=active) == 0
    assert metric(before, "mrbatch_region_state", region=active, state="ACTIVE") == 1
    assert metric(before, "mrbatch_region_state", region=standby, state="STANDBY") == 1
    assert metric(before, "mrbatch_routing_epoch") == 1
    assert metric(before, "mrbatch_app_state", state="healthy") == 1
    for region in ws.regions:
        assert metric(before, "mrbatch_region_up", region=region) == 1
        assert metric(before, "mrbatch_replication_lag_seconds", region=region) is not None
        for kind in ("objects", "records"):
            assert (
                metric(before, "mrbatch_replication_backlog", region=region, kind=kind) is not None
            )

    for key, data in (("input/m1.csv", _orders(3_000)), ("input/m2.csv", _orders(1_000, bad=10))):
        info = put(ws, key, data)  # one after the other: the second finds the reference ready
        assert finished(ws, info).status is RunStatus.COMPLETED

    def counted() -> dict | None:  # type: ignore[type-arg]
        values = metrics(ws)
        done = metric(values, "mrbatch_files_processed_total", region=active) == 2
        return values if done else None

    after = eventually(counted, 30, "files_processed_total to reach 2")
    expected = {
        "mrbatch_files_split_total": 2,
        "mrbatch_executions_started_total": 2,
        "mrbatch_executions_succeeded_total": 2,
        "mrbatch_executions_failed_total": 0,
        "mrbatch_rows_processed_total": 4_000,
        "mrbatch_rows_rejected_total": 10,
        "mrbatch_files_reconciled_total": 0,
        "mrbatch_reference_preparations_total": 1,  # the second run's was prepared by then
    }
    for name, value in expected.items():
        assert metric(after, name, region=active) == value, name
        assert metric(after, name, region=standby) == 0, name
    chunks = metric(after, "mrbatch_chunk_executions_started_total", region=active)
    assert chunks == 3  # 2,500 rows a chunk: 2 for 3,000 rows, 1 for 1,000
    assert metric(after, "mrbatch_chunk_executions_succeeded_total", region=active) == chunks
    assert metric(after, "mrbatch_runs", status="COMPLETED") == 2
    assert metric(after, "mrbatch_gateway_uploads_total", region=active) is None  # not via HTTP
    applied = metric(after, "mrbatch_replication_applied_total", region=standby, kind="objects")
    assert applied is not None and applied > 0  # inputs and outputs reached the standby

    # A region restart resets the process's own counters, not the exported ones.
    old_pid = deployment.kill_region(active)
    supervisor.start(ws, only=[supervisor.Proc("region", active)])
    eventually(
        lambda: (p := supervisor.pid_of(ws, supervisor.Proc("region", active))) and p != old_pid,
        30,
        "the region to restart",
    )
    third = put(ws, "input/m3.csv", _orders(500))
    assert finished(ws, third).status is RunStatus.COMPLETED
    values = eventually(
        lambda: (
            v
            if metric(v := metrics(ws), "mrbatch_files_processed_total", region=active) == 3
            else None
        ),
        30,
        "files_processed_total to reach 3 after the restart",
    )
    assert metric(values, "mrbatch_rows_processed_total", region=active) == 4_500


def test_api_answers_what_the_cli_prints(deployment: Deployment) -> None:
    ws = deployment.ws
    infos = [put(ws, f"input/api{i}.csv", _orders(200 + i)) for i in range(3)]
    runs = [finished(ws, info) for info in infos]

    status, api_runs = get_json(ws, "/api/runs")
    assert status == 200
    assert api_runs == json.loads(mrbatch(ws, "runs", "--json").stdout)
    status, completed = get_json(ws, "/api/runs?status=completed&limit=2")
    assert status == 200 and completed == api_runs[-2:]
    assert get_json(ws, "/api/runs?status=bogus")[0] == 400

    status, one = get_json(ws, f"/api/runs/{runs[0].run_id}")
    assert status == 200 and isinstance(one, dict)
    assert {k: v for k, v in one.items() if k != "history"} == api_runs[0]
    assert [h["status"] for h in one["history"]][-1] == "COMPLETED"
    assert get_json(ws, "/api/runs/input/api1.csv")[1]["run_id"] == runs[1].run_id  # type: ignore[index]
    missing_status, missing = get_json(ws, "/api/runs/no-such-run")
    assert missing_status == 404 and "error" in missing  # type: ignore[operator]

    status, api_status = get_json(ws, "/api/status")
    cli_status = json.loads(mrbatch(ws, "status", "--json").stdout)
    assert status == 200 and isinstance(api_status, dict)
    assert set(api_status) == set(cli_status)
    stable = ("state", "pid", "alive", "replicator_alive")
    for region in ws.regions:
        a, c = api_status["regions"][region], cli_status["regions"][region]
        assert set(a) == set(c)
        assert {k: a[k] for k in stable} == {k: c[k] for k in stable}
    for key in ("active_region", "epoch", "phase"):
        assert api_status[key] == cli_status[key]

    # The dashboard's feed: history kept server-side, and only what is new after `since`.
    def two_samples() -> dict | None:  # type: ignore[type-arg]
        body = get_json(ws, "/api/dashboard")[1]
        return body if len(body["samples"]) >= 2 else None  # type: ignore[index]

    board = eventually(two_samples, 30, "the sampler to keep history")
    assert board["latest"]["active_region"] == ws.regions[0]
    assert [r["run_id"] for r in board["runs"]] == [r["run_id"] for r in reversed(api_runs)]
    assert board["runs_by_status"] == {"COMPLETED": 3}
    last = board["samples"][-1]["at"]
    newer = get_json(ws, f"/api/dashboard?since={last}")[1]["samples"]  # type: ignore[index]
    assert all(s["at"] > last for s in newer)
    assert get_json(ws, "/api/plans") == (200, [])
    assert get_json(ws, "/healthz") == (200, {"status": "ok"})


def test_counters_survive_restarts_of_the_reporting_process() -> None:
    counters = MonotonicCounters()
    assert counters.update("r", 1, {"files": 2}) == {"files": 2}
    assert counters.update("r", 1, {"files": 5}) == {"files": 5}
    assert counters.update("r", 2, {"files": 1}) == {"files": 6}  # new pid: a restart
    assert counters.update("r", 2, {"files": 0, "rows": 4}) == {"files": 6, "rows": 4}  # went down
    assert counters.update("other", 9, {"files": 1}) == {"files": 1}


def test_application_state() -> None:
    now_ok = {"alive": True, "heartbeat_age": 0.2}
    base = {"active_region": "a", "phase": "ACTIVE", "regions": {"a": now_ok}}
    assert app_state(base, 5) == "healthy"
    assert app_state({**base, "phase": "FAILOVER"}, 5) == "failover-in-progress"
    assert app_state({**base, "regions": {"a": {"alive": False, "heartbeat_age": 0.1}}}, 5) == (
        "degraded"
    )
    assert app_state({**base, "regions": {"a": {"alive": True, "heartbeat_age": 9}}}, 5) == (
        "degraded"
    )
    assert app_state({"active_region": None}, 5) == "unknown"
