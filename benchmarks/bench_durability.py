"""The cost of durable acknowledgements: an upload as built against the same writes not synced.

    PYTHONPATH=src python benchmarks/bench_durability.py [--small 1000] [--large 20] \\
        [--cli 30] [--work DIR] [--keep] [--json]

On the embedded default (a local directory per region, SQLite state), no deployment running,
an upload is acknowledged only once its bytes and its ledger entry are on stable storage: the
blob is fsynced (file, then directory) before the index points at it, and the index commit,
the copy under the version's own key and the ``Accepted`` record commit with
``synchronous=FULL``. This times ``AccessPoint.put`` in-process, one upload at a time under
``input/`` (bytes, version copy, ledger entry, as every upload) of --small objects of 1 KB and
of 100 KB and of --large objects of 10 MB, in two modes taken in turn (one upload of each, so
both see the same load on the machine):

* ``durable`` — as built;
* ``not durable`` — the same ``AccessPoint.put`` whose store and table are wrapped so that every
  write is made with ``durable=False`` (no fsync, commits at ``synchronous=NORMAL``, which
  survive a crash of the process but not a power loss). The switch exists here only:
  mrbatch has no option to turn durability off.

Every upload is new bytes under a new key (a blob already present would be synced again, not
written). Then what a user sees: --cli runs of ``mrbatch put FILE`` (a new process each, the
1 KB file, timed from before the process starts to its exit), beside ``mrbatch --version``,
the start-up every command pays. Medians and p99 (nearest rank; with fewer than 100 samples it
is the slowest) per upload, in milliseconds, and the difference. The work directory is removed
at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from statistics import median
from typing import Any

from common import free_port, timed

from mrbatch.access.accesspoint import AccessPoint
from mrbatch.config.initialize import init_workspace
from mrbatch.config.workspace import Workspace

SIZES = {"1 KB": 1024, "100 KB": 100 * 1024, "10 MB": 10 * 1024 * 1024}
MRBATCH = Path(sys.executable).with_name("mrbatch")


class NotDurable:
    """Benchmark only: a store or state table whose writes all pass ``durable=False``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def put(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.put(*args, **{**kwargs, "durable": False})

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.copy(*args, **{**kwargs, "durable": False})

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.insert(*args, **{**kwargs, "durable": False})


def not_durable(ws: Workspace) -> AccessPoint:
    """An access point whose stores and tables (instances of their own) write not durably."""
    point = AccessPoint(ws)
    for region in ws.regions:
        point._stores[region] = NotDurable(point.store(region))
        point._tables[region] = NotDurable(point.table(region))
    return point


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median_ms": median(values) * 1e3, "p99_ms": p99(values) * 1e3}


def in_process(ws: Workspace, count: Mapping[str, int]) -> dict[str, dict[str, list[float]]]:
    points = {"durable": AccessPoint(ws), "not durable": not_durable(ws)}
    region = ws.regions[0]
    for point in points.values():  # open the files before the clock runs
        point.put("input/warm-up-" + str(id(point)), os.urandom(64), region=region)
    times: dict[str, dict[str, list[float]]] = {size: {m: [] for m in points} for size in SIZES}
    for size, nbytes in SIZES.items():
        for i in range(count[size]):
            for mode, point in points.items():
                data = os.urandom(nbytes)  # new bytes every time: a new blob
                key = f"input/bench/{size.replace(' ', '')}-{mode.replace(' ', '-')}-{i}.bin"
                start = time.perf_counter()
                located = point.put(key, data, region=region)
                times[size][mode].append(time.perf_counter() - start)
                assert located.accepted is not None  # acknowledged: kept and recorded
    return times


def command_line(ws: Workspace, work: Path, runs: int) -> dict[str, list[float]]:
    mrbatch = [str(MRBATCH)] if MRBATCH.exists() else [sys.executable, "-m", "mrbatch.cli.main"]
    times: dict[str, list[float]] = {"mrbatch put (1 KB)": [], "mrbatch --version": []}
    for i in range(runs):
        path = work / f"cli-{i}.csv"
        path.write_bytes(os.urandom(1024))
        times["mrbatch put (1 KB)"].append(
            timed([*mrbatch, "put", str(path), "--key", f"input/cli/{i}.csv"], ws.root)
        )
        times["mrbatch --version"].append(timed([*mrbatch, "--version"], ws.root))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--small", type=int, default=1000, help="uploads of 1 KB and 100 KB")
    parser.add_argument("--large", type=int, default=20, help="uploads of 10 MB")
    parser.add_argument("--cli", type=int, default=30, help="runs of `mrbatch put`")
    parser.add_argument("--work", type=Path, default=Path("bench-durability"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        ws = init_workspace(work / "ws", port=free_port())
        count = {"1 KB": args.small, "100 KB": args.small, "10 MB": args.large}
        uploads = in_process(ws, count)
        cli = command_line(ws, work, args.cli)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    figures: dict[str, Any] = {
        "in_process": {
            size: {mode: summary(values) for mode, values in modes.items()}
            for size, modes in uploads.items()
        },
        "command_line": {name: summary(values) for name, values in cli.items()},
    }
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    print(f"AccessPoint.put in-process, one upload at a time ({work.parent})")
    print(f"{'size':>7} {'n':>4} | {'durable':>17} | {'not durable':>17} | {'difference':>17}")
    print(
        f"{'':>7} {'':>4} | {'median':>8} {'p99':>8} | {'median':>8} {'p99':>8} |"
        f" {'median':>8} {'p99':>8}   (ms)"
    )
    for size, modes in figures["in_process"].items():
        on, off = modes["durable"], modes["not durable"]
        print(
            f"{size:>7} {on['n']:>4} | {on['median_ms']:8.2f} {on['p99_ms']:8.2f} |"
            f" {off['median_ms']:8.2f} {off['p99_ms']:8.2f} |"
            f" {on['median_ms'] - off['median_ms']:+8.2f} {on['p99_ms'] - off['p99_ms']:+8.2f}"
        )
    print("\nthe command line, a new process each run (durable, as built)")
    print(f"{'command':>20} {'n':>4} | {'median':>8} {'p99':>8}   (ms)")
    for name, row in figures["command_line"].items():
        print(f"{name:>20} {row['n']:>4} | {row['median_ms']:8.1f} {row['p99_ms']:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
