"""Declared pipelines with real processes: the events example (JSON Lines, a row check and a
transform of the workspace's own, HTTP enrichment from the example's local service, a webhook),
a Parquet pipeline, and a user function that raises — next to the sample orders pipeline."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from mrbatch import backends
from mrbatch.config.initialize import init_workspace
from mrbatch.config.workspace import Workspace
from mrbatch.model.records import RunStatus
from mrbatch.runtime import supervisor
from tests.conftest import Deployment, free_port, make_workspace
from tests.helpers import eventually, finished, mails, mrbatch, put
from tests.pipelines_support import Receiver

METRICS_SCHEMA = {
    "type": "object",
    "required": ["sensor", "value"],
    "properties": {"sensor": {"pattern": "^s[0-9]+$"}, "value": {"type": "number"}},
}
BROKEN = """
import polars as pl

def explode(frame: pl.DataFrame) -> pl.DataFrame:
    raise ValueError("the ledger service is closed on Sundays")
"""


def _workspace(root: Path, hook_url: str) -> tuple[Workspace, int]:
    api_port = free_port()
    ws = init_workspace(
        root, port=free_port(), chunk_rows=2_500, example="events", api_port=api_port
    )
    (root / "pipeline" / "metrics.schema.json").write_text(json.dumps(METRICS_SCHEMA))
    (root / "pipeline" / "broken_rules.py").write_text(BROKEN)
    text = (
        ws.config_path.read_text()
        .replace("# [pipelines.events.webhook]\n# url = ", "[pipelines.events.webhook]\nurl = ")
        .replace("http://127.0.0.1:9000/hooks/mrbatch", hook_url)
    )
    text += (
        '\nretry_backoff = "100ms"\n'
        '\n[pipelines.metrics]\nprefix = "input/metrics/"\n'
        'schema = "pipeline/metrics.schema.json"\n'
        "chunk_rows = 30\n"
        '\n[pipelines.broken]\nprefix = "input/broken/"\n'
        'schema = "pipeline/metrics.schema.json"\n'
        'python_path = ["pipeline"]\ntransforms = ["broken_rules:explode"]\n'
    )
    ws.config_path.write_text(text)
    return Workspace.load(ws.config_path), api_port


def _csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_declared_pipelines_end_to_end(tmp_path: Path) -> None:
    receiver = Receiver(statuses=[503])  # the first delivery fails: retried with backoff
    try:
        ws, _api_port = _workspace(tmp_path / "ws", receiver.url)
        # The example's rates API is one of the deployment's services ([services.rates]): up
        # starts it, the supervisor would restart it, down stops it.
        rates = supervisor.Proc("service", "rates")
        with Deployment(ws):
            service_pid = supervisor.pid_of(ws, rates)
            assert service_pid is not None, "up did not start the example's rates API"
            _events(ws, receiver)
            _parquet_and_a_failing_transform(ws)
            report = mrbatch(ws, "verify", "--json", "--wait", "30s")
            assert report.returncode == 0, report.stdout + report.stderr
        assert supervisor.pid_of(ws, rates) is None, "down left the rates API running"
    finally:
        receiver.close()


def _events(ws: Workspace, receiver: Receiver) -> None:
    sample = (ws.root / "pipeline" / "events-sample.jsonl").read_bytes()
    info = put(ws, "input/events/sample.jsonl", sample)
    run = finished(ws, info)
    assert run.status is RunStatus.COMPLETED, run.reason
    assert run.pipeline == "events" and run.input_format == "jsonl"
    assert run.pipeline_hash and run.code_version
    assert len(run.chunks) == 3  # 1,000 lines, 400 a chunk
    store = backends.open_object_store(ws, ws.regions[0])
    rows = _csv(store.get("output/events/sample.jsonl"))
    rejected = _csv(store.get("rejected/events/sample.jsonl"))
    assert run.rows_in == 1000 and len(rows) + len(rejected) == 1000
    first = json.loads(sample.split(b"\n")[0])
    assert list(rows[0]) == [
        "event_id", "occurred_at", "customer", "currency", "amount", "rate_to_eur", "amount_eur"
    ]  # fmt: skip
    assert rows[0]["event_id"] == first["event_id"]
    # amounts written exactly as received (197.73 stays 197.73), rate from the API
    assert rows[0]["amount"] == sample.split(b'"amount": ')[1].split(b",")[0].decode()
    assert rows[0]["rate_to_eur"] == {"EUR": "1", "USD": "0.92", "GBP": "1.17", "JPY": "0.0061",
                                      "CHF": "1.05"}[first["currency"]]  # fmt: skip
    assert float(rows[0]["amount_eur"]) == round(
        float(rows[0]["amount"]) * float(rows[0]["rate_to_eur"]), 2
    )
    reasons = {r["reason"] for r in rejected}
    assert "customer: a test account" in reasons
    assert any(r.startswith("currency: not one of") for r in reasons)
    assert "amount: less than 0 (minimum)" in reasons
    # the API's answers are kept for the run (a record per key, which every chunk used) and
    # chunk by chunk (what each chunk used, for a re-run to give the same bytes)
    assert store.head(f"runs/{run.run_id}/api/00000.json") is not None
    table = backends.open_state_table(ws, ws.regions[0])
    answered = {r.body["key"] for r in table.scan("answer", prefix=f"answer/{run.run_id}/")}
    assert {row["currency"] for row in rows} <= answered <= {"EUR", "USD", "GBP", "JPY", "CHF"}
    # the webhook: retried after a 503, then delivered once with the run id as idempotency key
    delivered = receiver.delivered()
    assert len(delivered) == 1 and len(receiver.requests) == 2
    hook = delivered[0]
    assert hook["headers"]["Idempotency-Key"] == run.run_id
    assert hook["body"]["rows_out"] == run.rows_out and hook["body"]["pipeline"] == "events"
    assert hook["body"]["link"].startswith("http")
    assert run.webhook_sent_at is not None
    assert any(m["Message-ID"] == f"<{run.run_id}@mrbatch>" for m in mails(ws))


def _parquet_and_a_failing_transform(ws: Workspace) -> None:
    frame = pl.DataFrame({"sensor": [f"s{i}" if i % 13 else "bad" for i in range(100)],
                          "value": [i * 0.5 for i in range(100)]})  # fmt: skip
    buffer = io.BytesIO()
    frame.write_parquet(buffer, row_group_size=10)
    info = put(ws, "input/metrics/day.parquet", buffer.getvalue())
    run = finished(ws, info)
    assert run.status is RunStatus.COMPLETED, run.reason
    assert run.input_format == "parquet" and len(run.chunks) == 4  # 10 groups, 30 rows a chunk
    out = _csv(backends.open_object_store(ws, ws.regions[0]).get("output/metrics/day.parquet"))
    assert [r["value"] for r in out[:3]] == ["0.5", "1.0", "1.5"]
    assert (run.rows_in, run.rows_rejected) == (100, 8)

    broken = put(ws, "input/broken/x.csv", b"sensor,value\ns1,1\n")
    failed = finished(ws, broken)
    assert failed.status is RunStatus.FAILED
    assert "transform broken_rules:explode raised ValueError: the ledger service is closed" in (
        failed.reason or ""
    )
    # the code is fixed: a bulk redrive reruns every chunk with the new code, and says so
    (ws.root / "pipeline" / "broken_rules.py").write_text(BROKEN.replace(
        'raise ValueError("the ledger service is closed on Sundays")', "return frame"
    ))  # fmt: skip
    done = mrbatch(ws, "redrive", "--status", "FAILED", "--prefix", "input/broken/", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [(r["input_key"], r["pipeline_changed"]) for r in report] == [
        ("input/broken/x.csv", True)
    ]
    fixed = eventually(
        lambda: (r := finished(ws, broken)) and r.status is RunStatus.COMPLETED and r,
        60,
        "the re-driven run",
    )
    assert fixed.rows_out == 1 and fixed.code_version != failed.code_version


# --------------------------------------------------------------------------- file-level checks
COUNTED_SCHEMA = {
    "type": "object",
    "required": ["id", "n"],
    "properties": {"id": {"pattern": "^r[0-9]+$"}, "n": {}},
}
COUNTED = """
[pipelines.counted]
prefix = "input/counted/"
schema = "pipeline/counted.schema.json"
[pipelines.counted.file]
header = ["id", "n"]
min_rows = 2
max_rows = 3
count_column = "n"
"""


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A deployment with a pipeline that checks whole files: the header, 2 to 3 records, and
    a column every record of which carries the file's record count."""
    ws = make_workspace(tmp_path_factory.mktemp("counted") / "ws")
    (ws.root / "pipeline" / "counted.schema.json").write_text(json.dumps(COUNTED_SCHEMA))
    ws.config_path.write_text(ws.config_path.read_text() + COUNTED)
    ws = Workspace.load(ws.config_path)
    with Deployment(ws):
        yield ws


