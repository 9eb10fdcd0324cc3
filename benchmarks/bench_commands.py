"""How quickly the commands that move no data answer, and how soon `wait` notices a finished run.

    python benchmarks/bench_commands.py [--repeat 15] [--work DIR] [--json]

On a running two-region deployment (embedded default) holding one finished run, each command is
run --repeat times as the user runs it (the installed ``mrbatch`` script, a new process each
time) and timed from before the process starts to its exit: ``--help``, ``--version``,
``status --json``, ``runs --json``, ``url KEY``, ``wait KEY`` (of a finished run); they go
through the deployment's command server. Beside them, the same interpreter starting and doing
nothing (``python -c pass``), the floor any command pays; three of the commands run in their
own process (``MRBATCH_IN_PROCESS=1``, as when no command server runs), and ``--help`` outside
any workspace.

Then `wait`'s notice: a 500,000-row file is put and ``mrbatch wait KEY`` started at once; the
time from the run's COMPLETED record (its history) to the exit of ``wait``, over the files (of
--repeat) whose run ended well after `wait` had started polling.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

from common import free_port, timed

from mrbatch import backends
from mrbatch.cli.deploy import wait_until_up
from mrbatch.config.initialize import init_workspace, sample_bytes
from mrbatch.model.keys import run_id_for
from mrbatch.model.records import FileRun, run_pk
from mrbatch.runtime import supervisor

MRBATCH = str(Path(sys.executable).with_name("mrbatch"))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--work", type=Path, default=Path("bench-commands"))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ws = init_workspace(work / "ws", port=free_port())
    orders = work / "orders.csv"  # the sample file `mrbatch init` ships (10,000 rows)
    orders.write_bytes(sample_bytes("orders.csv"))
    since = time.time()
    supervisor.start(ws)
    try:
        wait_until_up(ws, since)
        root = ws.root
        timed([MRBATCH, "put", str(orders), "--key", "input/first.csv"], root)
        timed([MRBATCH, "wait", "input/first.csv"], root)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "--help": [MRBATCH, "--help"],
            "--version": [MRBATCH, "--version"],
            "status --json": [MRBATCH, "status", "--json"],
            "runs --json": [MRBATCH, "runs", "--json"],
            "url KEY": [MRBATCH, "url", "output/first.csv"],
            "wait KEY (finished)": [MRBATCH, "wait", "input/first.csv"],
        }
        # The same commands in their own process, as without the command server (a deployment
        # that is not up, or MRBATCH_IN_PROCESS=1), and --help outside any workspace.
        own = {**os.environ, "MRBATCH_IN_PROCESS": "1"}
        elsewhere = {"--help (no workspace)": ([MRBATCH, "--help"], work, None)}
        for name in ("status --json", "runs --json", "wait KEY (finished)"):
            elsewhere[f"{name} (own process)"] = (commands[name], root, own)
        startup: dict[str, list[float]] = {name: [] for name in [*commands, *elsewhere]}
        for _ in range(args.repeat):  # alternating, so a busy moment spreads over all of them
            for name, command in commands.items():
                startup[name].append(timed(command, root))
            for name, (command, cwd, env) in elsewhere.items():
                startup[name].append(timed(command, cwd, env))
        wait_startup = median(startup["wait KEY (finished)"])
        # A file that takes a second or so to process: `wait` is polling when the run ends.
        sample = sample_bytes("orders.csv")
        header, _, body = sample.partition(b"\n")
        bigger = work / "orders-500k.csv"
        bigger.write_bytes(header + b"\n" + body * 50)
        notices = []
        for n in range(args.repeat):
            key = f"input/notice-{n}.csv"
            put = subprocess.run(
                [MRBATCH, "put", str(bigger), "--key", key, "--json"],
                cwd=root, capture_output=True, text=True, check=True,
            )  # fmt: skip
            started = time.time()
            timed([MRBATCH, "wait", key], root)
            ended = time.time()
            sha256 = json.loads(put.stdout)["sha256"]
            record = backends.open_state_table(ws, ws.regions[0]).get(
                run_pk(run_id_for(key, sha256))
            )
            assert record is not None
            run = FileRun.from_record(record)
            completed = next(h["at"] for h in run.history if h["status"] == "COMPLETED")
            if completed > started + wait_startup:  # `wait` was polling by then
                notices.append(ended - completed)
        if not notices:
            raise SystemExit("every run finished before `wait` was polling: nothing measured")
    finally:
        supervisor.stop(ws)
        shutil.rmtree(work, ignore_errors=True)
    figures: dict[str, Any] = {
        "startup_s": {name: {"median": median(t), "max": max(t)} for name, t in startup.items()},
        "wait_notice_s": {
            "median": median(notices),
            "max": max(notices),
            "files": len(notices),
        },
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"{'command':<34} {'median s':>9} {'max s':>7}   ({args.repeat} runs each)")
    for name, f in figures["startup_s"].items():
        print(f"{name:<34} {f['median']:>9.3f} {f['max']:>7.3f}")
    n = figures["wait_notice_s"]
    print(
        f"\n`wait` exits {n['median']:.3f} s (median; max {n['max']:.3f} s) after the run is"
        f" COMPLETED ({n['files']} files)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
