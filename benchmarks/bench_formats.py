"""Figures for declared pipelines (README): chunk throughput of CSV, JSON Lines and Parquet
inputs through the same schema (one process, 100,000-row chunks, the work of one chunk task
after its bytes are read), and streaming ingest: records/s acknowledged (fsynced in the spool)
and the time to seal a segment into an input file through the access point.

    python benchmarks/bench_formats.py [ROWS]
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from mrbatch.access.accesspoint import AccessPoint
from mrbatch.access.ingest import Ingestor
from mrbatch.config.initialize import init_workspace
from mrbatch.config.workspace import Workspace
from mrbatch.pipeline.chunk import process_chunk, process_records
from mrbatch.pipeline.jsonl import parse_jsonl
from mrbatch.pipeline.parquet import footer_length, read_footer, read_row_groups
from mrbatch.pipeline.parse import LINE, ROW
from mrbatch.pipeline.schema import RecordSchema

SCHEMA = {"type": "object", "required": ["id", "name", "amount", "day"], "properties": {
    "id": {"pattern": "^r[0-9]+$"}, "name": {"maxLength": 40},
    "amount": {"type": "number", "minimum": 0}, "day": {"format": "date"}}}  # fmt: skip


def _best(fn, runs: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def formats(rows: int) -> None:
    schema = RecordSchema.from_dict(SCHEMA, source="bench")
    frame = pl.DataFrame({
        "id": [f"r{i}" for i in range(rows)], "name": [f"customer {i % 997}" for i in range(rows)],
        "amount": [f"{i % 10_000}.{i % 100:02d}" for i in range(rows)],
        "day": [f"2026-05-{1 + i % 28:02d}" for i in range(rows)]})  # fmt: skip
    buffer = io.BytesIO()
    frame.write_csv(buffer)
    csv_bytes = buffer.getvalue()
    jsonl = "\n".join(json.dumps(r) for r in frame.iter_rows(named=True)).encode() + b"\n"
    pq = io.BytesIO()
    frame.write_parquet(pq, row_group_size=rows)
    pq_bytes = pq.getvalue()
    columns = list(frame.columns)

    def run_csv() -> None:
        process_chunk(csv_bytes, schema=schema, enrichment=None, reference=None, first_line=2,
                      source="b")  # fmt: skip

    def run_jsonl() -> None:
        good, bad = parse_jsonl(jsonl, columns, 1, "b")
        process_records(good, [bad], columns, schema=schema, enrichment=None, reference=None,
                        source="b")  # fmt: skip

    def run_parquet() -> None:
        n = footer_length(pq_bytes[-8:], "b")
        footer = read_footer(pq_bytes[-n:], len(pq_bytes), "b")
        group = footer.groups[0]
        body = pq_bytes[group.start : group.end]
        got = read_row_groups(body, group.start, pq_bytes[-n:], len(pq_bytes), 0, rows, "b")
        index = pl.int_range(1, got.height + 1, dtype=pl.Int64)
        good = got.select(index.alias(ROW), index.alias(LINE), pl.all())
        process_records(good, [], footer.columns, schema=schema, enrichment=None, reference=None,
                        source="b")  # fmt: skip

    print(f"| format | input bytes | chunk of {rows:,} rows | rows/s |")
    print("|---|---:|---:|---:|")
    for name, size, fn in (("CSV", len(csv_bytes), run_csv), ("JSON Lines", len(jsonl), run_jsonl),
                           ("Parquet", len(pq_bytes), run_parquet)):  # fmt: skip
        seconds = _best(fn)
        print(f"| {name} | {size / 1e6:.1f} MB | {seconds * 1000:.0f} ms | {rows / seconds:,.0f} |")


def ingest() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws = init_workspace(Path(tmp) / "ws", port=18999)
        (ws.root / "pipeline" / "b.schema.json").write_text(json.dumps(SCHEMA))
        text = ws.config_path.read_text() + (
            '\n[ingest]\nseal_records = 1000000\nseal_interval = "1h"\n'
            '\n[pipelines.b]\nprefix = "input/b/"\nschema = "pipeline/b.schema.json"\n'
            'format = "jsonl"\n'
        )
        ws.config_path.write_text(text)
        ws = Workspace.load(ws.config_path)
        ingestor = Ingestor(ws, ws.config.spec("b"), "bench", AccessPoint(ws))
        record = json.dumps({"id": "r1", "name": "x", "amount": "1.5", "day": "2026-05-01"})
        for batch, requests in ((1, 500), (100, 200), (1000, 50)):
            records = [record.encode()] * batch
            started = time.perf_counter()
            for _ in range(requests):
                ingestor.append(records)
            seconds = time.perf_counter() - started
            print(f"| {batch} record(s) a request | {requests * batch / seconds:,.0f} records/s"
                  f" | {seconds / requests * 1000:.2f} ms a request |")  # fmt: skip
            started = time.perf_counter()
            sealed = ingestor.seal_due(everything=True)
            took = (time.perf_counter() - started) * 1000
            print(f"| seal {sealed[0].records:,} records | {took:.0f} ms | |")
        ingestor.close()


if __name__ == "__main__":
    formats(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
    ingest()
