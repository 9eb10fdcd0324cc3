"""``mrbatch runs`` (the list), ``mrbatch runs show`` (one run) and ``mrbatch wait``."""

from __future__ import annotations

import sys
import time
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from ..access.accesspoint import AccessPoint
from ..access.ledger import read_accepted
from ..config.workspace import Workspace
from ..errors import MrbatchError, NotFoundError
from ..model.keys import run_id_for
from ..model.records import ChunkRun, ChunkStatus, FileRun, RunStatus
from ..observe import views
from ..ports import StateTable
from .app import (
    HELP,
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
from .tables import Col, clock, emit, seconds

__all__ = ["runs_app"]

runs_app = typer.Typer(
    help="The file runs known to any region: the list, or one run's history.",
    no_args_is_help=False,
    **HELP,  # type: ignore[arg-type]
)
app.add_typer(runs_app, name="runs")

SHORT_ID = 12  # how much of a run id the tables show; any unique prefix names the run


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def took(run: FileRun, now: float | None = None) -> float | None:
    """From the claim to the terminal state (or to now, for a run still going)."""
    if not run.claimed_at:
        return None
    end = run.updated_at if run.status.terminal else (time.time() if now is None else now)
    return end - run.claimed_at


_RUN_COLUMNS = (
    Col("run"),
    Col("input"),
    Col("status"),
    Col("region", drop=8),
    Col("epoch", drop=9, justify="right"),
    Col("started", drop=4),
    Col("took", drop=5, justify="right"),
    Col("in", drop=7, justify="right"),
    Col("out", drop=6, justify="right"),
    Col("rejected", drop=3, justify="right"),
    Col("output / reason", drop=2, wrap=True),
)


def _status_option() -> Any:
    return typer.Option(None, "--status", help="Only runs in this state, e.g. FAILED or completed.")


@runs_app.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    status_filter: str | None = _status_option(),
    limit: int = typer.Option(
        0, "--limit", "-n", min=0, help="Only the newest N runs (0: all of them)."
    ),
    json_output: bool = json_option("Print the runs as JSON (the documented contract)."),
) -> None:
    """The file runs known to any region, oldest first; `mrbatch runs show RUN` tells one's
    history."""
    if ctx.invoked_subcommand is not None:
        return
    if status_filter and status_filter.upper() not in RunStatus.__members__:
        raise typer.BadParameter(
            f"unknown status {status_filter!r} (one of {', '.join(RunStatus.__members__)})",
            param_hint="--status",
        )
    everything = views.all_runs(state.workspace(pipelines=False), status_filter=status_filter)
    items = everything[-limit:] if limit else everything
    if json_output:
        print_json([run.summary() for run in items])
        return
    now = time.time()
    rows = [
        [
            run.run_id[:SHORT_ID],
            run.input_key,
            str(run.status),
            run.region,
            str(run.epoch),
            clock(run.claimed_at, now),
            seconds(took(run, now)),
            _num(run.rows_in),
            _num(run.rows_out),
            _num(run.rows_rejected),
            (run.reason or "")
            if run.status is RunStatus.FAILED
            else (run.output_key or run.mail_error or ""),
        ]
        for run in items
    ]
    shown = f"{len(items)} of {len(everything)}" if len(items) < len(everything) else len(items)
    what = f" {status_filter.upper()}" if status_filter else ""
    emit(_RUN_COLUMNS, rows, title=f"{shown}{what} run(s)")


# --------------------------------------------------------------------------- one run


def _detail(run: FileRun, chunks: list[ChunkRun]) -> dict[str, Any]:
    return {
        **run.summary(),
        "history": run.history,
        "chunk_rows": run.chunk_rows,
        "reference_key": run.reference_key,
        "reference_sha256": run.reference_sha256,
        "mail_id": run.mail_id,
        "mail_attempts": run.mail_attempts,
        "chunk_records": [
            {
                "index": c.index,
                "status": str(c.status),
                "rows_in": c.rows_in,
                "rows_out": c.rows_out,
                "rows_rejected": c.rows_rejected,
                "attempts": c.attempts,
                "region": c.region,
                "round": c.round,
                "reason": c.reason,
                "last_error": c.last_error,
            }
            for c in chunks
        ],
    }


def _history_rows(run: FileRun) -> list[list[str]]:
    rows = []
    previous: float | None = None
    for entry in run.history:
        at = float(entry.get("at") or 0.0)
        rows.append(
            [
                str(entry.get("status")),
                clock(at),
                "-" if previous is None else seconds(at - previous),
                str(entry.get("region", "-")),
                str(entry.get("epoch", "-")),
                str(entry.get("note", "")),
            ]
        )
        previous = at
    return rows


