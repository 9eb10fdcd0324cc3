"""End to end as a user runs it, against the bare baseline, in one run on this machine.

    python benchmarks/bench_end_to_end.py [ROWS ...] [--reference-rows N] [--chunk-rows N]
        [--repeat 3] [--quoted] [--without-standby-replicator] [--replication-nice N]
        [--work DIR] [--json]
        [--executor process-pool|dask] [--workers N] [--aws]

For each size: generate one orders file per repetition (uuids from a reference of
--reference-rows; another seed each time, so no run finds its blobs already stored; with
--quoted every field is quoted, as spreadsheet and database exports write them) and, in
alternation, time

- the bare polars script (benchmarks/bare_polars.py: read as text, validate, join, write; no
  durability) as its own process, and
- the user's path on a real two-region deployment: `mrbatch put FILE` then `mrbatch wait KEY`,
  two commands run as subprocesses, from before the first starts to the second's exit (the run
  is COMPLETED: published, mailed, recorded).

Between timed items the machine settles: the standby's replicator finishes copying the run
(replication is asynchronous; left running, it would slow the next bare run) and written
data is synced (the bare script does not sync its output; the next item would pay for it).

Prints the user path first (medians, ratio, byte-identical output), then where the time went,
from the run's own history: the upload (the put command), claim, split, chunks, merge, publish,
mail, and how long `wait` took to notice; then the peak RSS (VmHWM) of every mrbatch process.
--without-standby-replicator stops the standby's replicator, to show what replication costs
the active region. --executor dask runs the chunk tasks on a Dask LocalCluster of --workers
worker processes in each region process (the process pool's default is one worker per core).

With --aws, the same file also goes through a deployment on S3 + DynamoDB served by moto's
server mode (started here on 127.0.0.1; polls at 250 ms, every idle poll being a request),
alternating bare script -> embedded stack -> S3 + DynamoDB stack, each deployment running only
during its own runs (an idle one would add noise to the others). Every S3 and DynamoDB request
of every mrbatch process (regions, their workers, replicators, gateway, the `put` command; not
the polling of `wait`) is counted (MRBATCH_AWS_TRACE) and reported per file, with the peak RSS
of the mrbatch processes and, apart, of the test server.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import median
from typing import Any

import polars as pl
from common import free_port

from mrbatch import backends
from mrbatch.cli.deploy import wait_until_up
from mrbatch.config.initialize import init_workspace
from mrbatch.config.workspace import Workspace
from mrbatch.model.keys import run_id_for
from mrbatch.model.records import FileRun, RunStatus, run_pk
from mrbatch.proof.generate import write_orders, write_reference
from mrbatch.runtime import supervisor
from mrbatch.runtime.replication import region_backlog

HERE = Path(__file__).resolve().parent
TRACE_ENV = "MRBATCH_AWS_TRACE"  # mrbatch.backends.aws logs every request there when set
PHASES = ("upload", "claim", "split", "chunks", "merge", "publish", "mail", "notice")


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


def _cli(ws: Workspace, *args: str, traced: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if not traced:  # its requests are not the file's work (`wait` polling for the result)
        env.pop(TRACE_ENV, None)
    return subprocess.run(
        [sys.executable, "-m", "mrbatch.cli.main", *args],
        cwd=ws.root, capture_output=True, text=True, timeout=1800, env=env,
    )  # fmt: skip


def user_path(ws: Workspace, orders: Path, key: str) -> dict[str, Any]:
    """`mrbatch put` then `mrbatch wait`, as subprocesses; the run's phases from its history."""
    start = time.time()
    put = _cli(ws, "put", str(orders), "--key", key, "--json")
    put_done = time.time()
    if put.returncode:
        raise SystemExit(f"mrbatch put failed: {put.stderr}")
    sha256 = json.loads(put.stdout)["sha256"]
    waited = _cli(ws, "wait", key, "--timeout", "1800", traced=False)
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
        # The upload ends at acceptance (the `put` command may still be exiting when the
        # region claims the run); the claim is measured from it.
        "upload": (run.accepted_at or put_done) - start,
        "claim": run.claimed_at - (run.accepted_at or put_done),
        "split": at["SPLIT"] - run.claimed_at,
        "chunks": at["MERGED"] - at["SPLIT"],  # chunk tasks and the streamed merge overlap
        "merge": 0.0,
        "publish": at["PUBLISHED"] - at["MERGED"],
        "mail": at["COMPLETED"] - at["PUBLISHED"],
        "notice": end - at["COMPLETED"],
    }
    return {
        "total_s": end - start,
        "window": (start, end),
        "phases": phases,
        "chunks": len(run.chunks),
        "sha256": run.output_sha256 or "",
    }


def settle(ws: Workspace | None) -> None:
    """Let the last timed item's background work end before the next starts: the standby's
    replicator copying the run (when ``ws`` is given; it is asynchronous by design, and a
    bare run timed while it copies would be slowed by it) and the writeback of what was
    written (the bare script's output is not synced; the next item would pay for it)."""
    deadline = time.monotonic() + 600
    while ws is not None and region_backlog(ws, ws.regions[0]).total:
        if time.monotonic() > deadline:
            raise SystemExit("the standby did not catch up within 600 s")
        time.sleep(0.05)
    os.sync()


