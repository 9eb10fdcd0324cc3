"""Streaming ingest as a user runs it: ``POST /ingest/b`` over HTTP, one client on one keep-alive
connection, through the gateway of a real deployment (``mrbatch up --detach``).

    python benchmarks/bench_ingest.py

1. Records/s acknowledged (fsynced in the gateway's spool) at 1, 100 and 1,000 JSON Lines
   records a request, sequential requests; sealing is kept out of the way (seal_records 10 M,
   seal_interval 1h). Three rounds, alternating; medians.
2. Seal latency as the user sees it, from the acknowledgement of the last request to (a) the
   sealed input file answering ``HEAD /objects/KEY`` and (b) its run being COMPLETED
   (``GET /api/runs/KEY``, the ``mrbatch runs --json`` document), polled every 20 ms: after
   exactly seal_records = 5,000 records (seal_interval left at its 5s default), and after 100
   records with seal_interval = "1s". Median of 3, (min-max).

Each part runs on a deployment of its own (the ingest settings are read when the spool opens);
every one is stopped with ``mrbatch down`` and its directory removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from bench_formats import SCHEMA
from common import free_port, timed

from mrbatch.config.initialize import init_workspace

MRBATCH = str(Path(sys.executable).with_name("mrbatch"))
PIPELINE = (
    '\n[pipelines.b]\nprefix = "input/b/"\nschema = "pipeline/b.schema.json"\nformat = "jsonl"\n'
)
RECORD = json.dumps({"id": "r1", "name": "x", "amount": "1.5", "day": "2026-05-01"}).encode()


def survivors(work: Path) -> list[str]:
    """Processes whose working directory or command line is in ``work``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or proc.name == str(os.getpid()):
            continue
        try:
            cwd, args = os.readlink(proc / "cwd"), (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if cwd.startswith(str(work)) or str(work).encode() in args:
            found.append(proc.name + " " + args.replace(b"\0", b" ").decode(errors="replace"))
    return found


@contextlib.contextmanager
def deployment(work: Path, name: str, ingest: str) -> Iterator[httpx.Client]:
    """A fresh workspace with pipeline ``b`` and these ``[ingest]`` settings, up; a client
    holding the bearer token, on one connection."""
    port = free_port()
    ws = init_workspace(work / name, port=port)
    (ws.root / "pipeline" / "b.schema.json").write_text(json.dumps(SCHEMA))
    ws.config_path.write_text(ws.config_path.read_text() + f"\n[ingest]\n{ingest}\n" + PIPELINE)
    try:
        timed([MRBATCH, "up", "--detach"], ws.root)
        token = subprocess.run(
            [MRBATCH, "gateway", "token"], cwd=ws.root, capture_output=True, text=True, check=True
        ).stdout.strip()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"}
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            yield client
    finally:
        subprocess.run([MRBATCH, "down"], cwd=ws.root, capture_output=True, timeout=120)
        left = survivors(ws.root)
        if left:
            print(f"WARNING: still running after `mrbatch down`: {left}", file=sys.stderr)


def post(client: httpx.Client, records: int) -> int:
    """One request of ``records`` records; the segment that holds them."""
    answer = client.post("/ingest/b", content=b"\n".join([RECORD] * records) + b"\n")
    if answer.status_code != 200 or answer.json()["accepted"] != records:
        raise SystemExit(f"ingest failed: {answer.status_code} {answer.text}")
    return int(answer.json()["segment"])


def until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> float:
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.perf_counter()


def completed(client: httpx.Client, key: str) -> bool:
    answer = client.get(f"/api/runs/{key}")
    if answer.status_code == 404:  # no run yet
        return False
    run = answer.json()
    if run["status"] == "FAILED":
        raise SystemExit(f"the run of {key} failed: {run['reason']}")
    return bool(run["status"] == "COMPLETED")


def seal_latency(client: httpx.Client, records: int, per_request: int) -> tuple[float, float]:
    """Seconds from the last acknowledgement to the sealed file, and to its COMPLETED run."""
    for _ in range(records // per_request):
        segment = post(client, per_request)
    acked = time.perf_counter()
    key = f"input/b/ingest-gateway-{segment:010d}.ndjson"  # the node is "gateway" by default
    exists = until(lambda: client.head(f"/objects/{key}").status_code == 200, f"{key} sealed")
    done = until(lambda: completed(client, key), f"the run of {key}")
    return exists - acked, done - acked


def _spread(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{statistics.median(ms):,.0f} ms ({min(ms):,.0f}-{max(ms):,.0f})"


def throughput(work: Path) -> None:
    shapes = ((1, 300), (100, 200), (1000, 50))
    rates: dict[int, list[float]] = {batch: [] for batch, _ in shapes}
    each: dict[int, list[float]] = {batch: [] for batch, _ in shapes}
    with deployment(work, "throughput", 'seal_records = 10000000\nseal_interval = "1h"') as client:
        for _ in range(10):  # warm-up: the connection, the spool's first segment
            post(client, 1)
        for _ in range(3):  # rounds alternate, so a busy moment spreads over every shape
            for batch, requests in shapes:
                started = time.perf_counter()
                for _ in range(requests):
                    before = time.perf_counter()
                    post(client, batch)
                    each[batch].append(time.perf_counter() - before)
                rates[batch].append(batch * requests / (time.perf_counter() - started))
    print("| records a request | requests (x3) | records/s | ms a request (median) | p95 |")
    print("|---:|---:|---:|---:|---:|")
    for batch, requests in shapes:
        ms = sorted(t * 1000 for t in each[batch])
        print(f"| {batch:,} | {requests} | {statistics.median(rates[batch]):,.0f}"
              f" | {statistics.median(ms):.2f} | {ms[int(len(ms) * 0.95)]:.2f} |")  # fmt: skip


def sealing(work: Path) -> None:
    print("\n| seal | records | ack -> input file exists | ack -> run COMPLETED |")
    print("|---|---:|---:|---:|")
    cases = (
        ("by count: seal_records = 5000", "seal_records = 5000", 5000, 1000),
        ('by time: seal_interval = "1s"', 'seal_interval = "1s"', 100, 100),
    )
    for n, (label, ingest, records, per_request) in enumerate(cases):
        with deployment(work, f"seal-{n}", ingest) as client:
            trials = [seal_latency(client, records, per_request) for _ in range(3)]
        sealed, done = _spread([t[0] for t in trials]), _spread([t[1] for t in trials])
        print(f"| {label} | {records:,} in requests of {per_request:,} | {sealed} | {done} |")


def main() -> int:
    print("load average at start: {:.2f} {:.2f} {:.2f}\n".format(*os.getloadavg()))
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        throughput(work)
        sealing(work)
    print("\nload average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
