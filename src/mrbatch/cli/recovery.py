"""``mrbatch failover``, ``failback``, ``reconcile``, ``redrive`` and ``watch``; ``plan`` is in
:mod:`.plan_cmds`."""

from __future__ import annotations

import sys
from datetime import UTC
from typing import Any

import typer

from ..recovery.operations import (
    failback_target,
    failover_target,
    reconcile_now,
    redrive,
    redrive_matching,
)
from ..recovery.plan import MODES, Execution, StepLog
from ..recovery.runbook import Runbook
from .app import app, console, duration, err_console, json_option, print_json, state, styled
from .tables import Col, clock, emit, seconds

MODE_HELP = (
    "ungraceful",
    "graceful: wait for replication without a bound (nothing is left behind); ungraceful:"
    " the bounded wait (--max-wait), naming what is left behind.",
)
LOSS_HELP = "Accept leaving this input (key or run id) behind at the RPO gate; repeatable."


def _confirm(prompt: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return typer.confirm(prompt, default=False)


def _run_plan(
    plan: str,
    target: str,
    yes: bool,
    force: bool,
    max_wait: float | None,
    json_output: bool,
    mode: str = "ungraceful",
    accept_loss: list[str] | None = None,
) -> None:
    ws = state.workspace()
    echo = (
        (lambda _line: None)
        if json_output
        else (lambda line: err_console.print(line, highlight=False, soft_wrap=True))
    )
    execution = Runbook(
        ws,
        plan,
        target,
        yes=yes,
        force=force,
        max_wait=max_wait,
        confirm=_confirm,
        echo=echo,
        interactive=sys.stdin.isatty(),
        mode=mode,
        accept_loss=tuple(accept_loss or ()),
    ).execute()
    if json_output:
        print_json(execution.to_dict())
    else:
        print_execution(execution)
    if execution.outcome != "succeeded":
        raise typer.Exit(1)
    if execution.at_risk:
        # The switch worked, but some input may be lost: a script must not read this as clean.
        err_console.print(
            f"{plan} succeeded, but {len(execution.at_risk)} input(s) are at risk:"
            " see the reconcile step"
        )
        raise typer.Exit(1)


def print_execution(execution: Execution) -> None:
    colour = {"succeeded": "green", "aborted": "yellow"}.get(execution.outcome, "red")
    console.print(
        styled(
            (execution.plan, "bold"),
            f" to {execution.target}: ",
            (execution.outcome, colour),
            f" — {execution.reason}" if execution.reason else "",
        ),
        soft_wrap=True,
    )
    if execution.rto_seconds is not None:
        verdict = "within" if execution.rto_seconds <= execution.desired_rto else "OVER"
        console.print(
            f"RTO {execution.rto_seconds:.2f}s ({verdict} the desired"
            f" {execution.desired_rto:.0f}s); epoch {execution.epoch_before} ->"
            f" {execution.epoch_after}"
        )
    _print_steps(execution.steps)
    if execution.report:
        console.print(
            f"recovery report {execution.report['seq']}:"
            f" {execution.report.get('files', {}).get('markdown', '')}",
            soft_wrap=True,
        )


def _print_steps(steps: list[StepLog]) -> None:
    rows: list[list[str]] = []

    def add(step: StepLog, indent: str = "") -> None:
        rows.append(
            [
                indent + step.name,
                step.outcome,
                clock(step.started),
                seconds(step.seconds),
                step.message,
            ]
        )
        for child in step.children:
            add(child, indent + "  ")

    for step in steps:
        add(step)
    emit(
        (Col("step"), Col("outcome"), Col("at", drop=2), Col("took", drop=1, justify="right"),
         Col("message", wrap=True)),
        rows,
    )  # fmt: skip


def _yes() -> Any:
    return typer.Option(False, "--yes", "-y", help="Approve without a prompt.")


def _max_wait() -> Any:
    return duration(
        None,
        "--max-wait",
        help="Bound on waiting for replication, e.g. 60s (default: failover.max_wait).",
    )


def _force() -> Any:
    return typer.Option(
        False, "--force", help="Override readiness and the minimum time between switches."
    )


def _mode_option() -> Any:
    return typer.Option(MODE_HELP[0], "--mode", help=MODE_HELP[1])


def _accept_loss() -> Any:
    return typer.Option([], "--accept-loss", help=LOSS_HELP)


_PLAN_JSON = "Print the plan's execution (steps, evidence, RTO) as JSON."


@app.command()
def failover(
    to: str | None = typer.Option(None, "--to", help="Region to activate (default: the standby)."),
    yes: bool = _yes(),
    max_wait: float | None = _max_wait(),
    force: bool = _force(),
    json_output: bool = json_option(_PLAN_JSON),
    mode: str = _mode_option(),
    accept_loss: list[str] = _accept_loss(),
) -> None:
    """Run the failover plan against the region being activated."""
    ws = state.workspace(pipelines=False)
    _run_plan(
        "failover",
        failover_target(ws, to),
        yes,
        force,
        max_wait,
        json_output,
        _mode(mode),
        accept_loss,
    )


@app.command()
def failback(
    to: str | None = typer.Option(
        None, "--to", help="Region to return to (default: the first listed)."
    ),
    yes: bool = _yes(),
    max_wait: float | None = _max_wait(),
    force: bool = _force(),
    json_output: bool = json_option(_PLAN_JSON),
    mode: str = _mode_option(),
    accept_loss: list[str] = _accept_loss(),
) -> None:
    """Run the failback plan: catch the returning region up, hand runs over, activate it."""
    ws = state.workspace(pipelines=False)
    _run_plan(
        "failback",
        failback_target(ws, to),
        yes,
        force,
        max_wait,
        json_output,
        _mode(mode),
        accept_loss,
    )


def _mode(value: str) -> str:
    if value not in MODES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(MODES)}", param_hint="--mode")
    return value