def _mail_lines(run: FileRun) -> list[str]:
    lines = []
    if run.mail_sent_at:
        lines.append(f"completion mail {run.mail_id} sent {clock(run.mail_sent_at)}")
    elif run.mail_error:
        lines.append(
            f"completion mail not sent after {run.mail_attempts} attempt(s): {run.mail_error}"
        )
    failure = run.failure_mail
    if failure:
        if failure.get("sent_at"):
            lines.append(
                f"failure mail {failure.get('message_id')} sent {clock(failure['sent_at'])}"
            )
        elif failure.get("error"):
            lines.append(
                f"failure mail not sent after {failure.get('attempts')} attempt(s):"
                f" {failure['error']}"
            )
        else:
            lines.append(f"failure mail {failure.get('message_id')} being sent")
    return lines or ["no mail yet"]


@runs_app.command("show")
def show(
    ref: str = typer.Argument(
        ...,
        metavar="RUN",
        help="A run id (or the start of one, as `mrbatch runs` shows it)"
        " or an input key (its current version's run).",
    ),
    all_chunks: bool = typer.Option(
        False, "--chunks", help="List every chunk, not only those that are not DONE."
    ),
    json_output: bool = json_option("Print the run, its history and its chunks as JSON."),
) -> None:
    """One run: its input, rows, outputs, mail, and its history with the time of each step."""
    ws = state.workspace(pipelines=False)
    run = views.find_run(ws, ref)
    chunks = views.run_chunks(ws, run)
    if json_output:
        print_json(_detail(run, chunks))
        return
    colour = {"COMPLETED": "green", "FAILED": "red"}.get(str(run.status), "yellow")
    console.print(
        styled(("run ", "bold"), (run.run_id, "bold"), "  ", (str(run.status), colour)),
        soft_wrap=True,
    )
    facts = [
        ("input", f"{run.input_key} (sha256 {run.input_sha256[:16]}, {run.input_size} bytes)"),
        ("accepted", f"{clock(run.accepted_at)} by {run.accepted_region or '-'}"),
        ("driven", f"in {run.region}, epoch {run.epoch}; taken over or re-driven {run.redriven}x"),
        ("took", f"{seconds(took(run))} from claim to {run.status}"),
        (
            "rows",
            f"in {_num(run.rows_in)}, out {_num(run.rows_out)}, rejected {_num(run.rows_rejected)}",
        ),
    ]
    if run.reason:
        facts.append(("reason", run.reason))
    if run.output_key:
        facts.append(("output", f"{run.output_key} (this version: {run.result_key or '-'})"))
    if run.rejected_key:
        facts.append(
            ("rejected", f"{run.rejected_key} (this version: {run.result_rejected_key or '-'})")
        )
    if run.reference_key:
        facts.append(("reference", f"{run.reference_key} (sha256 {run.reference_sha256 or '-'})"))
    facts.extend(("mail", line) for line in _mail_lines(run))
    done = sum(c.status is ChunkStatus.DONE for c in chunks)
    facts.append(("chunks", f"{len(run.chunks)} of up to {run.chunk_rows} rows, {done} DONE"))
    for name, value in facts:
        console.print(f"{name:<10} {value}", soft_wrap=True)
    console.print()
    emit(
        (Col("step"), Col("at"), Col("after", justify="right"), Col("region", drop=2),
         Col("epoch", drop=3, justify="right"), Col("note", wrap=True)),
        _history_rows(run),
        title="history",
    )  # fmt: skip
    listed = [c for c in chunks if all_chunks or c.status is not ChunkStatus.DONE]
    if listed:
        console.print()
        emit(
            (Col("chunk", justify="right"), Col("status"), Col("in", justify="right"),
             Col("out", justify="right"), Col("rejected", justify="right"),
             Col("attempts", drop=2, justify="right"), Col("region", drop=3),
             Col("reason / last error", wrap=True)),
            [[str(c.index), str(c.status), _num(c.rows_in), _num(c.rows_out),
              _num(c.rows_rejected), str(c.attempts), c.region or "-",
              c.reason or c.last_error or ""] for c in listed],
            title="chunks" if all_chunks else "chunks not DONE",
        )  # fmt: skip


# --------------------------------------------------------------------------- wait