def _sha256(path: Path) -> str:
    # In blocks: reading a 480 MB output whole, then freeing it, made the next `put` pay the
    # host's reclaim of that memory on this VM (0.5 s of system time at 4M rows).
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _orders(args: argparse.Namespace, work: Path, rows: int, seed: int) -> Path:
    path = work / f"orders-{rows}-{seed}.csv"
    write_orders(path, rows, reference_rows=args.reference_rows, seed=seed)
    return _quote_all(path, path.with_suffix(".quoted.csv")) if args.quoted else path


def _quote_all(source: Path, target: Path) -> Path:
    frame = pl.read_csv(source, infer_schema=False)
    frame.write_csv(target, quote_style="always")
    return target


class Moto:
    """moto's server mode on a free port, its requests not logged (mrbatch counts its own)."""

    def __init__(self) -> None:
        import urllib.request

        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        self.port = free_port()
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
        self.stop()
        raise SystemExit("moto_server did not start")

    def stop(self) -> int:
        """Stop it (by its pid); returns its peak RSS (bytes)."""
        try:
            peak = _peak_rss(self.proc.pid)
        except OSError:
            peak = 0
        self.proc.terminate()
        self.proc.wait(timeout=30)
        return peak


def requests_between(trace: Path, start: float, end: float) -> dict[str, int]:
    """Requests logged by the mrbatch processes in [start, end], by service and operation
    (this process's own, reading the result after the window, are not in it)."""
    counts: dict[str, int] = {}
    mine = str(os.getpid())
    if trace.exists():
        for line in trace.read_text().splitlines():
            at, pid, service, operation, *_ = line.split()
            if pid != mine and start <= float(at) <= end:
                counts[f"{service} {operation}"] = counts.get(f"{service} {operation}", 0) + 1
    return counts


def _workspace(
    args: argparse.Namespace, root: Path, reference: Path, moto: Moto | None = None
) -> Workspace:
    aws = (
        {"object_store": "s3", "state_table": "dynamodb", "endpoint_url": moto.url}
        if moto is not None
        else {}
    )
    ws = init_workspace(
        root, port=free_port(), chunk_rows=args.chunk_rows, executor=args.executor, **aws
    )
    text = ws.config_path.read_text()
    if args.workers:
        text = text.replace("\nworkers = 0 ", f"\nworkers = {args.workers} ")
    if args.replication_nice is not None:
        text = text.replace(
            '\ninterval = "100ms"', f'\ninterval = "100ms"\nnice = {args.replication_nice}'
        )
    if moto is not None:  # every idle poll is a request: 4 a second per process
        text = text.replace('poll_interval = "50ms"', 'poll_interval = "250ms"')
        text = text.replace('\ninterval = "100ms"', '\ninterval = "250ms"')
    ws.config_path.write_text(text)
    ws = Workspace.load(ws.config_path)
    for region in ws.regions:
        backends.open_object_store(ws, region).put(
            "reference/financial.csv", reference.read_bytes()
        )
    return ws


@contextlib.contextmanager
def deployed(ws: Workspace, args: argparse.Namespace, warm: Path | None) -> Iterator[None]:
    """The deployment runs inside; warmed first with ``warm`` when given: the region prepares
    its columnar copy of this reference version once, as a deployment that already processed
    a file has."""
    since = time.time()
    supervisor.start(ws)
    try:
        wait_until_up(ws, since)
        if args.without_standby_replicator:
            supervisor.stop(ws, only=[supervisor.Proc("replicator", ws.regions[1])])
        if warm is not None:
            user_path(ws, warm, "input/warm.csv")
        yield
    finally:
        supervisor.stop(ws)