def test_file_level_checks_fail_the_run_and_name_the_problem(counted: Workspace) -> None:
    ws = counted
    files = {
        "good.csv": (b"id,n\nr1,2\nr2,2\n", None),
        "header.csv": (
            b"n,id\n2,r1\n2,r2\n",
            "input/counted/header.csv: the header is 'n', 'id'; the pipeline counted expects"
            " 'id', 'n' (file.header)",
        ),
        "few.csv": (b"id,n\nr1,1\n", "1 records, fewer than the 2 expected (file.min_rows)"),
        "many.csv": (
            b"id,n\n" + b"".join(b"r%d,4\n" % i for i in range(4)),
            "4 records, more than the 3 allowed (file.max_rows)",
        ),
        "count.csv": (
            b"id,n\nr1,3\nr2,3\n",
            "the expected-count column 'n' says '3' but the file has 2 records",
        ),
        "mixed.csv": (
            b"id,n\nr1,2\nr2,3\n",
            "the expected-count column 'n' is not the same in every record ('2', '3')",
        ),
    }
    infos = {name: put(ws, f"input/counted/{name}", data) for name, (data, _) in files.items()}
    for name, (_data, problem) in files.items():
        run = finished(ws, infos[name])
        if problem is None:
            assert run.status is RunStatus.COMPLETED, run.reason
            assert (run.rows_in, run.rows_out) == (2, 2)
            continue
        assert run.status is RunStatus.FAILED, (name, run.status, run.reason)
        assert problem in (run.reason or ""), (name, run.reason)


