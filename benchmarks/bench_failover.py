"""Failover RTO with files in flight and an empty replication backlog.

    python benchmarks/bench_failover.py [--files 10] [--rows 50000] [--repeat 3] [--json]
                                        [--control-plane sqlite|etcd]

A real two-region deployment gets --files uploads of --rows orders each; once every one is
claimed and some of their chunks are done, the active region's process group is SIGKILLed and
replication is allowed to drain (the "empty backlog" of the figure). Then `mrbatch failover
--yes` is run as a user would (a new process), and at the same moment a new file is uploaded
through the access point. Reported per repetition:

- command -> first new file claimed in the new region (the figure the issue sets: < 5 s)
- command -> that new file published by the new region (on etcd this includes waiting out
  the killed region's lease, when it had not run out yet: see docs/DESIGN.md)
- command -> the plan's start (the new process's start-up and its first reads)
- the plan's own RTO (plan start -> activation), as `mrbatch failover` prints it
- command -> every file that was in flight completed

With --control-plane etcd, each round starts a three-member etcd cluster (Debian's
etcd-server, etcd's default timings: 100 ms heartbeat, 1 s election timeout) on 127.0.0.1 and
the workspace uses it with the default 2 s lease.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.etcd_cluster

from common import free_port

from mrbatch import backends
from mrbatch.access.accesspoint import AccessPoint
from mrbatch.cli.deploy import wait_until_up
from mrbatch.config.initialize import init_workspace, sample_bytes
from mrbatch.config.workspace import Workspace
from mrbatch.model.keys import run_id_for
from mrbatch.model.records import CHUNK, ChunkRun, ChunkStatus, FileRun, run_pk
from mrbatch.runtime import supervisor
from mrbatch.runtime.replication import backlog


def _orders(rows: int) -> bytes:
    sample = sample_bytes("orders.csv").rstrip(b"\n") + b"\n"
    header, body = sample.split(b"\n", 1)
    lines = body.split(b"\n")[:-1]
    out = [header]
    while len(out) - 1 < rows:
        out.extend(lines[: rows - (len(out) - 1)])
    return b"\n".join(out) + b"\n"


def _wait(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.01)
    raise SystemExit(f"timed out waiting for {what}")


def one_round(root: Path, files: int, rows: int, control_plane: str) -> dict[str, float]:
    if control_plane == "etcd":
        from tests.etcd_cluster import EtcdCluster

        with EtcdCluster(root / "etcd", heartbeat_ms=100, election_ms=1000) as cluster:
            ws = init_workspace(
                root / "ws",
                port=free_port(),
                chunk_rows=2_500,
                control_plane="etcd",
                etcd_endpoints=cluster.endpoints,
            )
            return _measure(Workspace.load(ws.config_path), files, rows)
    ws = init_workspace(root, port=free_port(), chunk_rows=2_500)
    return _measure(Workspace.load(ws.config_path), files, rows)


def _measure(ws: Workspace, files: int, rows: int) -> dict[str, float]:
    old, new = ws.regions
    since = time.time()
    supervisor.start(ws)
    try:
        wait_until_up(ws, since)
        access = AccessPoint(ws)
        data = _orders(rows)
        infos = [access.put(f"input/inflight-{n}.csv", data).info for n in range(files)]
        # different keys, same bytes: ten independent runs
        table = backends.open_state_table(ws, old)
        _wait(
            lambda: all(table.get(run_pk(run_id_for(i.key, i.sha256))) for i in infos),
            60,
            "every file to be claimed",
        )
        _wait(
            lambda: (
                sum(ChunkRun.from_record(r).status is ChunkStatus.DONE for r in table.scan(CHUNK))
                >= files
            ),
            60,
            "some chunks to finish",
        )
        supervisor.kill(ws, supervisor.Proc("region", old))
        _wait(lambda: backlog(ws, old, new).total == 0, 60, "the backlog to drain")
        started = time.time()
        command = subprocess.Popen(
            [sys.executable, "-m", "mrbatch.cli.main", "failover", "--yes", "--json"],
            cwd=ws.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        fresh = access.put("input/after-failover.csv", _orders(1_000)).info
        new_table = backends.open_state_table(ws, new)
        pk = run_pk(run_id_for(fresh.key, fresh.sha256))

        def claimed_in_new() -> FileRun | None:
            record = new_table.get(pk)
            run = FileRun.from_record(record) if record else None
            return run if run and run.region == new else None

        claim = _wait(claimed_in_new, 60, "the new file to be claimed")

        def published_in_new() -> float | None:
            run = claimed_in_new()
            steps = [h for h in (run.history if run else []) if h["status"] == "PUBLISHED"]
            return float(steps[0]["at"]) if steps else None

        published = _wait(published_in_new, 60, "the new file to be published")
        out, err = command.communicate(timeout=120)
        if command.returncode != 0:
            raise SystemExit(f"failover failed: {out}\n{err}")
        execution = json.loads(out)

        def all_done() -> bool:
            for info in infos:
                record = new_table.get(run_pk(run_id_for(info.key, info.sha256)))
                if record is None or not FileRun.from_record(record).status.terminal:
                    return False
            return True

        _wait(all_done, 120, "the files in flight to complete")
        done = time.time()
        statuses = set()
        for info in infos:
            record = new_table.get(run_pk(run_id_for(info.key, info.sha256)))
            statuses.add(FileRun.from_record(record).status if record else "MISSING")
        return {
            "first_new_claim_s": round(claim.claimed_at - started, 3),
            "first_new_publish_s": round(published - started, 3),
            "command_start_s": round(execution["started"] - started, 3),
            "plan_rto_s": execution["rto_seconds"],
            "plan_total_s": round(execution["ended"] - execution["started"], 3),
            "inflight_completed_s": round(done - started, 3),
            "statuses": sorted(str(s) for s in statuses),  # type: ignore[dict-item]
        }
    finally:
        supervisor.stop(ws)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--control-plane", choices=["sqlite", "etcd"], default="sqlite")
    args = parser.parse_args()
    rounds = []
    for _ in range(args.repeat):
        root = Path(tempfile.mkdtemp(prefix="mrbatch-bench-failover-"))
        try:
            rounds.append(one_round(root, args.files, args.rows, args.control_plane))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(rounds, indent=2))
        return 0
    print(
        f"{args.files} files of {args.rows:,} rows in flight, backlog drained, failover by"
        f" `mrbatch failover --yes` (a new process); {args.repeat} rounds;"
        f" control plane {args.control_plane}"
    )
    for key in (
        "first_new_claim_s",
        "first_new_publish_s",
        "command_start_s",
        "plan_rto_s",
        "plan_total_s",
        "inflight_completed_s",
    ):
        values = [float(r[key]) for r in rounds]  # type: ignore[arg-type]
        print(
            f"  {key:<22} median {median(values):6.2f}  min {min(values):6.2f}"
            f"  max {max(values):6.2f}"
        )
    print(f"  in-flight files ended: {sorted({s for r in rounds for s in r['statuses']})}")  # type: ignore[union-attr]
    return 0


if __name__ == "__main__":
    sys.exit(main())
