"""``mrbatch init``, ``up``, ``down`` and ``status``."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from .. import backends
from ..config.initialize import DEFAULT_REGIONS, init_workspace, seed_reference
from ..config.workspace import Workspace
from ..errors import ConfigError, MrbatchError, UnavailableError, UsageError
from ..observe import views
from ..runtime import supervisor
from ..runtime.restarter import Restarter
from .app import app, console, json_option, print_json, state, styled
from .tables import Col, ago, emit, render

__all__ = ["print_status", "status_table", "verdict_line", "wait_until_up"]


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
    example: str | None = typer.Option(
        None, "--example", help="Also set up a worked example: events (JSONL, API, transform)."
    ),
    api_port: int = typer.Option(8741, "--api-port", help="Port of the example's API."),
    object_store: str = typer.Option(
        "local", "--object-store", help="local (a directory per region) or s3 (a bucket each)."
    ),
    state_table: str = typer.Option(
        "sqlite", "--state-table", help="sqlite (a file per region) or dynamodb (a table each)."
    ),
    endpoint_url: str | None = typer.Option(
        None,
        "--endpoint-url",
        help="S3/DynamoDB endpoint for every region (an S3-compatible store, a test server);"
        " credentials come from the standard AWS chain, never from mrbatch.toml.",
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
        example=example,
        api_port=api_port,
        object_store=object_store,
        state_table=state_table,
        endpoint_url=endpoint_url,
    )
    console.print(styled("Workspace ready: ", (str(ws.config_path), "bold")))
    console.print(f"  regions: {', '.join(names)} ({names[0]} ACTIVE)")
    console.print(f"  data:    {ws.data_dir}")
    chosen = ws.config.backends
    if (chosen.object_store, chosen.state_table) != ("local", "sqlite"):
        console.print(f"  storage: {chosen.object_store} + {chosen.state_table} (see mrbatch.toml)")
    if chosen.control_plane != "sqlite" or chosen.executor != "process-pool":
        console.print(f"  control: {chosen.control_plane}, executor: {chosen.executor}")
    console.print("  sample:  pipeline/orders.schema.json, reference/financial.csv uploaded")
    if example:
        console.print(
            f"  example: {example}: `mrbatch up` starts its rates API on port {api_port}"
            " ([services.rates]); then `mrbatch put pipeline/events-sample.jsonl --key"
            " input/events/sample.jsonl`"
        )
    console.print(
        styled(
            "Next: ",
            ("mrbatch up --detach", "bold"),
            ", then ",
            ("mrbatch put pipeline/orders-sample.csv", "bold"),
        )
    )


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_until_up(
    ws: Workspace, since: float, timeout: float = 60.0, stop: threading.Event | None = None
) -> None:
    """Return when every region has sent a heartbeat after ``since`` and the gateway answers
    (or at once when ``stop`` is set)."""
    deadline = time.monotonic() + timeout
    control = backends.open_control_plane(ws)
    gateway = ws.config.gateway
    while time.monotonic() < deadline and not (stop and stop.is_set()):
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
    """Start one process per region, the replicators and the gateway, and keep them running.

    A process that dies is started again, as the supervisor section of mrbatch.toml says."""
    ws = state.workspace()
    control = backends.open_control_plane(ws)
    try:
        control.routing()
    except MrbatchError:
        control.initialize(ws.regions, ws.regions[0])
    for line in backends.provision(ws):  # buckets and tables, created when missing
        console.print(line)
    seed_reference(ws)
    running = supervisor.running(ws)
    everything = all(pid is not None for pid in running.values())
    keeper = supervisor.pid_of(ws, supervisor.SUPERVISOR)
    pids = ", ".join(f"{p.label}={pid}" for p, pid in running.items())
    if everything and keeper is not None:
        console.print(
            f"mrbatch is already running ({pids}, supervisor={keeper}); `mrbatch down` stops it"
        )
        return
    _check_gateway_port(ws, running)
    since = time.time()
    if keeper is not None:
        # Someone supervises already (a daemon, an `up` in another terminal): start only what
        # is missing now, under the start lock, rather than waiting for its backoff.
        console.print(f"mrbatch is already running (supervisor pid {keeper})")
        _report(running, supervisor.start(ws))
        wait_until_up(ws, since)
        return
    if everything:
        console.print(f"mrbatch is already running ({pids}); supervising it")
    if detach:
        _up_detached(ws, running, since)
    else:
        _up_here(ws, running, since)


def _check_gateway_port(ws: Workspace, running: dict[supervisor.Proc, int | None]) -> None:
    gateway = ws.config.gateway
    if running[supervisor.Proc("gateway", "gateway")] is None and not _port_free(
        gateway.host, gateway.port
    ):
        raise UsageError(
            f"gateway port {gateway.host}:{gateway.port} is in use by another program",
            hint=f"set gateway.port in {ws.config_path}",
        )


def _report(
    before: dict[supervisor.Proc, int | None], now: dict[supervisor.Proc, tuple[int, bool]]
) -> None:
    for proc, (pid, _) in now.items():
        started = before.get(proc) != pid
        console.print(f"{'started' if started else 'running'} {proc.label} (pid {pid})")


def _up_detached(ws: Workspace, before: dict[supervisor.Proc, int | None], since: float) -> None:
    """Start the supervisor daemon; it starts every missing process, then keeps them up."""
    keeper, new = supervisor.start(ws, only=[supervisor.SUPERVISOR])[supervisor.SUPERVISOR]
    console.print(f"{'started' if new else 'running'} supervisor (pid {keeper})")
    _report(before, _await_processes(ws, before))
    wait_until_up(ws, since)
    console.print(f"gateway: {ws.gateway_url}")
    console.print("Up. `mrbatch status` shows it, `mrbatch down` stops it.")


def _await_processes(
    ws: Workspace, before: dict[supervisor.Proc, int | None], timeout: float = 30.0
) -> dict[supervisor.Proc, tuple[int, bool]]:
    """Each process's pid once the supervisor daemon has started it (or found it running)."""
    seen: dict[supervisor.Proc, tuple[int, bool]] = {}
    deadline = time.monotonic() + timeout
    while True:
        for proc, pid in supervisor.running(ws).items():
            if pid is not None and proc not in seen:
                seen[proc] = (pid, before[proc] is None)
        if len(seen) == len(before):
            return {proc: seen[proc] for proc in before}
        if supervisor.pid_of(ws, supervisor.SUPERVISOR) is None or time.monotonic() > deadline:
            missing = ", ".join(p.label for p in before if p not in seen)
            raise MrbatchError(
                f"the supervisor did not start {missing}",
                hint=f"see {supervisor.log_file(ws, supervisor.SUPERVISOR)} and {ws.log_dir}",
            )
        time.sleep(0.05)


