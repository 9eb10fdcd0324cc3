"""End to end against the bare baseline, in one run on this machine.

    python benchmarks/bench_end_to_end.py [ROWS ...] [--reference-rows N] [--work DIR] [--json]
                                          [--executor process-pool|dask] [--workers 2]

For each size: generate an orders file (uuids from a reference of --reference-rows), run the bare
polars script on it (benchmarks/bare_polars.py) and time it, then run it through a real
two-region deployment (put through the access point -> published output) and time that. Prints
both times, their ratio and the peak RSS (VmHWM) of every mrbatch process, and checks that
mrbatch's output is byte-identical to the baseline's. --executor dask runs the chunk tasks on a
Dask LocalCluster of --workers worker processes in each region process (the process pool's
default is one worker per core).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

from mrbatch import backends
from mrbatch.access.accesspoint import AccessPoint
from mrbatch.cli.deploy import wait_until_up
from mrbatch.config.initialize import init_workspace
from mrbatch.config.workspace import Workspace
from mrbatch.model.keys import run_id_for
from mrbatch.model.records import FileRun, RunStatus, run_pk
from mrbatch.proof.generate import write_orders, write_reference
from mrbatch.runtime import supervisor

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bare(orders: Path, reference: Path, output: Path) -> tuple[float, int]:
    """Wall time and peak RSS (bytes) of the baseline script, as its own process."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, str(HERE / "bare_polars.py"), str(orders), str(reference), str(output)]
    )
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"baseline failed with exit code {child.returncode}")
    return elapsed, usage.ru_maxrss * 1024


def _peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _children(pid: int) -> list[int]:
    """Children started by any thread of ``pid`` (a Dask nanny starts its worker from a thread
    of its own)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    for task in tasks:
        try:
            found.extend(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return sorted(set(found))


def process_peaks(ws: Workspace) -> dict[str, int]:
    peaks: dict[str, int] = {}
    for proc, pid in supervisor.running(ws).items():
        if pid is None:
            continue
        peaks[proc.label] = _peak_rss(pid)
        for n, child in enumerate(_children(pid)):
            try:
                peaks[f"{proc.label}/worker{n}"] = _peak_rss(child)
            except OSError:
                pass
    return peaks


def _wait_run(ws: Workspace, key: str, sha256: str, timeout: float) -> FileRun:
    table = backends.open_state_table(ws, ws.regions[0])
    pk = run_pk(run_id_for(key, sha256))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = table.get(pk)
        if record is not None:
            run = FileRun.from_record(record)
            if run.status.terminal:
                return run
        time.sleep(0.005)
    raise SystemExit(f"{key} did not finish within {timeout}s")


def mrbatch_run(ws: Workspace, orders: Path, key: str) -> dict[str, float | int | str]:
    access = AccessPoint(ws)
    start = time.time()
    with orders.open("rb") as handle:
        info = access.put(key, handle).info
    put_done = time.time()
    run = _wait_run(ws, info.key, info.sha256, timeout=600)
    if run.status is not RunStatus.COMPLETED:
        raise SystemExit(f"the mrbatch run failed: {run.reason}")
    published = next(h["at"] for h in run.history if h["status"] == "PUBLISHED")
    completed = next(h["at"] for h in run.history if h["status"] == "COMPLETED")
    return {
        "put_s": put_done - start,
        "published_s": published - start,
        "completed_s": completed - start,
        "chunks": len(run.chunks),
        "rows_out": run.rows_out or 0,
        "sha256": run.output_sha256 or "",
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("rows", nargs="*", type=int, default=[1_000_000, 4_000_000])
    parser.add_argument("--reference-rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path("bench-work"))
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (medians shown)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--executor", choices=["process-pool", "dask"], default="process-pool")
    parser.add_argument("--workers", type=int, default=0, help="chunk workers (0: one per core)")
    args = parser.parse_args()

    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    reference = write_reference(work / "financial.csv", args.reference_rows)
    ws = init_workspace(
        work / "ws", port=_free_port(), chunk_rows=args.chunk_rows, executor=args.executor
    )
    if args.workers:
        text = ws.config_path.read_text()
        text = text.replace("\nworkers = 0 ", f"\nworkers = {args.workers} ")
        ws.config_path.write_text(text)
        ws = Workspace.load(ws.config_path)
    for region in ws.regions:
        backends.open_object_store(ws, region).put(
            "reference/financial.csv", reference.read_bytes()
        )
    warm = write_orders(work / "warm.csv", 1_000, reference_rows=args.reference_rows, seed=7)
    results = []
    for rows in args.rows:
        orders = write_orders(work / f"orders-{rows}.csv", rows, reference_rows=args.reference_rows)
        bare_runs: list[tuple[float, int]] = []
        ours: list[dict[str, float | int | str]] = []
        # A fresh deployment per size, so each peak RSS belongs to that size alone.
        since = time.time()
        supervisor.start(ws)
        try:
            wait_until_up(ws, since)
            # Warm-up: the region prepares its columnar copy of this reference version once,
            # as a deployment that already processed a file has.
            mrbatch_run(ws, warm, "input/warm.csv")
            for n in range(args.repeat):
                # Alternate the two, so background noise hits both alike; medians reported.
                bare_runs.append(bare(orders, reference, work / f"bare-{rows}.csv"))
                ours.append(mrbatch_run(ws, orders, f"input/orders-{rows}-{n}.csv"))
            peaks = process_peaks(ws)
        finally:
            supervisor.stop(ws)
        bare_sha = hashlib.sha256((work / f"bare-{rows}.csv").read_bytes()).hexdigest()
        bare_s = median(t for t, _ in bare_runs)
        ours_s = median(float(o["published_s"]) for o in ours)
        results.append(
            {
                "rows": rows,
                "executor": args.executor,
                "repeat": args.repeat,
                "bare_s": round(bare_s, 3),
                "bare_runs_s": [round(t, 3) for t, _ in bare_runs],
                "bare_peak_rss_mb": round(max(m for _, m in bare_runs) / 2**20, 1),
                "mrbatch_published_s": round(ours_s, 3),
                "mrbatch_runs_s": [round(float(o["published_s"]), 3) for o in ours],
                "mrbatch_completed_s": round(median(float(o["completed_s"]) for o in ours), 3),
                "mrbatch_put_s": round(median(float(o["put_s"]) for o in ours), 3),
                "ratio": round(ours_s / bare_s, 2),
                "chunks": ours[0]["chunks"],
                "identical_output": all(o["sha256"] == bare_sha for o in ours),
                "peak_rss_mb": {k: round(v / 2**20, 1) for k, v in sorted(peaks.items())},
                "largest_process_mb": round(max(peaks.values()) / 2**20, 1),
            }
        )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(
            f"{'rows':>10} {'bare s':>8} {'mrbatch s':>10} {'ratio':>6} {'largest RSS MB':>15}"
            f" {'identical':>9}"
        )
        for r in results:
            print(
                f"{r['rows']:>10,} {r['bare_s']:>8.2f} {r['mrbatch_published_s']:>10.2f}"
                f" {r['ratio']:>6.2f} {r['largest_process_mb']:>15.1f}"
                f" {r['identical_output']!s:>9}"
            )
        for r in results:
            print(f"\n{r['rows']:,} rows, peak RSS per process (MB): {r['peak_rss_mb']}")
        if len(results) >= 2:
            growth = results[-1]["largest_process_mb"] / results[0]["largest_process_mb"]
            print(
                f"\nlargest-process RSS growth {results[0]['rows']:,} -> {results[-1]['rows']:,}"
                f" rows: {growth:.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