def run_size(
    args: argparse.Namespace, work: Path, reference: Path, rows: int, moto: Moto | None
) -> list[dict[str, Any]]:
    # One file per repetition, of the same size and shape (another seed): the store keeps
    # blobs by content, so a file put again would skip every blob write and all replication.
    inputs = [_orders(args, work, rows, seed=n + 1) for n in range(args.repeat)]
    stacks = {"embedded": _workspace(args, work / f"ws-{rows}", reference)}
    if moto is not None:
        stacks["aws"] = _workspace(args, work / f"ws-{rows}-aws", reference, moto)
    warm = write_orders(work / "warm.csv", 1_000, reference_rows=args.reference_rows, seed=7)
    trace = Path(os.environ.get(TRACE_ENV, work / "aws-requests.log"))
    bare_runs: list[tuple[float, int]] = []
    bare_shas: list[str] = []
    ours: dict[str, list[dict[str, Any]]] = {name: [] for name in stacks}
    peaks: dict[str, dict[str, int]] = {name: {} for name in stacks}
    with contextlib.ExitStack() as alone:
        if len(stacks) == 1:  # one deployment: up throughout, as a user's is
            alone.enter_context(deployed(stacks["embedded"], args, warm))
        for n in range(args.repeat):
            # Alternate, so background noise hits every one alike; medians reported.
            orders = inputs[n]
            bare_runs.append(bare(orders, reference, work / f"bare-{rows}-{n}.csv"))
            bare_shas.append(_sha256(work / f"bare-{rows}-{n}.csv"))
            settle(None)
            for name, ws in stacks.items():
                with contextlib.ExitStack() as turn:
                    if len(stacks) > 1:  # several: each runs only during its own runs
                        turn.enter_context(deployed(ws, args, warm if n == 0 else None))
                    ours[name].append(user_path(ws, orders, f"input/orders-{rows}-{n}.csv"))
                    ours[name][-1]["requests"] = requests_between(trace, *ours[name][-1]["window"])
                    for label, peak in process_peaks(ws).items():
                        peaks[name][label] = max(peaks[name].get(label, 0), peak)
                    replicating = len(stacks) == 1 and not args.without_standby_replicator
                    settle(ws if replicating else None)
    bare_s = median(t for t, _ in bare_runs)
    return [
        _figures(args, rows, name, ours[name], peaks[name], bare_runs, bare_s, bare_shas)
        for name in stacks
    ]


def _figures(
    args: argparse.Namespace,
    rows: int,
    stack: str,
    runs: list[dict[str, Any]],
    peaks: dict[str, int],
    bare_runs: list[tuple[float, int]],
    bare_s: float,
    bare_shas: list[str],
) -> dict[str, Any]:
    ours_s = median(o["total_s"] for o in runs)
    shares = {p: median(o["phases"][p] for o in runs) for p in PHASES}
    figures: dict[str, Any] = {
        "stack": stack,
        "rows": rows,
        "executor": args.executor,
        "quoted": args.quoted,
        "standby_replicator": not args.without_standby_replicator,
        "repeat": args.repeat,
        "bare_s": round(bare_s, 3),
        "bare_runs_s": [round(t, 3) for t, _ in bare_runs],
        "bare_peak_rss_mb": round(max(m for _, m in bare_runs) / 2**20, 1),
        "user_path_s": round(ours_s, 3),
        "user_path_runs_s": [round(o["total_s"], 3) for o in runs],
        "ratio": round(ours_s / bare_s, 2),
        "phases_s": {p: round(v, 3) for p, v in shares.items()},
        "chunks": runs[0]["chunks"],
        "identical_output": [o["sha256"] for o in runs] == bare_shas,
        "peak_rss_mb": {k: round(v / 2**20, 1) for k, v in sorted(peaks.items())},
        "largest_process_mb": round(max(peaks.values()) / 2**20, 1),
    }
    counted = [o["requests"] for o in runs]
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
    return figures


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
    parser.add_argument(
        "--replication-nice", type=int, default=None, help="replication.nice (default: 10)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--executor", choices=["process-pool", "dask"], default="process-pool")
    parser.add_argument("--workers", type=int, default=0, help="chunk workers (0: one per core)")
    parser.add_argument("--aws", action="store_true", help="also on S3 + DynamoDB (moto)")
    args = parser.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    reference = write_reference(work / "financial.csv", args.reference_rows)
    moto = Moto() if args.aws else None
    if moto is not None:
        os.environ[TRACE_ENV] = str(work / "aws-requests.log")
    try:
        results = [r for rows in args.rows for r in run_size(args, work, reference, rows, moto)]
    finally:
        moto_peak = moto.stop() if moto is not None else 0
    shutil.rmtree(work, ignore_errors=True)
    if moto is not None:
        print(f"moto_server peak RSS: {moto_peak / 2**20:.0f} MB (the test endpoint)")
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"{'stack':>8} {'rows':>10} {'bare s':>8} {'put+wait s':>11} {'ratio':>6}"
        f" {'largest RSS MB':>15} {'identical':>9} {'S3 req':>7} {'DDB req':>7}"
    )
    for r in results:
        s3, ddb = r.get("s3_requests_per_file", "-"), r.get("dynamodb_requests_per_file", "-")
        print(
            f"{r['stack']:>8} {r['rows']:>10,} {r['bare_s']:>8.2f} {r['user_path_s']:>11.2f}"
            f" {r['ratio']:>6.2f} {r['largest_process_mb']:>15.1f}"
            f" {r['identical_output']!s:>9} {s3!s:>7} {ddb!s:>7}"
        )
    for r in results:
        total = sum(r["phases_s"].values()) or 1.0
        parts = "  ".join(
            f"{p} {v:.2f}s ({v / total:.0%})" for p, v in r["phases_s"].items() if p != "merge"
        )
        print(f"\n{r['stack']}, {r['rows']:,} rows: {parts}")
        print(f"  peak RSS per process (MB): {r['peak_rss_mb']}")
        if "requests_by_operation" in r:
            print(f"  requests per file by operation: {r['requests_by_operation']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