def _up_here(ws: Workspace, before: dict[supervisor.Proc, int | None], since: float) -> None:
    """Supervise from this process, with a live status table; Ctrl-C (or `mrbatch down`
    elsewhere, by SIGTERM) stops everything."""
    other = supervisor.claim_supervisor(ws)
    if other is not None:  # another `up` won the race to supervise
        console.print(f"mrbatch is already running (supervisor pid {other})")
        return
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    try:
        restarter = Restarter(ws, stop)
        _report(before, restarter.start_missing())
        wait_until_up(ws, since, stop=stop)
        console.print(f"gateway: {ws.gateway_url}")
        with Live(status_table(views.status(ws)), console=console, refresh_per_second=2) as live:
            next_draw = time.monotonic() + 1.0
            while not stop.is_set():
                stop.wait(restarter.step())
                if time.monotonic() >= next_draw:
                    live.update(status_table(views.status(ws)))
                    next_draw = time.monotonic() + 1.0
    finally:
        supervisor.release_supervisor(ws)
        stopped = supervisor.stop(ws)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        console.print(f"stopped {len(stopped)} process(es)")


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@app.command()
def down() -> None:
    """Stop the supervisor, then every process `mrbatch up` started."""
    ws = state.workspace()
    stopped = supervisor.stop(ws)
    if stopped:
        console.print("stopped " + ", ".join(p.label for p in stopped))
    else:
        console.print("nothing was running")


def _restarts(count: Any, record: dict[str, Any] | None) -> str:
    """A process's restarts, and when the next one is due if it is down and waiting."""
    text = str(count or 0)
    due = (record or {}).get("next_due")
    if due is not None:
        text += f" (next in {max(0.0, due - time.time()):.1f}s)"
    elif record and record.get("pid") is None and record.get("died_at"):
        text += " (stays down)"
    return text


