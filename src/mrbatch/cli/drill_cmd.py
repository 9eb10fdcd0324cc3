"""``mrbatch drill``, ``mrbatch report`` and ``mrbatch plan approve|deny|ungraceful``: recovery
you can practise and audit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ..recovery.answers import answer, switch_mode
from ..recovery.chain import load_reports, verify_chain
from ..recovery.drill import blocked, freeze, last_drill, run_drill
from ..recovery.report import render_markdown
from .app import HELP, app, console, err_console, json_option, print_json, state, styled
from .plan_cmds import plan_app
from .tables import Col, emit

drill_app = typer.Typer(
    help="Practise recovery on the live deployment: load, failover, failback, verify.",
    invoke_without_command=True,
    **HELP,  # type: ignore[arg-type]
)
report_app = typer.Typer(
    help="Recovery reports: list, show, verify the chain.",
    no_args_is_help=True,
    **HELP,  # type: ignore[arg-type]
)
app.add_typer(drill_app, name="drill")
app.add_typer(report_app, name="report")


@drill_app.callback()
def drill(
    ctx: typer.Context,
    files: int | None = typer.Option(None, "--files", help="Files of load (default drill.files)."),
    rows: int | None = typer.Option(None, "--rows", help="Rows per file (default drill.rows)."),
    mode: str | None = typer.Option(None, "--mode", help="graceful or ungraceful (drill.mode)."),
    report: Path | None = typer.Option(
        None, "--report", help="Also write the drill's report here (.md: Markdown, else JSON)."
    ),
    force: bool = typer.Option(False, "--force", help="Start even while a block says no."),
    json_output: bool = json_option("Print the drill's result (failures, plans, report) as JSON."),
) -> None:
    """Run a drill now; exit 1 on any violation or a missed RTO budget."""
    if ctx.invoked_subcommand is not None:
        return
    if mode is not None and mode not in ("graceful", "ungraceful"):
        raise typer.BadParameter("graceful or ungraceful", param_hint="--mode")
    ws = state.workspace()
    echo = (
        (lambda _line: None)
        if json_output
        else (lambda line: err_console.print(line, highlight=False, soft_wrap=True))
    )
    result = run_drill(ws, files=files, rows=rows, mode=mode, force=force, echo=echo)
    if report is not None:
        text = render_markdown(result) if report.suffix == ".md" else json.dumps(result, indent=2)
        report.write_text(text, encoding="utf-8")
    if json_output:
        print_json(result)
    else:
        verdict = ("PASSED", "green") if result.get("passed") else ("FAILED", "red")
        console.print(styled("drill ", (result["drill"], "bold"), ": ", verdict))
        for reason in result.get("failures") or []:
            console.print(f"  {reason}", soft_wrap=True)
        for plan in result.get("plans") or []:
            console.print(
                f"  {plan['plan']}: {plan['outcome']}, RTO {plan['rto']}s (budget"
                f" {plan['budget']:.0f}s), report {plan['report_seq']}"
            )
        console.print(f"report {result['seq']}: {result['report'].get('markdown')}", soft_wrap=True)
    if not result.get("passed"):
        raise typer.Exit(1)


@drill_app.command("freeze")
def drill_freeze(
    reason: str | None = typer.Option(
        None, "--reason", help="Why, shown by `drill status` and in the blocked drills' log."
    ),
) -> None:
    """Stop every drill from starting (scheduled or not) until `drill unfreeze`."""
    freeze(state.workspace(), True, reason=reason)
    console.print("drills are frozen")


@drill_app.command("unfreeze")
def drill_unfreeze() -> None:
    """Let drills start again."""
    freeze(state.workspace(), False)
    console.print("drills may start again")


@drill_app.command("status")
def drill_status(
    json_output: bool = json_option("Print what blocks a drill and the last drill as JSON."),
) -> None:
    """Whether a drill could start now, and how the last one went."""
    ws = state.workspace()
    info: dict[str, Any] = {"blocked": blocked(ws, scheduled=False), "last": last_drill(ws)}
    if json_output:
        print_json(info)
        return
    console.print(f"a drill now: {info['blocked'] or 'could start'}", soft_wrap=True)
    last = info["last"]
    console.print(
        "no drill has run yet"
        if last is None
        else f"last drill {last['drill']}: {last.get('state')}",
        soft_wrap=True,
    )


# --------------------------------------------------------------------------- reports


@report_app.command("list")
def report_list(json_output: bool = json_option("Print the reports' summaries as JSON.")) -> None:
    """Every recovery report, oldest first."""
    reports = load_reports(state.workspace())
    if json_output:
        print_json(
            [
                {k: r.get(k) for k in ("seq", "kind", "execution", "drill", "outcome", "hash")}
                | {"passed": r.get("passed")}
                for r in reports
            ]
        )
        return
    rows = []
    for r in reports:
        outcome = r.get("outcome") or ("passed" if r.get("passed") else "failed")
        rows.append(
            [str(r["seq"]), r.get("kind", ""), r.get("execution") or r.get("drill") or "",
             outcome, r["hash"][:16]]
        )  # fmt: skip
    columns = (
        Col("seq", justify="right"), Col("kind"), Col("execution / drill"), Col("outcome"),
        Col("hash", drop=1),
    )  # fmt: skip
    emit(columns, rows)


@report_app.command("show")
def report_show(
    seq: int = typer.Argument(..., help="The report's number (`mrbatch report list`)."),
    json_output: bool = json_option("Print the report's JSON instead of its Markdown."),
) -> None:
    """One report, as Markdown (or its JSON)."""
    found = [r for r in load_reports(state.workspace()) if r.get("seq") == seq]
    if not found:
        err_console.print(f"no report {seq}")
        raise typer.Exit(1)
    if json_output:
        print_json(found[0])
    else:
        console.print(render_markdown(found[0]), soft_wrap=True)


@report_app.command("verify")
def report_verify(
    json_output: bool = json_option("Print the verdict with every problem as JSON."),
) -> None:
    """Check the chain of reports: every gap, edit or broken link is named (exit 1)."""
    result = verify_chain(state.workspace(), render_markdown)
    if json_output:
        print_json(result)
    else:
        head = result["head"]
        console.print(
            styled(
                ("chain intact", "green") if result["ok"] else ("chain BROKEN", "red"),
                f": {result['reports']} report(s)"
                + (f", head {head['seq']} {str(head['hash'])[:16]}" if head else ""),
            )
        )
        for item in result["problems"] + result["warnings"]:
            console.print(f"  {item['kind']}: {item['problem']}", soft_wrap=True)
    if not result["ok"]:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- answers


def _answered(body: dict[str, object], json_output: bool) -> None:
    if json_output:
        print_json(body)
        return
    what = body.get("mode") or body.get("decision")
    keys = body.get("keys")
    console.print(
        f"{what} recorded for plan {body['execution']} by {body['by']}"
        + (f" for {', '.join(str(k) for k in keys)}" if isinstance(keys, list) and keys else ""),
        soft_wrap=True,
    )


@plan_app.command("approve")
def plan_approve(
    execution: str | None = typer.Argument(None, help="Execution id (default: the running one)."),
    key: list[str] = typer.Option(
        [], "--key", help="Approve leaving this input behind at the RPO gate (repeatable)."
    ),
    note: str | None = typer.Option(None, "--note", help="A note kept with the answer."),
    json_output: bool = json_option("Print the answer as recorded, as JSON."),
) -> None:
    """Approve a plan waiting at its approval step (or, with --key, the loss of inputs)."""
    _answered(answer(state.workspace(), execution, "approve", keys=key, note=note), json_output)


@plan_app.command("deny")
def plan_deny(
    execution: str | None = typer.Argument(None, help="Execution id (default: the running one)."),
    note: str | None = typer.Option(None, "--note", help="A note kept with the answer."),
    json_output: bool = json_option("Print the answer as recorded, as JSON."),
) -> None:
    """Deny a plan waiting at its approval step: it aborts with nothing changed."""
    _answered(answer(state.workspace(), execution, "deny", note=note), json_output)


@plan_app.command("ungraceful")
def plan_ungraceful(
    execution: str | None = typer.Argument(None, help="Execution id (default: the running one)."),
    json_output: bool = json_option("Print the switch as recorded, as JSON."),
) -> None:
    """Switch a running plan to ungraceful: its wait for replication becomes the bounded one."""
    _answered(switch_mode(state.workspace(), execution, "ungraceful"), json_output)