def _resolve(ws: Workspace, wanted: list[str]) -> tuple[set[str], set[str]]:
    """Input keys and run ids named on the command line: a key with accepted versions (or in
    a bucket), else a run id or its unique start. Fails at once (NotFoundError, exit 1) for
    anything that names neither, rather than waiting for it."""
    entries, _unreadable = read_accepted(ws)
    keys = {e.key for e in entries}
    runs: list[FileRun] | None = None
    found_keys: set[str] = set()
    found_ids: set[str] = set()
    access = AccessPoint(ws)
    for name in wanted:
        key = views.input_key(name)
        if key in keys:
            found_keys.add(key)
            continue
        try:
            access.locate(key)
        except NotFoundError:
            pass
        else:
            found_keys.add(key)
            continue
        ids = [e.run_id for e in entries if e.run_id.startswith(name.lower())]
        if len(name) >= views.MIN_PREFIX and len(set(ids)) == 1:
            found_ids.add(ids[0])
            continue
        runs = views.all_runs(ws) if runs is None else runs
        matched = views.runs_by_prefix(runs, name)
        if len(matched) == 1:
            found_ids.add(matched[0].run_id)
            continue
        also = "" if "/" in name or "." in name else f", and no run id starts with {name}"
        raise NotFoundError(
            f"nothing to wait for: no input {key} was uploaded{also}",
            hint="upload it first (`mrbatch put FILE`); `mrbatch runs` lists the runs",
        )
    return found_keys, found_ids


def _targets(ws: Workspace, keys: set[str] | None, ids: set[str]) -> dict[str, str]:
    """run id -> input key of every accepted version to wait for: all of them, or every
    accepted version of ``keys`` (and each key's current version, once it is visible), and
    the runs named by id."""
    entries, _unreadable = read_accepted(ws)
    targets = {e.run_id: e.key for e in entries if keys is None or e.key in keys or e.run_id in ids}
    access = AccessPoint(ws)
    for key in sorted(keys or ()):
        try:
            info = access.locate(key).info
        except NotFoundError:
            continue
        targets.setdefault(run_id_for(key, info.sha256), key)
    return targets


# `wait` notices a finished run within POLL_EVERY (one read per unfinished run and region),
# and a newly accepted version within TARGETS_EVERY (a read of the ledger).
POLL_EVERY = 0.02
TARGETS_EVERY = 0.5


@app.command()
def wait(
    keys: list[str] = typer.Argument(
        None,
        metavar="[KEY|RUN]...",
        help="Input keys (every accepted version of each) or run ids to wait for (default:"
        " every input).",
    ),
    timeout: float = duration(
        "300s", "--timeout", help="Give up after this long, e.g. 3s, 2m (exit 1)."
    ),
    json_output: bool = json_option("Print the finished and pending runs as JSON."),
) -> None:
    """Wait until every named input version (or every one) has finished.

    Waits for every accepted version of the KEYs (or the RUNs, or every input) to have a
    COMPLETED or FAILED run. Exits 1 on timeout or when a run FAILED, and at once when a KEY
    was never uploaded."""
    ws = state.workspace(pipelines=False)
    deadline = time.monotonic() + timeout
    wanted_keys, wanted_ids = _resolve(ws, keys) if keys else (set(), set())
    show = not json_output and sys.stderr.isatty()
    finished: dict[str, FileRun] = {}
    with Progress(
        description_column(),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not show,
    ) as bar:
        task = bar.add_task("waiting for runs", total=None)
        listed_at = -TARGETS_EVERY
        tables: dict[str, StateTable] = {}  # each region's, opened once
        while True:
            # What to wait for (the accepted versions) is read again now and then; whether
            # those runs have finished, every POLL_EVERY, with one read per unfinished run.
            if time.monotonic() - listed_at >= TARGETS_EVERY:
                targets = _targets(ws, wanted_keys if keys else None, wanted_ids)
                listed_at = time.monotonic()
            unfinished = [rid for rid in targets if rid not in finished]
            try:
                runs = views.runs_by_id(ws, unfinished, tables)
            except MrbatchError:
                runs = {}
            finished.update((rid, run) for rid, run in runs.items() if run.status.terminal)
            bar.update(task, total=len(targets), completed=len(finished))
            if len(finished) == len(targets):
                break
            if time.monotonic() >= deadline:
                pending = sorted(
                    f"{targets[rid]} (run {rid[:SHORT_ID]})" for rid in set(targets) - set(finished)
                )
                _report(finished, pending, json_output)
                raise typer.Exit(1)
            time.sleep(POLL_EVERY)
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
            f"{run.status:<9} {run.input_key}  run {run.run_id[:SHORT_ID]}  in={run.rows_in}"
            f" out={run.rows_out} rejected={run.rows_rejected}"
        )
        if run.status is RunStatus.FAILED:
            line += f"  reason: {run.reason}"
        console.print(line, soft_wrap=True)
    for key in pending:
        console.print(f"PENDING   {key}  (not finished before the timeout)", soft_wrap=True)
