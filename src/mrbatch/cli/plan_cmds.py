"""``mrbatch plan show|evaluate|history``: recovery plans as code, checked now, and what their
executions did (``plan approve|deny|ungraceful`` are in :mod:`.drill_cmd`)."""

from __future__ import annotations

import typer

from ..config.plans import StepConfig
from ..recovery.evaluate import evaluate_plans
from ..recovery.plan import history
from .app import HELP, app, console, json_option, print_json, state, styled
from .recovery import print_execution
from .tables import Col, emit

__all__ = ["plan_app"]

plan_app = typer.Typer(
    help="Recovery plans as code: show, evaluate, history; answers to a running plan.",
    no_args_is_help=True,
    **HELP,  # type: ignore[arg-type]
)
app.add_typer(plan_app, name="plan")


@plan_app.command("show")
def plan_show(json_output: bool = json_option("Print both plans' steps as JSON.")) -> None:
    """The failover and failback plans as configured."""
    plans = state.workspace().config.plans
    if json_output:
        print_json(
            {
                name: [s.model_dump(exclude_none=True) for s in getattr(plans, name).steps]
                for name in ("failover", "failback")
            }
        )
        return
    for name in ("failover", "failback"):
        console.print(styled((name, "bold"), f" (from {plans.file})" if plans.file else ""))
        for n, step in enumerate(getattr(plans, name).steps, 1):
            console.print(f"  {n}. {_describe(step)}", markup=False, highlight=False)


def _describe(step: StepConfig, indent: str = "") -> str:
    timeout = f" (timeout {step.timeout:.0f}s)" if step.timeout else ""
    if step.parallel:
        inner = "; ".join(_describe(s) for s in step.parallel)
        return f"{step.name}: in parallel [{inner}]"
    if step.run:
        return f"{step.name}: run `{step.run}`{timeout}"
    if step.call:
        return f"{step.name}: call {step.call}{timeout}"
    return f"{step.name}" + ("" if step.action == step.name else f": {step.action}")


@plan_app.command("evaluate")
def plan_evaluate(json_output: bool = json_option("Print every check as JSON.")) -> None:
    """Check now that every step of both plans could run."""
    checks = evaluate_plans(state.workspace())
    if json_output:
        print_json(checks)
    else:
        rows = []
        for c in checks:
            colour = {"ok": "green", "warning": "yellow"}.get(c["status"], "red")
            rows.append([c["plan"], c["check"], styled((c["status"], colour)), c["detail"]])
        emit((Col("plan"), Col("check"), Col("status"), Col("detail", wrap=True)), rows)
    if any(c["status"] == "failed" for c in checks):
        raise typer.Exit(1)


@plan_app.command("history")
def plan_history(
    json_output: bool = json_option("Print the executions with their steps as JSON."),
    last: int = typer.Option(
        10, "--last", min=0, help="How many executions of each kind (0: all)."
    ),
    kind: str = typer.Option("all", "--kind", help="recovery, drill or all."),
) -> None:
    """Past plan executions with their step logs and RTO: real recoveries, then drills."""
    if kind not in ("all", "recovery", "drill"):
        raise typer.BadParameter("one of recovery, drill, all", param_hint="--kind")
    executions = history(state.workspace())
    groups = {
        name: [e for e in executions if e.kind == name][-last if last else 0 :]
        for name in ("recovery", "drill")
        if kind in ("all", name)
    }
    if json_output:
        chosen = sorted((e for group in groups.values() for e in group), key=lambda e: e.started)
        print_json([{**e.to_dict(), "kind": e.kind} for e in chosen])
        return
    for name, group in groups.items():
        console.print(styled((f"{name.capitalize()} executions", "bold"), f" ({len(group)})"))
        if not group:
            console.print(f"  no {name} has run yet")
        for execution in group:
            console.rule(execution.id + (f" (drill {execution.drill})" if execution.drill else ""))
            print_execution(execution)
