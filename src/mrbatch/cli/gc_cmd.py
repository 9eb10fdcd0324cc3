"""``mrbatch gc``: retention and garbage collection, once, now (the region loop also does it
every ``retention.interval``)."""

from __future__ import annotations

import typer

from ..maintain.gc import collect_garbage
from .app import app, console, json_option, print_json, state
from .tables import Col, emit

__all__ = ["gc"]


@app.command()
def gc(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Report what would be removed; remove nothing."
    ),
    json_output: bool = json_option("Print the report as JSON."),
) -> None:
    """Remove what finished runs leave behind, in every region.

    Intermediates at once; a run's versions and records past retention.age; and the bytes of
    superseded versions."""
    report = collect_garbage(state.workspace(), dry_run=dry_run)
    if json_output:
        print_json(report.to_dict())
        return
    verb = "would remove" if dry_run else "removed"
    days = report.window_seconds / 86400
    console.print(
        f"gc in {report.region or '-'} (epoch {report.epoch}), window {days:g} day(s):"
        f" {verb} {report.intermediates} intermediate object(s),"
        f" {report.version_objects} version object(s) and {report.records} record(s)"
        f" of {len(report.runs_collected)} run(s) in {report.seconds:.2f}s"
    )
    for reason, count in sorted(report.kept.items()):
        console.print(f"  kept {count} run(s): {reason}")
    if report.purged:
        emit(
            (Col("region"), Col("object tombstones", justify="right"),
             Col("versions freed", justify="right"), Col("bytes freed", justify="right"),
             Col("record tombstones", justify="right")),
            [[region, str(counts.get("object_tombstones", 0)),
              str(counts.get("versions_freed", 0)), str(counts.get("bytes_freed", 0)),
              str(counts.get("record_tombstones", 0))]
             for region, counts in report.purged.items()],
            title="purged",
        )  # fmt: skip
    for note in report.notes:
        console.print(f"  note: {note}")
