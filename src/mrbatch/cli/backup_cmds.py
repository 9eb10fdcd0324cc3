"""``mrbatch backup``, ``restore`` and ``backups``."""

from __future__ import annotations

import typer

from ..config.workspace import Workspace, find_config
from ..errors import ConfigError
from ..maintain.backup import take_backup
from ..maintain.catalog import catalog, iso, parse_time
from ..maintain.restore import restore as restore_region
from ..maintain.target import open_target
from .app import app, err_console, json_option, print_json, state, styled
from .app import console as _console
from .tables import Col, emit


def _print(*parts: object) -> None:
    """One line each, never wrapped: paths and times are data, printed whole."""
    _console.print(*parts, soft_wrap=True)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def _workspace_for(source: str) -> Workspace | None:
    """The workspace whose [s3] settings reach an S3 target; outside one, listing an S3
    prefix goes by the environment (AWS_ENDPOINT_URL, AWS_REGION, the standard chain)."""
    if "://" not in source:
        return None
    if state.config is None:
        try:
            find_config()
        except ConfigError:
            return None
    return state.workspace()


@app.command()
def backup(
    to: str = typer.Option(
        ...,
        "--to",
        help="Backup target: a directory (made if missing) or s3://BUCKET/PREFIX (the bucket"
        " must exist; reached with the endpoint_url, aws_region and profile of the s3 section).",
    ),
    region: str | None = typer.Option(
        None, "--region", help="The region whose replica to read (default: the active one)."
    ),
    full: bool = typer.Option(False, "--full", help="Copy everything, not only what changed."),
    json_output: bool = json_option("Print the backup's report (counts, bytes, times) as JSON."),
) -> None:
    """Back up state records, the objects they reference and the control plane into TO.

    Incremental: only what changed since the last backup of that region there. TO is a
    directory or an S3 prefix, s3://BUCKET/PREFIX, in a bucket that exists."""
    report = take_backup(state.workspace(), to, region=region, full=full)
    if json_output:
        print_json(report.to_json())
        return
    kind = "full" if report.full else f"incremental since {report.base}"
    _print(styled(("backup ", "bold"), report.id, f"  of {report.region} ({kind})"))
    _print(f"  into     {report.target}")
    _print(f"  records  {report.records}, objects {report.objects} ({report.deletions} deletions)")
    _print(
        f"  blobs    {report.blobs_copied} copied ({_size(report.bytes_copied)}),"
        f" {report.blobs_reused} already there; change files {_size(report.change_bytes)}"
    )
    newest = iso(report.newest_change) if report.newest_change is not None else "-"
    _print(f"  newest change {newest}; control plane {'saved' if report.control else '-'}")
    for note in report.notes:
        _print(styled(("note: ", "yellow"), note))
    _print(f"  took {report.seconds:.2f} s")


@app.command()
def restore(
    source: str = typer.Option(
        ...,
        "--from",
        help="The backup target `mrbatch backup` wrote: a directory or s3://BUCKET/PREFIX.",
    ),
    region: str = typer.Option(..., "--region", help="The region to rebuild."),
    at: str | None = typer.Option(
        None,
        "--at",
        help="Restore point: ISO 8601 (UTC unless an offset is given) or @<unix seconds>"
        " (default: the newest change backed up).",
    ),
    force: bool = typer.Option(
        False, "--force", help="Merge into a region that still holds data (newer wins)."
    ),
    json_output: bool = json_option("Print the restore's report (counts, RPO, time) as JSON."),
) -> None:
    """Rebuild REGION from the backups in FROM, as of AT; it then catches up by replication.

    The region's processes must be stopped."""
    ws = state.workspace()
    when = parse_time(at) if at is not None else None
    echo = None if json_output else (lambda text: err_console.print(text, soft_wrap=True))
    report = restore_region(ws, source, region=region, at=when, force=force, echo=echo)
    if json_output:
        print_json(report.to_json())
        return
    point = iso(report.at) if report.at is not None else "the newest backup"
    _print(styled(("restored ", "bold"), report.region, f" from {report.target} as of {point}"))
    _print(
        f"  objects  {report.objects} ({_size(report.bytes_restored)}),"
        f" deletions {report.deletions}, records {report.records},"
        f" from {report.backups} backup(s)"
    )
    if report.rpo is not None:
        age = f"{report.rpo_age_seconds:.1f} s before " + (
            "the restore point" if report.at is not None else "now"
        )
        _print(
            styled("  ", ("RPO", "bold"), f"      newest change captured {iso(report.rpo)} ({age})")
        )
    else:
        _print(styled("  ", ("RPO", "bold"), "      nothing was captured at or before it"))
    _print(styled("  ", ("took", "bold"), f"     {report.seconds:.2f} s"))
    _print(f"  control plane {report.control_plane}")
    if report.peers_reset:
        _print(f"  replication cursors on {report.region} reset in {', '.join(report.peers_reset)}")
    for note in report.notes:
        _print(styled(("note: ", "yellow"), note))
    _print(
        f"Next: `mrbatch up`; {report.region} catches up by replication with what was"
        " written since."
    )


@app.command()
def backups(
    source: str = typer.Option(
        ..., "--from", help="The backup target: a directory or s3://BUCKET/PREFIX."
    ),
    json_output: bool = json_option("Print every complete backup as JSON."),
) -> None:
    """List the complete backups in FROM, oldest first (their times are what --at takes)."""
    entries = catalog(open_target(source, ws=_workspace_for(source)))
    if json_output:
        print_json([{**e.to_json(), "taken_at_iso": iso(e.taken_at)} for e in entries])
        return
    rows = [
        [
            iso(entry.taken_at),
            entry.region,
            "full" if entry.base is None else "incremental",
            str(entry.records.count),
            str(entry.objects.count),
            _size(entry.blobs.get("bytes_copied", 0)),
        ]
        for entry in entries
    ]
    # The time is the id's too, and what --at takes: printed whole, never dropped.
    columns = (
        Col("taken at (--at)"), Col("region"), Col("kind", drop=3),
        Col("records", drop=2, justify="right"), Col("objects", drop=2, justify="right"),
        Col("copied", drop=1, justify="right"),
    )  # fmt: skip
    emit(columns, rows, title=f"backups in {source}")
