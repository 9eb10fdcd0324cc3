"""``mrbatch put``, ``get``, ``url`` and ``errors``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, cast

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from ..access.accesspoint import AccessPoint
from ..access.links import presign
from ..config.workspace import Workspace
from ..errors import MrbatchError, NotFoundError
from ..model.keys import INPUT, check_key
from ..observe import views
from .app import (
    app,
    console,
    description_column,
    duration,
    err_console,
    json_option,
    print_json,
    state,
)
from .tables import Col, clock, emit


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

    def seekable(self) -> bool:
        return self._handle.seekable()


def _progress(show: bool) -> Progress:
    return Progress(
        description_column(),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
        transient=True,
        disable=not show,
    )


@app.command()
def put(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, help="The file to upload."
    ),
    key: str | None = typer.Option(None, "--key", help="Object key (default input/<name>)."),
    region: str | None = typer.Option(None, "--region", help="Upload to exactly this region."),
    json_output: bool = json_option("Print where it landed (and its run id) as JSON."),
) -> None:
    """Upload FILE through the access point to the preferred healthy region."""
    ws = state.workspace(pipelines=False)
    target = check_key(key or INPUT + file.name)
    size = file.stat().st_size
    started = time.time()
    with file.open("rb") as handle, _progress(not json_output and sys.stderr.isatty()) as bar:
        task = bar.add_task(escape(f"put {target}"), total=size)
        counting = cast(BinaryIO, _Counting(handle, lambda n: bar.advance(task, n)))
        located = AccessPoint(ws).put(target, counting, region=region)
    result: dict[str, Any] = {
        "region": located.region,
        "key": located.info.key,
        "sha256": located.info.sha256,
        "size": located.info.size,
    }
    accepted = located.accepted
    # The same bytes under the same key were accepted before: the same version, no new run.
    again = accepted is not None and accepted.at < started
    if accepted is not None:
        result["run_id"] = accepted.run_id  # the id of this input version's run
        result["new_version"] = not again
    if json_output:
        print_json(result)
        return
    console.print(f"{located.region}  {located.info.key}  sha256:{located.info.sha256}")
    if again and accepted is not None:
        run = _run_status(ws, accepted.run_id)
        console.print(
            f"no new run: the same bytes as run {accepted.run_id[:12]}"
            f" (accepted {clock(accepted.at)}{f', {run}' if run else ''})",
            soft_wrap=True,
        )


def _run_status(ws: Workspace, run_id: str) -> str | None:
    """``COMPLETED``, ``FAILED``... of one run, if a region can tell (best effort)."""
    try:
        run = next((r for r in views.all_runs(ws) if r.run_id == run_id), None)
    except MrbatchError:
        return None
    return str(run.status) if run is not None else None


@app.command()
def get(
    key: str = typer.Argument(..., help="Object key, e.g. output/orders.csv"),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="File (default stdout; - is stdout too)."
    ),
) -> None:
    """Download KEY from whichever region holds it."""
    if output is not None and str(output) == "-":
        output = None
    ws = state.workspace(pipelines=False)
    access = AccessPoint(ws)
    try:
        located, stream = access.open(check_key(key))
    except NotFoundError as exc:
        raise NotFoundError(exc.message, hint=_suggest(access, key)) from exc
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


_PREFIXES = ("output/", "rejected/", "input/", "reference/")


def _suggest(access: AccessPoint, key: str) -> str:
    """What the user may have meant by a key no region holds: the same name under output/
    (and the others), if one exists."""
    name = key.split("/", 1)[1] if key.startswith(_PREFIXES) else key
    for prefix in _PREFIXES:
        candidate = prefix + name
        if candidate == key:
            continue
        try:
            access.locate(candidate)
        except MrbatchError:
            continue
        return f"did you mean {candidate}? (`mrbatch get {candidate}`)"
    return (
        f"results are under output/ and rejected/, e.g. output/{name}; `mrbatch runs` lists"
        " the inputs and their outputs"
    )


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
    expires: float | None = duration(
        None,
        "--expires",
        help="How long the link stays valid, e.g. 90s, 30m, 2h (default: gateway.link_expiry).",
    ),
) -> None:
    """Print a presigned link to KEY, served by the gateway from any region holding it."""
    ws = state.workspace(pipelines=False)
    gateway = ws.config.gateway
    lifetime = gateway.link_expiry if expires is None else expires
    check_key(key)
    access = AccessPoint(ws)
    try:
        access.locate(key)  # refuse links to nothing
    except NotFoundError as exc:
        raise NotFoundError(exc.message, hint=_suggest(access, key)) from exc
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
    key: str = typer.Argument(
        ..., metavar="KEY|RUN", help="Input key (input/x.csv or x.csv) or run id (or its start)."
    ),
    json_output: bool = json_option("Print every rejected row as JSON."),
    limit: int = typer.Option(50, "--limit", min=0, help="Rows to show in the table (0: all)."),
) -> None:
    """The rejected rows of an input's latest run: row number, values, reason."""
    from ..pipeline.formats import csv_line, read_rejected  # polars: only this command needs it

    ws = state.workspace()
    run = views.find_run(ws, key)
    source = run.rejected_key or run.merged_rejected_key
    if source is None:
        if json_output:
            print_json(
                {"run_id": run.run_id, "input_key": run.input_key, "status": str(run.status),
                 "rows_rejected": None, "rejected": []}
            )  # fmt: skip
            return
        when = "yet" if not run.status.terminal else "kept"
        console.print(
            f"{run.input_key}: no rejected rows {when}; run {run.run_id[:12]} is {run.status}"
            + (
                f", before its rows were checked: {run.reason}"
                if run.reason
                else " (its rows are checked before the merge)"
            ),
            soft_wrap=True,
        )
        return
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
    if not rows:
        console.print(
            f"{run.input_key}: no rejected rows; run {run.run_id[:12]} is {run.status}"
            f" ({run.rows_in} row(s) in, {run.rows_out} out)"
            + (f": {run.reason}" if run.reason else ""),
            soft_wrap=True,
        )
        return
    table_rows = []
    for item in rows[: limit or None]:
        values = ", ".join(f"{k}={v!r}" for k, v in item["values"].items())
        if item.get("extra"):
            values += f" +extra {item['extra']}"
        table_rows.append([str(item["row"]), str(item["line"]), item["reason"], values])
    emit(
        (Col("row", justify="right"), Col("line", drop=1, justify="right"),
         Col("reason", wrap=True), Col("values", wrap=True)),
        table_rows,
        title=f"{run.input_key}: {len(rows)} rejected row(s), run {run.run_id[:12]}"
        f" ({run.status})",
    )  # fmt: skip
    if limit and len(rows) > limit:
        console.print(f"... {len(rows) - limit} more (--limit 0 or --json for all)")