_STATUS_COLUMNS = (
    Col("region"),
    Col("state"),
    Col("process"),
    Col("pid", drop=9, justify="right"),
    Col("restarts", drop=7),
    Col("in flight", drop=8, justify="right"),
    Col("backlog", drop=5, justify="right"),
    Col("lag", drop=4, justify="right"),
    Col("replicator", drop=3),
    Col("heartbeat", drop=6),
)


def _status_parts(data: dict[str, Any]) -> tuple[str, list[list[str]], str]:
    title = (
        f"active region {data.get('active_region')}  epoch {data.get('epoch')}"
        f"  phase {data.get('phase')}"
    )
    keeper = data.get("supervisor", {})
    records = keeper.get("processes", {})
    rows = []
    for name, info in data["regions"].items():
        replicator = "alive" if info.get("replicator_alive") else "down"
        if info.get("replicator_restarts"):
            replicator += f", {info['replicator_restarts']} restart(s)"
        rows.append(
            [
                name,
                str(info.get("state")),
                str(info.get("process_state") or "-"),
                str(info.get("pid") or "-"),
                _restarts(info.get("restarts"), records.get(f"region:{name}")),
                str(info.get("runs_in_flight") if info.get("runs_in_flight") is not None else "-"),
                str(info.get("backlog") if info.get("backlog") is not None else "?"),
                f"{info['lag_seconds']:.1f}s" if info.get("lag_seconds") is not None else "?",
                replicator,
                ago(info.get("heartbeat_age")),
            ]
        )
    gateway = data.get("gateway", {})
    restarts = _restarts(gateway.get("restarts"), records.get("gateway"))
    supervised = (
        f"supervisor pid {keeper.get('pid')}" if keeper.get("alive") else "no supervisor running"
    )
    commands = data.get("commands", {})
    caption = (
        f"gateway {gateway.get('url')} {'alive' if gateway.get('alive') else 'down'}"
        f" (restarts {restarts}); command server"
        f" {'pid ' + str(commands.get('pid')) if commands.get('alive') else 'down'}; {supervised}"
        + ("" if keeper.get("restart", True) else ", restart off")
    )
    return title, rows, caption


def verdict_line(data: dict[str, Any]) -> Text:
    """The one line that says whether the deployment is well: OK, or the problems."""
    verdict = data.get("verdict") or {}
    if not verdict.get("ok", True):
        return styled(("PROBLEM", "bold red"), f": {verdict.get('summary')}")
    if verdict.get("warnings"):
        return styled(("OK", "bold yellow"), f", but {'; '.join(verdict['warnings'])}")
    return styled(("OK", "bold green"), f": {verdict.get('summary', '').removeprefix('ok: ')}")


def status_table(data: dict[str, Any], width: int | None = None) -> RenderableType:
    """The status table and its verdict, fitted to a terminal ``width`` (the live table of
    `up`, the demo)."""
    title, rows, caption = _status_parts(data)
    table = render(
        _STATUS_COLUMNS,
        rows,
        title=title,
        caption=caption,
        terminal=True,
        width=width or console.width,
    )
    return Group(table, verdict_line(data))


def print_status(data: dict[str, Any]) -> None:
    """The status table (plain text when not printed to a terminal) and its verdict line."""
    title, rows, caption = _status_parts(data)
    emit(_STATUS_COLUMNS, rows, title=title, caption=caption)
    console.print(verdict_line(data), soft_wrap=True)


@app.command()
def status(
    json_output: bool = json_option("Print the status as JSON (the documented contract)."),
) -> None:
    """Active region, epoch, and per region: state, process, backlog and lag.

    Ends with one line of verdict; exits 1 when a process is down or a threshold (heartbeat,
    replication lag) is crossed, or a process refuses an edit of mrbatch.toml."""
    try:
        ws = state.workspace(pipelines=False)
    except ConfigError as exc:
        if state.config is None and "no mrbatch.toml" in exc.message:
            raise
        raise ConfigError(
            exc.message,
            hint=f"{exc.hint + '; ' if exc.hint else ''}processes already running keep the"
            " configuration they run with (the gateway's /api/status reports them)",
        ) from exc
    data = views.status(ws)
    if json_output:
        print_json(data)
    else:
        print_status(data)
    if not data["verdict"]["ok"]:
        raise typer.Exit(1)
