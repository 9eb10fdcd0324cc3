"""``mrbatch runs`` and ``mrbatch wait``."""

from __future__ import annotations

import sys
import time

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from ..access.accesspoint import AccessPoint
from ..access.ledger import read_accepted
from ..errors import MrbatchError, NotFoundError
from ..model.keys import run_id_for
from ..model.records import FileRun, RunStatus
from ..observe import views
from .app import app, console, err_console, print_json, state


@app.command()
def runs(
    status_filter: str | None = typer.Option(None, "--status", help="Only runs in this state."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """The file runs known to any region (newest last)."""
    if status_filter and status_filter.upper() not in RunStatus.__members__:
        raise typer.BadParameter(
            f"unknown status {status_filter!r} (one of {', '.join(RunStatus.__members__)})",
            param_hint="--status",
        )
    items = views.all_runs(state.workspace(), status_filter=status_filter)
    if json_output:
        print_json([run.summary() for run in items])
        return
    table = Table(title=f"{len(items)} run(s)", title_justify="left")
    for column in (
        "run",
        "input",
        "status",
        "region",
        "epoch",
        "in",
        "out",
        "rejected",
        "output / reason",
    ):
        table.add_column(column)
    for run in items:
        table.add_row(
            run.run_id[:12],
            run.input_key,
            str(run.status),
            run.region,
            str(run.epoch),
            _num(run.rows_in),
            _num(run.rows_out),
            _num(run.rows_rejected),
            run.reason
            if run.status is RunStatus.FAILED
            else (run.output_key or run.mail_error or ""),
        )
    console.print(table)


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def _targets(ws: views.Workspace, keys: list[str] | None) -> dict[str, str]:
    """run id -> input key of every accepted version to wait for: all of them, or every
    accepted version of ``keys`` (and each key's current version, once it is visible)."""
    wanted = {views.input_key(k) for k in keys} if keys else None
    entries, _unreadable = read_accepted(ws)
    targets = {e.run_id: e.key for e in entries if wanted is None or e.key in wanted}
    access = AccessPoint(ws)
    for key in sorted(wanted or ()):
        try:
            info = access.locate(key).info
        except NotFoundError:
            continue
        targets.setdefault(run_id_for(key, info.sha256), key)
    return targets


@app.command()
def wait(
    keys: list[str] = typer.Argument(
        None, help="Input keys to wait for, every accepted version of each (default: all)."
    ),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds before giving up (exit 1)."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Wait until every accepted version of KEYs (or of every input) has a COMPLETED or
    FAILED run. Exits 1 on timeout or when a run FAILED."""
    ws = state.workspace()
    deadline = time.monotonic() + timeout
    explicit = bool(keys)
    show = not json_output and sys.stderr.isatty()
    finished: dict[str, FileRun] = {}
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not show,
    ) as bar:
        task = bar.add_task("waiting for runs", total=None)
        while True:
            targets = _targets(ws, keys if explicit else None)
            try:
                by_id = {run.run_id: run for run in views.all_runs(ws)}
            except MrbatchError:
                by_id = {}
            finished = {
                rid: by_id[rid] for rid in targets if rid in by_id and by_id[rid].status.terminal
            }
            # A key named but not uploaded yet is waited for too.
            missing = [
                k for k in {views.input_key(k) for k in keys or ()} if k not in targets.values()
            ]
            bar.update(task, total=len(targets) + len(missing), completed=len(finished))
            if len(finished) == len(targets) and not missing:
                break
            if time.monotonic() >= deadline:
                pending = sorted(
                    [f"{targets[rid]} (run {rid})" for rid in set(targets) - set(finished)]
                    + missing
                )
                _report(finished, pending, json_output)
                raise typer.Exit(1)
            time.sleep(0.1)
    _report(finished, [], json_output)
    if any(run.status is RunStatus.FAILED for run in finished.values()):
        raise typer.Exit(1)


def _report(finished: dict[str, FileRun], pending: list[str], json_output: bool) -> None:
    if json_output:
        print_json(
            {
                "finished": [run.summary() for run in finished.values()],
                "pending": pending,
            }
        )
        return
    for run in sorted(finished.values(), key=lambda r: (r.input_key, r.order)):
        line = (
            f"{run.status:<9} {run.input_key}  in={run.rows_in} out={run.rows_out}"
            f" rejected={run.rows_rejected}"
        )
        if run.status is RunStatus.FAILED:
            line += f"  reason: {run.reason}"
        console.print(line, soft_wrap=True)
    for key in pending:
        console.print(f"PENDING   {key}  (not finished before the timeout)")
