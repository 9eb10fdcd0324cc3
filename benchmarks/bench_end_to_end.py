"""End to end as a user runs it, against the bare baseline, in one run on this machine.

    python benchmarks/bench_end_to_end.py [ROWS ...] [--reference-rows N] [--chunk-rows N]
        [--repeat 3] [--quoted] [--without-standby-replicator] [--work DIR] [--json]
        [--executor process-pool|dask] [--workers N]

For each size: generate an orders file (uuids from a reference of --reference-rows; with
--quoted every field is quoted, as spreadsheet and database exports write them) and, in
alternation, time

- the bare polars script (benchmarks/bare_polars.py: read as text, validate, join, write; no
  durability) as its own process, and
- the user's path on a real two-region deployment: `mrbatch put FILE` then `mrbatch wait KEY`,
  two commands run as subprocesses, from before the first starts to the second's exit (the run
  is COMPLETED: published, mailed, recorded).

Prints the user path first (medians, ratio, byte-identical output), then where the time went,
from the run's own history: the upload (the put command), claim, split, chunks, merge, publish,
mail, and how long `wait` took to notice; then the peak RSS (VmHWM) of every mrbatch process.
--without-standby-replicator stops the standby's replicator, to show what replication costs
the active region. --executor dask runs the chunk tasks on a Dask LocalCluster of --workers
worker processes in each region process (the process pool's default is one worker per core).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import polars as pl

from mrbatch import backends
from mrbatch.cli.deploy import wait_until_up
from mrbatch.config.initialize import init_workspace
from mrbatch.config.workspace import Workspace
from mrbatch.model.keys import run_id_for
from mrbatch.model.records import FileRun, RunStatus, run_pk
from mrbatch.proof.generate import write_orders, write_reference
from mrbatch.runtime import supervisor

HERE = Path(__file__).resolve().parent
PHASES = ("upload", "claim", "split", "chunks", "merge", "publish", "mail", "notice")


def _free_port() -> int:
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
    if os.waitstatus_to_exitcode(status):
        raise SystemExit("the baseline failed")
    return elapsed, usage.ru_maxrss * 1024


def _peak_rss(pid: int) -> int:
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


def _cli(ws: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mrbatch.cli.main", *args],
        cwd=ws.root, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip


def user_path(ws: Workspace, orders: Path, key: str) -> dict[str, Any]:
    """`mrbatch put` then `mrbatch wait`, as subprocesses; the run's phases from its history."""
    start = time.time()
    put = _cli(ws, "put", str(orders), "--key", key, "--json")
    put_done = time.time()
    if put.returncode:
        raise SystemExit(f"mrbatch put failed: {put.stderr}")
    sha256 = json.loads(put.stdout)["sha256"]
    waited = _cli(ws, "wait", key, "--timeout", "1800")
    end = time.time()
    if waited.returncode:
        raise SystemExit(f"mrbatch wait failed: {waited.stdout}{waited.stderr}")
    record = backends.open_state_table(ws, ws.regions[0]).get(run_pk(run_id_for(key, sha256)))
    assert record is not None
    run = FileRun.from_record(record)
    if run.status is not RunStatus.COMPLETED:
        raise SystemExit(f"the run failed: {run.reason}")
    at = {h["status"]: h["at"] for h in run.history}
    phases = {
        "upload": put_done - start,
        "claim": run.claimed_at - put_done,
        "split": at["SPLIT"] - run.claimed_at,
        "chunks": at["MERGED"] - at["SPLIT"],  # chunk tasks and the streamed merge overlap
        "merge": 0.0,
        "publish": at["PUBLISHED"] - at["MERGED"],
        "mail": at["COMPLETED"] - at["PUBLISHED"],
        "notice": end - at["COMPLETED"],
    }
    return {
        "total_s": end - start,
        "phases": phases,
        "chunks": len(run.chunks),
        "sha256": run.output_sha256 or "",
    }


def _quote_all(source: Path, target: Path) -> Path:
    frame = pl.read_csv(source, infer_schema=False)
    frame.write_csv(target, quote_style="always")
    return target


