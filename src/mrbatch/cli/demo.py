"""``mrbatch demo``: the whole system end to end in a temporary workspace."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
import urllib.request
from email import message_from_bytes
from pathlib import Path

import typer

from .. import supervisor, views
from ..accesspoint import AccessPoint
from ..errors import MrbatchError
from ..initialize import init_workspace, sample_bytes
from ..keys import run_id_for
from ..records import FileRun, RunStatus
from ..workspace import Workspace
from .app import app, console
from .deploy import status_table, wait_until_up

__all__ = ["free_port", "wait_for_run"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_run(ws: Workspace, key: str, sha256: str, timeout: float = 120.0) -> FileRun:
    run_id = run_id_for(key, sha256)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in views.all_runs(ws):
            if run.run_id == run_id and run.status.terminal:
                return run
        time.sleep(0.05)
    raise MrbatchError(
        f"{key} did not finish within {timeout:.0f}s", hint=f"see the logs in {ws.log_dir}"
    )


def _step(text: str) -> None:
    console.rule(f"[bold]{text}")


@app.command()
def demo(
    keep: bool = typer.Option(False, "--keep", help="Keep the temporary workspace."),
) -> None:
    """Set up two regions in a temp dir, process the sample file, show the result, clean up."""
    root = Path(tempfile.mkdtemp(prefix="mrbatch-demo-"))
    ws: Workspace | None = None
    try:
        _step("1. mrbatch init: two regions on this machine")
        ws = init_workspace(root, port=free_port(), chunk_rows=2_500)
        console.print(
            f"workspace {root} — regions {', '.join(ws.regions)}, "
            f"{ws.regions[0]} ACTIVE; reference data uploaded to reference/"
        )

        _step("2. mrbatch up: one process per region, replicators, gateway")
        since = time.time()
        for proc, (pid, _) in supervisor.start(ws).items():
            console.print(f"  {proc.label:<24} pid {pid}")
        wait_until_up(ws, since)

        _step("3. mrbatch put: the reference's sample file (10,000 orders)")
        sample = root / "pipeline" / "orders-sample.csv"
        started = time.monotonic()
        located = AccessPoint(ws).put("input/orders.csv", sample.read_bytes())
        console.print(
            f"  uploaded to {located.region}: input/orders.csv sha256:{located.info.sha256[:16]}…"
        )

        _step("4. the active region claims, splits, processes, merges, publishes, mails")
        run = wait_for_run(ws, "input/orders.csv", located.info.sha256)
        elapsed = time.monotonic() - started
        colour = "green" if run.status is RunStatus.COMPLETED else "red"
        console.print(
            f"  run {run.run_id}: [{colour}]{run.status}[/] in {elapsed:.2f}s"
            f" in {run.region} (epoch {run.epoch}), {len(run.chunks)} chunks"
        )
        console.print(
            f"  rows in {run.rows_in}, out {run.rows_out}, rejected"
            f" {run.rows_rejected}; output {run.output_key}"
        )
        if run.status is not RunStatus.COMPLETED:
            raise MrbatchError(f"the demo run failed: {run.reason}")

        mails = sorted(ws.outbox_dir.glob("*.eml"))
        message = message_from_bytes(mails[0].read_bytes())
        body = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
        link = next(line for line in body.splitlines() if line.startswith("http"))
        console.print(f"  mail in the outbox: {mails[0].name}: {message['Subject']}")
        with urllib.request.urlopen(link, timeout=10) as response:
            downloaded = response.read()
            served_by = response.headers.get("x-mrbatch-region")
        header = downloaded.split(b"\n", 1)[0].decode()
        console.print(
            f"  the mailed link serves {len(downloaded):,} bytes from {served_by}; header: {header}"
        )

        _step("5. replication: the output reaches the standby region")
        standby = ws.regions[1]
        deadline = time.monotonic() + 30
        replica = None
        while time.monotonic() < deadline and replica is None:
            replica = AccessPoint(ws).store(standby).head(run.output_key or "")
            time.sleep(0.05)
        same = replica is not None and replica.sha256 == run.output_sha256
        console.print(f"  {standby} holds {run.output_key}: {'yes, same bytes' if same else 'no'}")
        console.print(status_table(views.status(ws)))

        _step("6. mrbatch down")
        stopped = supervisor.stop(ws)
        console.print(f"  stopped {len(stopped)} processes")
        expected_rows = sample_bytes("orders.csv").count(b"\n")
        console.print(
            f"\n[bold]Summary.[/] Two regions ran on this machine, {ws.regions[0]} active. The"
            f" sample file of {run.rows_in:,} orders went in through the access point and was"
            f" claimed once by the active region, split into {len(run.chunks)} chunks,"
            f" validated against the reference's JSON Schema and enriched with its financial"
            f" data: {run.rows_out:,} rows out, {run.rows_rejected} rejected"
            f" (expected {expected_rows:,} in). The output was published to {run.output_key},"
            f" replicated to {standby} ({'verified' if same else 'NOT verified'}), and one"
            f" mail with a presigned link (served by the gateway) was written to the outbox,"
            f" all in {elapsed:.2f}s."
        )
        if not same:
            raise MrbatchError("the output did not replicate to the standby region")
    finally:
        if ws is not None:
            supervisor.stop(ws)
        if keep:
            console.print(f"workspace kept at {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
