"""End to end against the bare baseline, in one run on this machine.

    python benchmarks/bench_end_to_end.py [ROWS ...] [--reference-rows N] [--work DIR] [--json]
                                          [--aws]

For each size: generate an orders file (uuids from a reference of --reference-rows), run the bare
polars script on it (benchmarks/bare_polars.py) and time it, then run it through a real
two-region deployment (put through the access point -> published output) and time that. Prints
both times, their ratio and the peak RSS (VmHWM) of every mrbatch process, and checks that
mrbatch's output is byte-identical to the baseline's.

With --aws, the same file also goes through a deployment on S3 + DynamoDB served by moto's
server mode (started here on 127.0.0.1), alternating with the embedded stack; every S3 and
DynamoDB request of every mrbatch process is counted (MRBATCH_AWS_TRACE) and reported per file,
with the peak RSS of the mrbatch processes and, apart, of the test server.
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
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


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
    # The times come from the run's own history; polling a network table often only loads it.
    pause = 0.005 if ws.config.backends.state_table == "sqlite" else 0.2
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = table.get(pk)
        if record is not None:
            run = FileRun.from_record(record)
            if run.status.terminal:
                return run
        time.sleep(pause)
    raise SystemExit(f"{key} did not finish within {timeout}s")


class Moto:
    """moto's server mode on a free port, its requests not logged (mrbatch counts its own)."""

    def __init__(self) -> None:
        import urllib.request

        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("moto_server did not start")

    def stop(self) -> int:
        """Stop it; returns its peak RSS (bytes)."""
        peak = _peak_rss(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(timeout=30)
        return peak


def requests_between(trace: Path, start: float, end: float, put_end: float) -> dict[str, int]:
    """Requests logged by every mrbatch process in [start, end], by service and operation;
    of this process's own, only the upload's (not its polling for the result)."""
    counts: dict[str, int] = {}
    mine = str(os.getpid())
    if trace.exists():
        for line in trace.read_text().splitlines():
            at, pid, service, operation, *_ = line.split()
            if start <= float(at) <= (put_end if pid == mine else end):
                counts[f"{service} {operation}"] = counts.get(f"{service} {operation}", 0) + 1
    return counts


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


def measure(
    stacks: dict[str, Workspace],
    orders: Path,
    rows: int,
    warm: Path,
    reference: Path,
    work: Path,
    args: argparse.Namespace,
    trace: Path,
) -> list[tuple[str, dict[str, object]]]:
    """One size: the bare script and each stack in turn, ``args.repeat`` times. A stack's
    deployment runs only during its own runs (so an idle one adds no noise to the others);
    the first start of each warms its columnar copy of the reference, as a deployment that
    already processed a file has."""
    bare_runs: list[tuple[float, int]] = []
    ours: dict[str, list[dict[str, float | int | str]]] = {name: [] for name in stacks}
    peaks: dict[str, dict[str, int]] = {name: {} for name in stacks}
    requests: dict[str, list[dict[str, int]]] = {name: [] for name in stacks}
    for n in range(args.repeat):
        # Alternate, so background noise hits every one alike; medians reported.
        bare_runs.append(bare(orders, reference, work / f"bare-{rows}.csv"))
        for name, ws in stacks.items():
            since = time.time()
            supervisor.start(ws)
            try:
                wait_until_up(ws, since)
                if n == 0:
                    mrbatch_run(ws, warm, f"input/warm-{rows}.csv")
                start = time.time()
                ours[name].append(mrbatch_run(ws, orders, f"input/orders-{rows}-{n}.csv"))
                put_end = start + float(ours[name][-1]["put_s"])
                requests[name].append(requests_between(trace, start, time.time(), put_end))
                for label, peak in process_peaks(ws).items():
                    peaks[name][label] = max(peaks[name].get(label, 0), peak)
            finally:
                supervisor.stop(ws)
    bare_sha = hashlib.sha256((work / f"bare-{rows}.csv").read_bytes()).hexdigest()
    bare_s = median(t for t, _ in bare_runs)
    found = []
    for name in stacks:
        runs = ours[name]
        ours_s = median(float(o["published_s"]) for o in runs)
        counted = requests[name]
        figures: dict[str, object] = {
            "rows": rows,
            "repeat": args.repeat,
            "bare_s": round(bare_s, 3),
            "bare_runs_s": [round(t, 3) for t, _ in bare_runs],
            "bare_peak_rss_mb": round(max(m for _, m in bare_runs) / 2**20, 1),
            "mrbatch_published_s": round(ours_s, 3),
            "mrbatch_runs_s": [round(float(o["published_s"]), 3) for o in runs],
            "mrbatch_completed_s": round(median(float(o["completed_s"]) for o in runs), 3),
            "mrbatch_put_s": round(median(float(o["put_s"]) for o in runs), 3),
            "ratio": round(ours_s / bare_s, 2),
            "chunks": runs[0]["chunks"],
            "identical_output": all(o["sha256"] == bare_sha for o in runs),
            "peak_rss_mb": {k: round(v / 2**20, 1) for k, v in sorted(peaks[name].items())},
            "largest_process_mb": round(max(peaks[name].values()) / 2**20, 1),
        }
        if any(counted):
            for service in ("s3", "dynamodb"):
                per_run = [sum(v for k, v in c.items() if k.startswith(service)) for c in counted]
                figures[f"{service}_requests_per_file"] = int(median(per_run))
            totals: dict[str, int] = {}
            for c in counted:
                for k, v in c.items():
                    totals[k] = totals.get(k, 0) + v
            figures["requests_by_operation"] = {
                k: round(v / len(counted)) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])
            }
        found.append((name, figures))
    return found


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
    parser.add_argument("--aws", action="store_true", help="also on S3 + DynamoDB (moto)")
    args = parser.parse_args()

    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    reference = write_reference(work / "financial.csv", args.reference_rows)
    stacks = {
        "embedded": init_workspace(work / "ws", port=_free_port(), chunk_rows=args.chunk_rows)
    }
    moto = Moto() if args.aws else None
    trace = work / "aws-requests.log"
    if moto is not None:
        os.environ["MRBATCH_AWS_TRACE"] = str(trace)
        aws = init_workspace(
            work / "ws-aws",
            port=_free_port(),
            chunk_rows=args.chunk_rows,
            object_store="s3",
            state_table="dynamodb",
            endpoint_url=moto.url,
        )
        text = aws.config_path.read_text()  # every idle poll is a request: 4 a second
        text = text.replace('poll_interval = "50ms"', 'poll_interval = "250ms"')
        aws.config_path.write_text(text.replace('interval = "100ms"', 'interval = "250ms"'))
        stacks["aws"] = Workspace.load(aws.config_path)
    for ws in stacks.values():
        for region in ws.regions:
            backends.open_object_store(ws, region).put(
                "reference/financial.csv", reference.read_bytes()
            )
    warm = write_orders(work / "warm.csv", 1_000, reference_rows=args.reference_rows, seed=7)
    results = []
    try:
        for rows in args.rows:
            orders = write_orders(
                work / f"orders-{rows}.csv", rows, reference_rows=args.reference_rows
            )
            for name, figures in measure(stacks, orders, rows, warm, reference, work, args, trace):
                results.append({"stack": name, **figures})
    finally:
        moto_peak = moto.stop() if moto is not None else 0
    if moto is not None:
        print(f"moto_server peak RSS: {moto_peak / 2**20:.0f} MB (the test endpoint)")
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"{'stack':>8} {'rows':>10} {'bare s':>8} {'mrbatch s':>10} {'ratio':>6}"
        f" {'largest RSS MB':>15} {'identical':>9} {'S3 req':>7} {'DDB req':>7}"
    )
    for r in results:
        s3, ddb = r.get("s3_requests_per_file", "-"), r.get("dynamodb_requests_per_file", "-")
        print(
            f"{r['stack']:>8} {r['rows']:>10,} {r['bare_s']:>8.2f}"
            f" {r['mrbatch_published_s']:>10.2f} {r['ratio']:>6.2f}"
            f" {r['largest_process_mb']:>15.1f} {r['identical_output']!s:>9} {s3!s:>7} {ddb!s:>7}"
        )
    for r in results:
        print(f"\n{r['stack']}, {r['rows']:,} rows, peak RSS per process (MB): {r['peak_rss_mb']}")
        if "requests_by_operation" in r:
            print(f"  requests per file by operation: {r['requests_by_operation']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
