"""``mrbatch init``, ``up``, ``down`` and ``status``."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import typer
from rich.live import Live
from rich.table import Table

from .. import backends
from ..config.initialize import DEFAULT_REGIONS, init_workspace
from ..config.workspace import Workspace
from ..errors import MrbatchError, UnavailableError, UsageError
from ..observe import views
from ..runtime import supervisor
from .app import app, console, print_json, state

__all__ = ["status_table", "wait_until_up"]


@app.command()
def init(
    directory: Path = typer.Argument(Path("."), help="Where to create the workspace."),
    regions: str = typer.Option(
        ",".join(DEFAULT_REGIONS), "--regions", help="Comma-separated; the first starts ACTIVE."
    ),
    port: int = typer.Option(8740, "--port", help="Port of the access point's gateway."),
    chunk_rows: int = typer.Option(100_000, "--chunk-rows", help="Rows per chunk task."),
    force: bool = typer.Option(False, "--force", help="Rewrite an existing mrbatch.toml."),
    control_plane: str = typer.Option(
        "sqlite", "--control-plane", help="sqlite (one file) or etcd (--etcd-endpoints)."
    ),
    etcd_endpoints: str = typer.Option(
        "", "--etcd-endpoints", help="The etcd members' client URLs, comma-separated."
    ),
    executor: str = typer.Option(
        "process-pool", "--executor", help="process-pool, inline or dask (--dask-scheduler)."
    ),
    dask_scheduler: str = typer.Option(
        "", "--dask-scheduler", help="A Dask scheduler's address; default: a LocalCluster."
    ),
) -> None:
    """Create a workspace: mrbatch.toml, the sample pipeline and the data dir."""
    names = [r.strip() for r in regions.split(",") if r.strip()]
    ws = init_workspace(
        directory,
        regions=names,
        port=port,
        chunk_rows=chunk_rows,
        force=force,
        control_plane=control_plane,
        etcd_endpoints=[u.strip() for u in etcd_endpoints.split(",") if u.strip()],
        executor=executor,
        dask_scheduler=dask_scheduler or None,
    )
    console.print(f"Workspace ready: [bold]{ws.config_path}[/]")
    console.print(f"  regions: {', '.join(names)} ({names[0]} ACTIVE)")
    console.print(f"  data:    {ws.data_dir}")
    chosen = ws.config.backends
    if chosen.control_plane != "sqlite" or chosen.executor != "process-pool":
        console.print(f"  control: {chosen.control_plane}, executor: {chosen.executor}")
    console.print("  sample:  pipeline/orders.schema.json, reference/financial.csv uploaded")
    console.print(
        "Next: [bold]mrbatch up --detach[/], then [bold]mrbatch put pipeline/orders-sample.csv[/]"
    )


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_until_up(ws: Workspace, since: float, timeout: float = 60.0) -> None:
    """Return when every region has sent a heartbeat after ``since`` and the gateway answers."""
    deadline = time.monotonic() + timeout
    control = backends.open_control_plane(ws)
    gateway = ws.config.gateway
    while time.monotonic() < deadline:
        beats = control.heartbeats()
        regions_up = all(r in beats and beats[r].at >= since for r in ws.regions)
        gateway_up = not _port_free(gateway.host, gateway.port)
        if regions_up and gateway_up:
            return
        dead = [p.label for p, pid in supervisor.running(ws).items() if pid is None]
        if dead:
            logs = ", ".join(
                str(supervisor.log_file(ws, p)) for p in supervisor.expected(ws) if p.label in dead
            )
            raise MrbatchError(
                f"process(es) exited during start: {', '.join(dead)}", hint=f"see {logs}"
            )
        time.sleep(0.1)
    raise UnavailableError(
        f"the deployment did not come up within {timeout:.0f}s",
        hint=f"see the logs in {ws.log_dir}",
    )


@app.command()
def up(
    detach: bool = typer.Option(False, "--detach", "-d", help="Run in the background."),
) -> None:
    """Start one process per region, the replicators and the gateway."""
    ws = state.workspace()
    control = backends.open_control_plane(ws)
    try:
        control.routing()
    except MrbatchError:
        control.initialize(ws.regions, ws.regions[0])
    running = supervisor.running(ws)
    if all(pid is not None for pid in running.values()):
        pids = ", ".join(f"{p.label}={pid}" for p, pid in running.items())
        console.print(f"mrbatch is already running ({pids}); `mrbatch down` stops it")
        return
    gateway = ws.config.gateway
    if running[supervisor.Proc("gateway", "gateway")] is None and not _port_free(
        gateway.host, gateway.port
    ):
        raise UsageError(
            f"gateway port {gateway.host}:{gateway.port} is in use by another program",
            hint=f"set gateway.port in {ws.config_path}",
        )
    since = time.time()
    started = supervisor.start(ws)
    for proc, (pid, new) in started.items():
        console.print(f"{'started' if new else 'running'} {proc.label} (pid {pid})")
    wait_until_up(ws, since)
    console.print(f"gateway: {ws.gateway_url}")
    if detach:
        console.print("Up. `mrbatch status` shows it, `mrbatch down` stops it.")
        return
    try:
        with Live(status_table(views.status(ws)), console=console, refresh_per_second=2) as live:
            while True:
                time.sleep(1.0)
                live.update(status_table(views.status(ws)))
    except KeyboardInterrupt:
        pass
    finally:
        stopped = supervisor.stop(ws)
        console.print(f"stopped {len(stopped)} process(es)")


@app.command()
def down() -> None:
    """Stop every process `mrbatch up` started."""
    ws = state.workspace()
    stopped = supervisor.stop(ws)
    if stopped:
        console.print("stopped " + ", ".join(p.label for p in stopped))
    else:
        console.print("nothing was running")


def status_table(data: dict[str, Any]) -> Table:
    title = (
        f"active region [bold]{data.get('active_region')}[/]  epoch {data.get('epoch')}"
        f"  phase {data.get('phase')}"
    )
    table = Table(title=title, title_justify="left")
    for column in (
        "region",
        "state",
        "process",
        "pid",
        "in flight",
        "backlog",
        "lag",
        "replicator",
        "heartbeat",
    ):
        table.add_column(column)
    for name, info in data["regions"].items():
        age = info.get("heartbeat_age")
        table.add_row(
            name,
            str(info.get("state")),
            str(info.get("process_state") or "-"),
            str(info.get("pid") or "-"),
            str(info.get("runs_in_flight") if info.get("runs_in_flight") is not None else "-"),
            str(info.get("backlog") if info.get("backlog") is not None else "?"),
            f"{info['lag_seconds']:.1f}s" if info.get("lag_seconds") is not None else "?",
            "alive" if info.get("replicator_alive") else "down",
            f"{age:.1f}s ago" if age is not None else "never",
        )
    gateway = data.get("gateway", {})
    table.caption = f"gateway {gateway.get('url')} {'alive' if gateway.get('alive') else 'down'}"
    return table


@app.command()
def status(json_output: bool = typer.Option(False, "--json", help="Machine-readable.")) -> None:
    """Active region, epoch, and per region: state, process, backlog and lag."""
    data = views.status(state.workspace())
    if json_output:
        print_json(data)
    else:
        console.print(status_table(data))