def run_size(args: argparse.Namespace, work: Path, reference: Path, rows: int) -> dict[str, Any]:
    orders = write_orders(work / f"orders-{rows}.csv", rows, reference_rows=args.reference_rows)
    if args.quoted:
        orders = _quote_all(orders, work / f"orders-{rows}-quoted.csv")
    ws = init_workspace(
        work / f"ws-{rows}", port=_free_port(), chunk_rows=args.chunk_rows, executor=args.executor
    )
    if args.workers:
        text = ws.config_path.read_text().replace("\nworkers = 0 ", f"\nworkers = {args.workers} ")
        ws.config_path.write_text(text)
        ws = Workspace.load(ws.config_path)
    for region in ws.regions:
        backends.open_object_store(ws, region).put(
            "reference/financial.csv", reference.read_bytes()
        )
    warm = write_orders(work / "warm.csv", 1_000, reference_rows=args.reference_rows, seed=7)
    since = time.time()
    supervisor.start(ws)
    bare_runs: list[tuple[float, int]] = []
    ours: list[dict[str, Any]] = []
    try:
        wait_until_up(ws, since)
        if args.without_standby_replicator:
            supervisor.stop(ws, only=[supervisor.Proc("replicator", ws.regions[1])])
        # Warm-up: the region prepares its columnar copy of this reference version once, as a
        # deployment that already processed a file has.
        user_path(ws, warm, "input/warm.csv")
        for n in range(args.repeat):
            # Alternate the two, so background noise hits both alike; medians reported.
            bare_runs.append(bare(orders, reference, work / f"bare-{rows}.csv"))
            ours.append(user_path(ws, orders, f"input/orders-{rows}-{n}.csv"))
        peaks = process_peaks(ws)
    finally:
        supervisor.stop(ws)
    bare_sha = hashlib.sha256((work / f"bare-{rows}.csv").read_bytes()).hexdigest()
    bare_s = median(t for t, _ in bare_runs)
    ours_s = median(o["total_s"] for o in ours)
    shares = {p: median(o["phases"][p] for o in ours) for p in PHASES}
    return {
        "rows": rows,
        "executor": args.executor,
        "quoted": args.quoted,
        "standby_replicator": not args.without_standby_replicator,
        "repeat": args.repeat,
        "bare_s": round(bare_s, 3),
        "bare_runs_s": [round(t, 3) for t, _ in bare_runs],
        "bare_peak_rss_mb": round(max(m for _, m in bare_runs) / 2**20, 1),
        "user_path_s": round(ours_s, 3),
        "user_path_runs_s": [round(o["total_s"], 3) for o in ours],
        "ratio": round(ours_s / bare_s, 2),
        "phases_s": {p: round(v, 3) for p, v in shares.items()},
        "chunks": ours[0]["chunks"],
        "identical_output": all(o["sha256"] == bare_sha for o in ours),
        "peak_rss_mb": {k: round(v / 2**20, 1) for k, v in sorted(peaks.items())},
        "largest_process_mb": round(max(peaks.values()) / 2**20, 1),
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
    parser.add_argument("--quoted", action="store_true", help="every field quoted")
    parser.add_argument("--without-standby-replicator", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--executor", choices=["process-pool", "dask"], default="process-pool")
    parser.add_argument("--workers", type=int, default=0, help="chunk workers (0: one per core)")
    args = parser.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    reference = write_reference(work / "financial.csv", args.reference_rows)
    results = [run_size(args, work, reference, rows) for rows in args.rows]
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"{'rows':>10} {'bare s':>8} {'put+wait s':>11} {'ratio':>6} {'largest RSS MB':>15}"
        f" {'identical':>9}"
    )
    for r in results:
        print(
            f"{r['rows']:>10,} {r['bare_s']:>8.2f} {r['user_path_s']:>11.2f} {r['ratio']:>6.2f}"
            f" {r['largest_process_mb']:>15.1f} {r['identical_output']!s:>9}"
        )
    for r in results:
        total = sum(r["phases_s"].values()) or 1.0
        parts = "  ".join(
            f"{p} {v:.2f}s ({v / total:.0%})" for p, v in r["phases_s"].items() if p != "merge"
        )
        print(f"\n{r['rows']:,} rows: {parts}")
        print(f"  peak RSS per process (MB): {r['peak_rss_mb']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
