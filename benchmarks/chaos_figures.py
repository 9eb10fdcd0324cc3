"""The figures of README's "Chaos and verification": every chaos experiment once, then seeded
scenarios, on a fresh two-region deployment, each ending in verify. Prints a Markdown table.

    python benchmarks/chaos_figures.py [--duration 5] [--files 4] [--seeds 2,4,5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mrbatch.cli.deploy import wait_until_up
from mrbatch.config.initialize import init_workspace
from mrbatch.config.workspace import Workspace
from mrbatch.proof.chaos import EXPERIMENTS, ChaosOptions, run_experiment
from mrbatch.proof.scenario import ScenarioOptions, run_scenario
from mrbatch.proof.verify import verify
from mrbatch.runtime import supervisor


def _deploy(root: Path, chunk_rows: int) -> Workspace:
    ws = init_workspace(root, port=18_900 + int(time.time()) % 90, chunk_rows=chunk_rows)
    text = ws.config_path.read_text().replace(
        'min_switch_interval = "60s"', 'min_switch_interval = "1s"'
    )
    ws.config_path.write_text(text)
    ws = Workspace.load(ws.config_path)
    since = time.time()
    supervisor.start(ws)
    wait_until_up(ws, since)
    return ws


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--chunk-rows", type=int, default=5_000)
    parser.add_argument("--seeds", default="2,4,5")
    parser.add_argument("--events", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        ws = _deploy(Path(tmp) / "ws", args.chunk_rows)
        try:
            for name in EXPERIMENTS:
                report = run_experiment(
                    ws,
                    ChaosOptions(
                        experiment=name,
                        duration=args.duration,
                        files=args.files,
                        rows=args.rows * 5 if name == "kill-worker" else args.rows,
                    ),
                )
                summary = report.to_dict()["summary"]
                kills = len(report.observed.get("kills", []))
                label = f"{name} ({kills} workers killed)" if kills else name
                rows.append({"run": label, "ok": report.ok, **summary})
            for seed in (int(s) for s in args.seeds.split(",") if s):
                scenario = run_scenario(
                    ws,
                    ScenarioOptions(
                        seed=seed,
                        events=args.events,
                        files=args.files * 3,
                        rows=args.rows,
                        max_fault=args.duration,
                    ),
                )
                data = scenario.to_dict()
                rows.append(
                    {
                        "run": f"scenario seed {seed}: "
                        + ", ".join(s["kind"] for s in data["schedule"]),
                        "ok": scenario.ok,
                        "files_in": data["summary"]["files_in"],
                        "completed": data["summary"]["completed"],
                        "failed": data["summary"]["failed"],
                        "lost": data["summary"]["lost"],
                        "duplicates": data["summary"]["duplicated"],
                        "violations": data["summary"]["violations"],
                        "time_to_recover": data["summary"]["time_to_recover"],
                    }
                )
            final = verify(ws, wait=60)
            rows.append(
                {
                    "run": "verify of the whole history",
                    "ok": final.ok,
                    "files_in": sum(final.counts.values()),
                    "completed": final.counts["ok"] + final.counts["recovered"],
                    "failed": final.failed,
                    "lost": final.counts["lost"],
                    "duplicates": final.counts["duplicated"],
                    "violations": len(final.violations),
                    "time_to_recover": None,
                }
            )
        finally:
            supervisor.stop(ws)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print("| run | files in | completed | failed | lost | duplicates | violations |"
              " time to recover |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            ttr = r["time_to_recover"]
            print(
                f"| {r['run']}{'' if r['ok'] else ' (FAILED)'} | {r['files_in']} |"
                f" {r['completed']} | {r['failed']} | {r['lost']} | {r['duplicates']} |"
                f" {r['violations']} | {'-' if ttr is None else f'{ttr:.2f} s'} |"
            )
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
