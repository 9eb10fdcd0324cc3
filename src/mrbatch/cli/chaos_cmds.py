"""``mrbatch verify``, ``chaos``, ``load`` and ``scenario``: proving the invariants hold."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from ..errors import UsageError
from ..faults import FaultPoints
from ..proof.chaos import EXPERIMENTS, ChaosOptions, ChaosReport, run_experiment
from ..proof.loadgen import FileResult, LoadGenerator, LoadOptions
from ..proof.scenario import ScenarioOptions, run_scenario
from ..proof.verify import VerifyReport
from ..proof.verify import verify as verify_invariants
from .app import (
    app,
    console,
    description_column,
    duration,
    err_console,
    json_option,
    print_json,
    state,
    styled,
)
from .tables import Col, emit, seconds

__all__ = ["interruptible"]


@contextmanager
def interruptible() -> Iterator[threading.Event]:
    """A flag that Ctrl-C and SIGTERM set (the handlers do nothing else), so the work in the
    block can stop at a safe point and restore what it changed; previous handlers come back."""
    flag = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: flag.set())
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _echo(json_output: bool) -> Callable[[str], None]:
    if json_output:
        return lambda _line: None
    return lambda line: err_console.print(line, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- verify


def print_verify(report: VerifyReport) -> None:
    counts = report.counts
    colour = "green" if report.ok else "red"
    console.print(
        styled(
            ("OK" if report.ok else "VIOLATIONS", colour),
            "  "
            + "  ".join(f"{name} {n}" for name, n in counts.items())
            + f"  (failed runs {report.failed}, diverged {report.diverged})",
        )
    )
    if report.violations:
        emit(
            (Col("kind"), Col("check", drop=2), Col("key"), Col("region", drop=1),
             Col("problem", wrap=True)),
            [[v.kind, v.check, v.key, v.region, v.problem] for v in report.violations],
            title=f"{len(report.violations)} violation(s)",
        )  # fmt: skip
    for note in report.notes:
        console.print(f"note: {note}", soft_wrap=True)


@app.command()
def verify(
    wait: float | None = duration(
        None, "--wait", help="Wait up to this long (e.g. 60s) for pending work and replication."
    ),
    final: bool = typer.Option(False, "--final", help="Count work still pending as lost."),
    quick: bool = typer.Option(False, "--quick", help="Skip recounting rows from the objects."),
    json_output: bool = json_option("Print the report as JSON (the documented contract)."),
) -> None:
    """Check the five invariants across all regions.

    Exits 1 on any lost, duplicated or diverged item."""
    report = verify_invariants(
        state.workspace(),
        deep=not quick,
        final=final,
        wait=wait or 0.0,
        echo=_echo(json_output),
    )
    if json_output:
        print_json(report.to_dict())
    else:
        print_verify(report)
    if not report.ok:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- chaos


# Why an experiment's hold ended, for people.
_STOPPED = {
    "deadline": "the fault held for its whole duration",
    "interrupted": "interrupted (Ctrl-C or SIGTERM) before the end of the fault",
    "deployment-down": "stopped early: a region or replicator process died",
    "run-failed": "stopped early: a run FAILED",
    "no-work": "no chunk task was in flight to kill",
}


def _observed(observed: dict[str, Any]) -> list[str]:
    """The evidence that the fault bit, one line each."""
    lines = []
    by_region = observed.get("uploads_by_region") or {}
    if by_region:
        shown = ", ".join(f"{n} to {region}" for region, n in sorted(by_region.items()))
        lines.append(f"uploads landed: {shown}")
    if observed.get("max_heartbeat_age") is not None:
        lines.append(f"longest heartbeat silence: {observed['max_heartbeat_age']:.2f}s")
    backlogs = {k.removeprefix("max_backlog_"): v for k, v in observed.items()
                if k.startswith("max_backlog_") and v}  # fmt: skip
    if backlogs:
        shown = ", ".join(f"{pair} {n}" for pair, n in sorted(backlogs.items()))
        lines.append(f"largest replication backlog: {shown}")
    for region, delta in sorted((observed.get("stats_delta") or {}).items()):
        counted = {k.replace("_", " "): v for k, v in delta.items() if v}
        if counted:
            lines.append(f"{region}: " + ", ".join(f"{k} +{v}" for k, v in counted.items()))
    return lines


def print_chaos(report: ChaosReport) -> None:
    data = report.to_dict()
    summary = data["summary"]
    colour = "green" if report.ok else "red"
    console.print(
        styled(
            (report.experiment, "bold"),
            f" in {report.region or 'every region'}"
            + (f" / {report.peer}" if report.peer else "")
            + f" for {report.duration:g}s: ",
            ("passed" if report.ok else "FAILED", colour),
            f"; {_STOPPED.get(report.stop_reason, report.stop_reason)}",
        ),
        soft_wrap=True,
    )
    rows = [
        [
            fault["point"],
            str(fault["region"] or "*") + (f" / {fault['peer']}" if fault["peer"] else ""),
            f"{fault['armed_at']:.2f}s",
            "-" if fault["disarmed_at"] is None else f"{fault['disarmed_at']:.2f}s",
        ]
        for fault in report.faults
    ]
    rows += [
        ["SIGKILL", f"worker {kill['pid']}", f"{kill['at']:.2f}s", "-"]
        for kill in report.observed.get("kills", [])
    ]
    emit(
        (Col("fault"), Col("region"), Col("armed at"), Col("disarmed at")),
        rows,
        title="faults (seconds from the start)",
    )
    ttr = summary["time_to_recover"]
    console.print(
        f"files in {summary['files_in']}, completed {summary['completed']}, failed"
        f" {summary['failed']}, pending {summary['pending']}, lost {summary['lost']},"
        f" duplicates {summary['duplicates']}, violations {summary['violations']};"
        f" time to recover {'-' if ttr is None else seconds(ttr)}",
        soft_wrap=True,
    )
    for line in _observed(report.observed):
        console.print(f"  {line}", soft_wrap=True)


@app.command()
def chaos(
    experiment: str = typer.Argument(
        ..., help=f"One of: {', '.join(EXPERIMENTS)}; or `faults` (list armed), `clear`."
    ),
    region: str | None = typer.Option(None, "--region", help="Target region (default: active)."),
    hold: float = duration("5s", "--duration", help="How long the fault lasts."),
    files: int = typer.Option(4, "--files", min=1, help="Files uploaded during the experiment."),
    rows: int | None = typer.Option(
        None, "--rows", min=1, help="Rows per file (default 2000; kill-worker 100000)."
    ),
    seed: int = typer.Option(1, "--seed", help="Seeds the generated files."),
    recover_timeout: float = duration(
        "120s", "--recover-timeout", help="Bound on waiting for recovery after the restore."
    ),
    json_output: bool = json_option("Print the report as JSON."),
) -> None:
    """Inject a fault into the running deployment, restore, verify and report."""
    ws = state.workspace()
    faults = FaultPoints(ws.faults_path)
    if experiment in ("faults", "clear"):
        armed = faults.all()
        if experiment == "clear":
            faults.disarm()
        if json_output:
            print_json([f.__dict__ for f in armed])
        else:
            verb = "cleared" if experiment == "clear" else "armed"
            console.print(f"{len(armed)} fault(s) {verb}")
            for f in armed:
                console.print(f"  {f.id} {f.point} region={f.region} peer={f.peer} {f.note}")
        return
    if experiment not in EXPERIMENTS:
        raise UsageError(
            f"unknown experiment {experiment!r}", hint=f"experiments: {', '.join(EXPERIMENTS)}"
        )
    options = ChaosOptions(
        experiment=experiment,
        region=region,
        duration=hold,
        files=files,
        rows=rows,
        seed=seed,
        recover_timeout=recover_timeout,
    )
    with interruptible() as stop:
        report = run_experiment(ws, options, stop=stop, echo=_echo(json_output))
    if json_output:
        print_json(report.to_dict())
    else:
        print_chaos(report)
    if not report.ok:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- load


@app.command()
def load(
    files: int = typer.Option(..., "--files", min=1, help="How many files to upload."),
    interval: float = duration("0s", "--interval", help="Pause between two uploads."),
    rows: int = typer.Option(1_000, "--rows", min=1, help="Rows per file."),
    invalid_fraction: float = typer.Option(
        0.0, "--invalid-fraction", min=0.0, max=1.0, help="Share of rows generated invalid."
    ),
    seed: int = typer.Option(1, "--seed", help="Seeds the generated files."),
    timeout: float = duration("300s", "--timeout", help="Bound on waiting for the runs."),
    concurrency: int = typer.Option(
        1, "--concurrency", min=1, max=64, help="Uploads in flight at once, as many clients."
    ),
    json_output: bool = json_option("Print the report as JSON."),
) -> None:
    """Upload generated orders files and measure throughput and latency.

    Generates orders files, uploads them through the access point and measures throughput,
    latency (upload -> published output) and rejections expected versus got."""
    ws = state.workspace()
    options = LoadOptions(
        files=files,
        interval=interval,
        rows=rows,
        invalid_fraction=invalid_fraction,
        seed=seed,
        timeout=timeout,
        concurrency=concurrency,
    )
    limit = ws.config.pipeline.max_rejected_fraction
    with (
        interruptible() as stop,
        Progress(
            description_column(),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            disable=json_output or not err_console.is_terminal,
        ) as bar,
    ):
        uploaded = bar.add_task("uploaded ", total=files)
        finished = bar.add_task("published", total=files)

        def on_event(kind: str, _result: FileResult) -> None:
            bar.advance(uploaded if kind in ("uploaded", "refused") else finished)
            if kind == "refused":
                bar.update(finished, total=(bar.tasks[finished].total or 1) - 1)

        generator = LoadGenerator(ws, options, stop=stop, on_event=on_event)
        generator.upload_all()
        generator.wait()  # returns early on Ctrl-C: the report shows what finished so far
    report = generator.report
    report.ended = report.ended or time.time()
    data = report.to_dict()
    expected_failed = sum(
        1 for r in report.results if r.sha256 and r.rows and r.expected_rejected / r.rows > limit
    )
    data["failed_expected"] = expected_failed
    if json_output:
        print_json(data)
    else:
        _print_load(data)
    if data["pending"] or data["refused"] or not data["rejections_match"]:
        raise typer.Exit(1)
    if data["failed"] != expected_failed:
        raise typer.Exit(1)


def _print_load(data: dict[str, Any]) -> None:
    lat = data["latency"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    console.print(
        f"{data['accepted']} of {data['files']} file(s) accepted ({data['refused']} refused);"
        f" {data['completed']} completed, {data['failed']} failed (expected"
        f" {data['failed_expected']}), {data['pending']} pending"
    )
    console.print(
        f"throughput {data['files_per_second']:.2f} files/s, {data['rows_per_second']:,.0f}"
        f" rows/s over {data['seconds']:.2f}s"
    )
    console.print(
        f"latency upload -> published: p50 {ms(lat['p50'])}, p95 {ms(lat['p95'])},"
        f" p99 {ms(lat['p99'])}, max {ms(lat['max'])}"
    )
    verdict = "as expected" if data["rejections_match"] else "MISMATCH"
    console.print(
        f"rejected rows: expected {data['rejected_expected']}, got {data['rejected_got']}"
        f" ({verdict})"
    )


# --------------------------------------------------------------------------- scenario


@app.command()
def scenario(
    seed: int = typer.Option(1, "--seed", help="Seeds the schedule of faults and the load."),
    events: int = typer.Option(4, "--events", min=0, help="How many faults to schedule."),
    files: int = typer.Option(8, "--files", min=1, help="Files uploaded over the scenario."),
    rows: int = typer.Option(2_000, "--rows", min=1, help="Rows per file."),
    max_fault: float = duration("2s", "--max-fault", help="Longest fault."),
    recover_timeout: float = duration(
        "120s", "--recover-timeout", help="Bound on waiting for recovery after each event."
    ),
    json_output: bool = json_option("Print the report as JSON."),
) -> None:
    """A seeded schedule of faults, failovers and failbacks over a load, then verify.

    The schedule of chaos experiments, failovers and failbacks is a pure function of the seed:
    the same seed gives the same schedule."""
    options = ScenarioOptions(
        seed=seed,
        events=events,
        files=files,
        rows=rows,
        max_fault=max_fault,
        recover_timeout=recover_timeout,
    )
    with interruptible() as stop:
        report = run_scenario(state.workspace(), options, stop=stop, echo=_echo(json_output))
    data = report.to_dict()
    if json_output:
        print_json(data)
    else:
        _print_scenario(seed, report.ok, data)
    if not report.ok:
        raise typer.Exit(1)


def _print_scenario(seed: int, ok: bool, data: dict[str, Any]) -> None:
    summary = data["summary"]
    ttr = summary.get("time_to_recover")
    console.print(
        styled(
            f"scenario seed {seed}: ",
            ("passed" if ok else "FAILED", "green" if ok else "red"),
            f"; {summary['events']} event(s) in {seconds(summary['seconds'])}; files in"
            f" {summary['files_in']}, completed {summary['completed']}, failed"
            f" {summary['failed']}, lost {summary['lost']}, duplicated"
            f" {summary['duplicated']}, recovered {summary['recovered']}, violations"
            f" {summary['violations']}; time to recover {'-' if ttr is None else seconds(ttr)}",
        ),
        soft_wrap=True,
    )
    rows = [
        [
            str(step["index"]),
            step["kind"],
            step.get("region") or step["role"],
            seconds(step["duration"]),
            step["outcome"],
            ", ".join(f"{k} {v}" for k, v in (step.get("detail") or {}).items()
                      if isinstance(v, str | int | float)),
        ]
        for step in data["schedule"]
    ]  # fmt: skip
    emit(
        (Col("#", justify="right"), Col("event"), Col("region"), Col("for", justify="right"),
         Col("outcome"), Col("detail", drop=1, wrap=True)),
        rows,
        title="schedule",
    )  # fmt: skip
