"""Declared pipelines with real processes: the events example (JSON Lines, a row check and a
transform of the workspace's own, HTTP enrichment from the example's local service, a webhook),
a Parquet pipeline, and a user function that raises — next to the sample orders pipeline."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import polars as pl

from mrbatch import backends
from mrbatch.config.initialize import init_workspace
from mrbatch.config.workspace import Workspace
from mrbatch.model.records import RunStatus
from tests.conftest import Deployment, free_port
from tests.helpers import eventually, finished, mails, mrbatch, put
from tests.pipelines_support import Receiver, rates_service

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
        ws, api_port = _workspace(tmp_path / "ws", receiver.url)
        with rates_service(ws.root, api_port), Deployment(ws):
            _events(ws, receiver)
            _parquet_and_a_failing_transform(ws)
            report = mrbatch(ws, "verify", "--json", "--wait", "30s")
            assert report.returncode == 0, report.stdout + report.stderr
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
    # the API's answers are kept per run, chunk by chunk
    assert store.head(f"runs/{run.run_id}/api/00000.json") is not None
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