@app.command()
def reconcile(
    max_wait: float | None = duration(
        None,
        "--max-wait",
        help="How long to watch for inputs still arriving (default: failover.max_wait).",
    ),
    json_output: bool = json_option("Print the report (re-driven, at risk...) as JSON."),
) -> None:
    """Re-drive every unfinished run in the active region; report each by name."""
    ws = state.workspace(pipelines=False)
    echo = (lambda _l: None) if json_output else (lambda line: err_console.print(line))
    report = reconcile_now(ws, max_wait=max_wait, echo=echo)
    if json_output:
        print_json(report)
    else:
        _print_report(report)
    if report["at_risk"]:
        raise typer.Exit(1)


def _print_report(report: dict[str, Any]) -> None:
    console.print(
        f"reconcile in {report['active_region']} (epoch {report['epoch']}):"
        f" {len(report['redriven'])} re-driven, {len(report['in_progress'])} already"
        f" running, {len(report['arrived'])} arrived late,"
        f" {len(report['at_risk'])} at risk"
    )
    for item in report["redriven"]:
        console.print(
            f"  re-driven  {item['input_key']} (run {item['run_id']}), now {item.get('status')}"
        )
    for item in report["at_risk"]:
        console.print(
            styled(
                "  ",
                ("AT RISK", "red"),
                f"    {item['input_key']} (run {item['run_id']}): its"
                f" {item['what']} is only in {item['region']}",
            ),
            soft_wrap=True,
        )


@app.command(name="redrive")
def redrive_command(
    key: str | None = typer.Argument(
        None,
        metavar="KEY|RUN",
        help="Input key, or run id (or its start, as `mrbatch runs` shows it), of a FAILED run;"
        " or --status instead.",
    ),
    status: str | None = typer.Option(
        None, "--status", help="Every run with this status (FAILED) instead of one."
    ),
    since: str | None = typer.Option(
        None, "--since", help="With --status: updated at or after (ISO 8601 or @unix)."
    ),
    prefix: str | None = typer.Option(None, "--prefix", help="With --status: input key prefix."),
    json_output: bool = json_option(
        "Print where the run resumes as JSON (with --status: a list, one per run)."
    ),
) -> None:
    """Run a FAILED run (or every matching one) again in the active region, from its last step.

    Says per run where it resumes and how many chunks run again, or why it was not re-driven."""
    if (key is None) == (status is None):
        raise typer.BadParameter("give a KEY or --status FAILED", param_hint="KEY")
    ws = state.workspace()
    if status is None:
        assert key is not None
        results = [{"ok": True, **redrive(ws, key)}]
    else:
        results = redrive_matching(ws, status=status.upper(), since=_since(since), prefix=prefix)
    if json_output:
        print_json(results if status is not None else results[0])
    else:
        if status is not None:
            console.print(f"{len(results)} run(s) matched")
        for result in results:
            if not result["ok"]:
                console.print(
                    f"run {result['run_id']} ({result['input_key']}): not re-driven:"
                    f" {result['error']}"
                )
                continue
            changed = ""
            if result.get("pipeline_changed"):
                changed = "; the pipeline changed"
            elif result["reference_changed"]:
                changed = "; the reference data changed"
            console.print(
                f"run {result['run_id']} ({result['input_key']}) resumes at"
                f" {result['resumes_at']} in {result['region']}: {result['chunks_to_run']}"
                f" chunk(s) to run, {result['chunks_kept']} kept{changed}"
            )
    if any(not r["ok"] for r in results):
        raise typer.Exit(1)


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    from datetime import datetime

    try:
        if value.startswith("@"):
            return float(value[1:])
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@app.command()
def watch(
    auto_failover: bool = typer.Option(
        False,
        "--auto-failover",
        help="Run the failover plan when the active region is unhealthy and the standby is ready.",
    ),
    iterations: int | None = typer.Option(
        None, "--iterations", min=1, help="Stop after N checks (default: run until Ctrl-C)."
    ),
) -> None:
    """Watch the active region's health; recommend (or run) a failover, with the evidence."""
    from ..recovery.watch import Watcher  # drills load generated files: polars, only here

    ws = state.workspace()
    watcher = Watcher(
        ws,
        auto_failover=auto_failover,
        echo=lambda line: console.print(line, highlight=False, soft_wrap=True),
    )
    try:
        watcher.run(iterations)
    except KeyboardInterrupt:
        pass