def test_redrive_since_takes_only_the_runs_that_failed_after_it(counted: Workspace) -> None:
    ws = counted
    early = finished(ws, put(ws, "input/counted/since/early.csv", b"id,n\nr1,1\n"))
    assert early.status is RunStatus.FAILED, early.reason
    since = time.time()  # a FAILED run's updated_at never moves again
    while time.time() <= since:  # updated_at strictly after since, whatever the clock grain
        time.sleep(0.01)
    late = finished(ws, put(ws, "input/counted/since/late.csv", b"id,n\nr2,1\n"))
    assert late.status is RunStatus.FAILED and early.updated_at < since <= late.updated_at
    done = mrbatch(ws, "redrive", "--status", "FAILED", "--since", f"@{since}", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(r["input_key"], r["ok"]) for r in json.loads(done.stdout)] == [
        ("input/counted/since/late.csv", True)
    ]
    # ISO 8601 (UTC), an hour before: the early run too, and --prefix narrows it to that one
    # (the late one may be running again now, so it is not asked for).
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since - 3600))
    prefix = "input/counted/since/early"
    both = mrbatch(ws, "redrive", "--status", "FAILED", "--since", iso, "--prefix", prefix)
    assert both.returncode == 0, both.stdout + both.stderr
    assert "early.csv" in both.stdout and "late.csv" not in both.stdout, both.stdout
    bad = mrbatch(ws, "redrive", "--status", "FAILED", "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr
