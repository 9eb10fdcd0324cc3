"""The figures of README's "Backup and restore": a fresh two-region deployment processes
``--files`` generated files; a full backup, ``--more`` files, an incremental backup, a backup
with nothing new; ``--more`` files again that no backup holds; then the deployment stops, the
active region's data is deleted and restored, and the deployment starts again until the
regions converged (the last files come back by replication) and ``verify`` is clean.

    python benchmarks/backup_figures.py [--files 50] [--more 10] [--rows 10000] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mrbatch.cli.deploy import wait_until_up
from mrbatch.config.initialize import init_workspace
from mrbatch.config.workspace import Workspace
from mrbatch.maintain.backup import take_backup
from mrbatch.maintain.restore import restore
from mrbatch.proof.loadgen import LoadGenerator, LoadOptions
from mrbatch.proof.verify import verify
from mrbatch.runtime import supervisor
from mrbatch.runtime.replication import backlog


def _up(ws: Workspace) -> None:
    since = time.time()
    supervisor.start(ws)
    wait_until_up(ws, since)


def _drained(ws: Workspace, timeout: float = 120.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if all(backlog(ws, a, b).total == 0 for a in ws.regions for b in ws.regions if a != b):
            return time.monotonic() - started
        time.sleep(0.1)
    raise SystemExit("replication did not drain")


def _load(ws: Workspace, files: int, rows: int, seed: int, prefix: str) -> None:
    report = LoadGenerator(
        ws, LoadOptions(files=files, rows=rows, seed=seed, prefix=prefix, timeout=600)
    ).run()
    done = report.to_dict()
    if done["completed"] != files:
        raise SystemExit(f"load did not complete: {done['completed']}/{files}")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--more", type=int, default=10)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--chunk-rows", type=int, default=5_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {"files": args.files, "more": args.more, "rows": args.rows}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws = init_workspace(
            root / "ws", port=18_800 + int(time.time()) % 90, chunk_rows=args.chunk_rows
        )
        dest = str(root / "backup")
        lost = ws.regions[0]
        _up(ws)
        try:
            _load(ws, args.files, args.rows, 1, "input/first")
            _drained(ws)
            out["region_bytes"] = _size(ws.region_dir(lost))
            backups = [take_backup(ws, dest)]
            _load(ws, args.more, args.rows, 2, "input/more")
            _drained(ws)
            backups.append(take_backup(ws, dest))
            backups.append(take_backup(ws, dest))
            out["backups"] = [b.to_json() for b in backups]
            _load(ws, args.more, args.rows, 3, "input/after")  # only replication holds these
            _drained(ws)
            supervisor.stop(ws)
            out["region_bytes_after"] = _size(ws.region_dir(lost))
            out["dest_bytes"] = _size(root / "backup")
            shutil.rmtree(ws.region_dir(lost))
            out["restore"] = restore(ws, dest, region=lost).to_json()
            started = time.monotonic()
            _up(ws)
            out["catch_up_seconds"] = _drained(ws) + 0.0
            out["catch_up_total_seconds"] = time.monotonic() - started
            report = verify(ws, wait=60, final=True)
            out["verify"] = {"ok": report.ok, "counts": report.counts}
            out["verify_seconds"] = time.monotonic() - started
        finally:
            supervisor.stop(ws)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    mb = 1e6
    print(
        f"{args.files} + {args.more} + {args.more} files of {args.rows:,} rows; region {lost}:"
        f" {out['region_bytes'] / mb:.1f} MB on disk after the first {args.files}"
    )
    print()
    print("| step | time | records | objects | blobs copied | bytes copied | change files |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, b in zip(
        (
            f"full backup after {args.files} files",
            f"incremental after {args.more} more",
            "incremental, nothing new",
        ),
        out["backups"],
        strict=True,
    ):
        print(
            f"| {name} | {b['seconds']:.2f} s | {b['records']:,} | {b['objects']:,} |"
            f" {b['blobs_copied']:,} | {b['bytes_copied'] / mb:.1f} MB |"
            f" {b['change_bytes'] / 1e3:.0f} kB |"
        )
    r = out["restore"]
    print(
        f"| restore of {lost} (its data deleted) | {r['seconds']:.2f} s | {r['records']:,} |"
        f" {r['objects']:,} | - | {r['bytes_restored'] / mb:.1f} MB | - |"
    )
    print()
    print(
        f"backup directory: {out['dest_bytes'] / mb:.1f} MB; after the restore, `up` and the"
        f" catch-up of the {args.more} files no backup held: {out['catch_up_total_seconds']:.2f} s"
        f" (drained {out['catch_up_seconds']:.2f} s after the processes were up); verify"
        f" clean {out['verify_seconds']:.2f} s after the start: ok={out['verify']['ok']}"
        f" {out['verify']['counts']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
