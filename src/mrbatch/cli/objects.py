"""``mrbatch put``, ``get``, ``url`` and ``errors``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, BinaryIO, cast

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from ..access.accesspoint import AccessPoint
from ..access.links import presign
from ..config.values import parse_duration
from ..errors import NotFoundError, UsageError
from ..model.keys import INPUT, check_key
from ..observe import views
from ..pipeline.formats import csv_line, read_rejected
from .app import app, console, err_console, print_json, state


class _Counting:
    """A file wrapper that reports how many bytes were read (for the progress bar)."""

    def __init__(self, handle: BinaryIO, advance: Any) -> None:
        self._handle, self._advance = handle, advance

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._advance(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()


def _progress(show: bool) -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
        transient=True,
        disable=not show,
    )


@app.command()
def put(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    key: str | None = typer.Option(None, "--key", help="Object key (default input/<name>)."),
    region: str | None = typer.Option(None, "--region", help="Upload to exactly this region."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Upload FILE through the access point to the preferred healthy region."""
    ws = state.workspace()
    target = check_key(key or INPUT + file.name)
    size = file.stat().st_size
    with file.open("rb") as handle, _progress(not json_output and sys.stderr.isatty()) as bar:
        task = bar.add_task(escape(f"put {target}"), total=size)
        counting = cast(BinaryIO, _Counting(handle, lambda n: bar.advance(task, n)))
        located = AccessPoint(ws).put(target, counting, region=region)
    result = {
        "region": located.region,
        "key": located.info.key,
        "sha256": located.info.sha256,
        "size": located.info.size,
    }
    if located.accepted is not None:
        result["run_id"] = located.accepted.run_id  # the id of this input version's run
    if json_output:
        print_json(result)
    else:
        console.print(f"{located.region}  {located.info.key}  sha256:{located.info.sha256}")


@app.command()
def get(
    key: str = typer.Argument(..., help="Object key, e.g. output/orders.csv"),
    output: Path | None = typer.Option(None, "-o", "--output", help="File (default stdout)."),
) -> None:
    """Download KEY from whichever region holds it."""
    ws = state.workspace()
    located, stream = AccessPoint(ws).open(check_key(key))
    show = output is not None and sys.stderr.isatty()
    with stream, _progress(show) as bar:
        task = bar.add_task(escape(f"get {key}"), total=located.info.size)
        sink = _user_file(output) if output is not None else sys.stdout.buffer
        try:
            while block := stream.read(1 << 20):
                sink.write(block)
                bar.advance(task, len(block))
        finally:
            if output is not None:
                sink.close()
    if output is not None:
        err_console.print(f"{located.region}  {key} -> {output} ({located.info.size} bytes)")


def _user_file(path: Path) -> BinaryIO:
    """``path`` opened for writing with the user's own umask (the command's is private)."""
    private = os.umask(state.user_umask)
    try:
        return path.open("wb")
    finally:
        os.umask(private)


@app.command()
def url(
    key: str = typer.Argument(..., help="Object key, e.g. output/orders.csv"),
    expires: str | None = typer.Option(
        None,
        "--expires",
        help="How long the link stays valid, e.g. 90s, 30m, 2h (default: gateway.link_expiry).",
    ),
) -> None:
    """Print a presigned link to KEY, served by the gateway from any region holding it."""
    ws = state.workspace()
    gateway = ws.config.gateway
    try:
        lifetime = gateway.link_expiry if expires is None else parse_duration(expires)
    except ValueError as exc:
        raise UsageError(f"--expires: {exc}") from exc
    check_key(key)
    AccessPoint(ws).locate(key)  # refuse links to nothing
    link = presign(
        ws.signing_key,
        ws.gateway_url,
        key,
        expires_in=lifetime,
        max_lifetime=gateway.max_link_lifetime,
    )
    print(link)


@app.command()
def errors(
    key: str = typer.Argument(..., help="Input key (input/x.csv or x.csv) or run id."),
    json_output: bool = typer.Option(False, "--json"),
    limit: int = typer.Option(50, "--limit", help="Rows to show in the table (0 = all)."),
) -> None:
    """The rejected rows of an input's latest run: row number, values, reason."""
    ws = state.workspace()
    run = views.find_run(ws, key)
    source = run.rejected_key or run.merged_rejected_key
    if source is None:
        raise UsageError(
            f"run {run.run_id} ({run.input_key}) has no rejected rows to show: it is"
            f" {run.status}" + (f" ({run.reason})" if run.reason else ""),
        )
    try:
        _, stream = AccessPoint(ws).open(source)
    except NotFoundError as exc:
        raise NotFoundError(f"rejected rows of run {run.run_id} are not reachable: {exc}") from exc
    with stream:
        data = stream.read()
    header = csv_line(list(run.rejected_header))  # the merge wrote exactly this first line
    if data.startswith(header):
        data = data[len(header) :]
    rows = read_rejected(data, list(run.rejected_header))
    if json_output:
        print_json(
            {
                "run_id": run.run_id,
                "input_key": run.input_key,
                "status": str(run.status),
                "rows_rejected": len(rows),
                "rejected": rows,
            }
        )
        return
    table = Table(
        title=f"{run.input_key}: {len(rows)} rejected row(s), run {run.run_id} ({run.status})",
        title_justify="left",
    )
    table.add_column("row", justify="right")
    table.add_column("line", justify="right")
    table.add_column("reason")
    table.add_column("values")
    for item in rows[: limit or None]:
        values = ", ".join(f"{k}={v!r}" for k, v in item["values"].items())
        if item.get("extra"):
            values += f" +extra {item['extra']}"
        table.add_row(str(item["row"]), str(item["line"]), item["reason"], values)
    console.print(table)
    if limit and len(rows) > limit:
        console.print(f"... {len(rows) - limit} more (--limit 0 or --json for all)")
