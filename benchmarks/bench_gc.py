"""Bytes on disk before and after garbage collection, against what is live.

    python benchmarks/bench_gc.py [--files 500] [--rows 1000] [--json]

A fresh two-region deployment processes FILES generated files (`mrbatch load`, a subprocess),
then `mrbatch gc` runs twice (subprocesses): once as the region loop would right away (the
finished runs' intermediates go), and once past the retention window (the workspace is
configured with a one-second window, so the second pass also frees superseded bytes and
forgets tombstones). Reports, per pass: the bytes of every region's data on disk (buckets,
state, control plane) beside the bytes of the live objects under input/, output/ and
rejected/ in every region.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

from common import free_port

from mrbatch import backends
from mrbatch.cli.deploy import wait_until_up
from mrbatch.config.initialize import init_workspace
from mrbatch.config.workspace import Workspace
from mrbatch.runtime import supervisor
from mrbatch.runtime.replication import backlog


def _disk(ws: Workspace) -> int:
    total = 0
    for directory in (ws.data_dir / "regions",):
        for path in directory.rglob("*"):
            if path.is_file() and "cache" not in path.parts:
                total += path.stat().st_size
    return total


def _live(ws: Workspace) -> int:
    total = 0
    for region in ws.regions:
        store = backends.open_object_store(ws, region)
        for prefix in ("input/", "output/", "rejected/"):
            total += sum(info.size for info in store.list(prefix))
    return total


def _cli(ws: Workspace, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mrbatch.cli.main", *args],
        cwd=ws.root, capture_output=True, text=True, check=True, timeout=1800,
    )  # fmt: skip
    return done.stdout


def _drained(ws: Workspace) -> None:
    a, b = ws.regions
    while backlog(ws, a, b).total or backlog(ws, b, a).total:
        time.sleep(0.2)


def run(files: int, rows: int) -> dict[str, object]:
    with TemporaryDirectory() as tmp:
        ws = init_workspace(Path(tmp) / "ws", port=free_port(), chunk_rows=250)
        text = ws.config_path.read_text()
        text = text.replace('link_expiry = "60m"', 'link_expiry = "1s"')
        text = text.replace('max_link_lifetime = "7d"', 'max_link_lifetime = "1s"')
        text = text.replace('age = "7d"', 'age = "1s"').replace("enabled = true", "enabled = false")
        ws.config_path.write_text(text)
        ws = Workspace.load(ws.config_path)
        since = time.time()
        supervisor.start(ws)
        try:
            wait_until_up(ws, since)
            started = time.monotonic()
            _cli(ws, "load", "--files", str(files), "--rows", str(rows), "--timeout", "900s")
            processed = time.monotonic() - started
            _drained(ws)
            before = {"disk": _disk(ws), "live": _live(ws)}
            first = json.loads(_cli(ws, "gc", "--json"))
            _drained(ws)
            after_first = {"disk": _disk(ws), "live": _live(ws)}
            time.sleep(1.5)  # past the one-second window: tombstones and superseded bytes
            second = json.loads(_cli(ws, "gc", "--json"))
            after = {"disk": _disk(ws), "live": _live(ws)}
        finally:
            supervisor.stop(ws)
    return {
        "files": files,
        "rows": rows,
        "processing_seconds": round(processed, 2),
        "before": before,
        "after_intermediates": after_first,
        "after_window": after,
        "gc_seconds": [first["seconds"], second["seconds"]],
        "intermediates_removed": first["intermediates"],
        "bytes_freed": sum(p.get("bytes_freed", 0) for p in second["purged"].values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--rows", type=int, default=1_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.umask(0o077)
    result = run(args.files, args.rows)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    mib = 1 << 20
    print(f"{args.files} files of {args.rows} rows, processed in {result['processing_seconds']}s")
    for label, key in (
        ("before gc", "before"),
        ("after gc (intermediates)", "after_intermediates"),
        ("after gc past the window", "after_window"),
    ):
        row = result[key]
        assert isinstance(row, dict)
        print(
            f"  {label:<28} on disk {row['disk'] / mib:8.1f} MiB   live objects"
            f" {row['live'] / mib:8.1f} MiB   ratio {row['disk'] / max(1, row['live']):.2f}"
        )
    print(f"  gc took {result['gc_seconds'][0]}s and {result['gc_seconds'][1]}s")


if __name__ == "__main__":
    main()
