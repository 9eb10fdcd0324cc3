"""``mrbatch reload``: running processes apply an edited mrbatch.toml now, and say how it went."""

from __future__ import annotations

import time
from typing import Any

import typer

from ..config.reload import fingerprint, request_reload
from ..errors import ConfigError
from ..observe import views
from .app import app, console, duration, json_option, print_json, state, styled
from .tables import Col, emit

__all__ = ["reload"]


def _processes(data: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """label -> configuration report of every process that runs (None: not reported yet)."""
    found: dict[str, dict[str, Any] | None] = {}
    for name, region in data["regions"].items():
        if region.get("alive"):
            found[f"region:{name}"] = region.get("config")
        if region.get("replicator_alive"):
            found[f"replicator:{name}"] = region.get("replicator_config")
    if data["gateway"].get("alive"):
        found["gateway"] = data["gateway"].get("config")
    if data["supervisor"].get("alive"):
        found["supervisor"] = data["supervisor"].get("config")
    return found


def _outcome(report: dict[str, Any] | None, digest: str) -> str:
    if not isinstance(report, dict):
        return "waiting"
    if report.get("error"):
        return "refused"
    if report.get("digest") != digest:
        return "waiting"
    return "restart needed" if report.get("restart_needed") else "applied"


@app.command()
def reload(
    timeout: float = duration(
        "10s", "--timeout", help="How long to wait for every process to answer."
    ),
    json_output: bool = json_option("Print each process's outcome as JSON."),
) -> None:
    """Make every running process apply the edited mrbatch.toml now.

    Processes also notice an edit by themselves within a second or two; this asks at once and
    reports each one: applied, refused (it keeps the configuration it runs with, and says why),
    or applied but for settings that need a restart (regions, data_dir, backends,
    gateway.host, gateway.port, pipeline.workers, replication.nice, ingest.node). Exits 1
    unless every process applied all of it."""
    try:
        ws = state.workspace()  # an edit that does not load fails here, before anyone is asked
    except ConfigError as exc:
        raise ConfigError(
            exc.message,
            hint="nothing was applied: running processes keep the configuration they run with;"
            " fix the file, then `mrbatch reload` again",
        ) from exc
    digest = fingerprint(ws)
    request_reload(ws)
    deadline = time.monotonic() + timeout
    while True:
        procs = _processes(views.status(ws))
        outcomes = {label: _outcome(report, digest) for label, report in procs.items()}
        if "waiting" not in outcomes.values() or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    rows = []
    for label, report in procs.items():
        report = report or {}
        detail = report.get("error") or ", ".join(report.get("restart_needed") or ())
        rows.append([label, outcomes[label], str(report.get("digest") or "-"), detail])
    if json_output:
        print_json(
            {
                "digest": digest,
                "processes": [
                    {"process": r[0], "outcome": r[1], "digest": r[2], "detail": r[3]} for r in rows
                ],
            }
        )
    elif not rows:
        console.print(
            f"nothing is running; the next `mrbatch up` starts with configuration {digest}"
        )
    else:
        emit(
            (Col("process"), Col("outcome"), Col("configuration"), Col("detail", wrap=True)),
            rows,
            title=f"configuration {digest} ({ws.config_path})",
        )
        if any(o == "restart needed" for o in outcomes.values()):
            console.print(
                styled(
                    ("restart needed", "yellow"),
                    " for the settings named: `mrbatch down`, then `mrbatch up --detach`",
                )
            )
    if any(o != "applied" for o in outcomes.values()):
        raise typer.Exit(1)
