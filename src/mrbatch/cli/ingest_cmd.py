"""``mrbatch ingest PIPELINE < records``: records from standard input sealed into input files
every ``ingest.seal_records`` records or ``ingest.seal_interval``, through a spool of this
command's own (node ``cli`` unless ``--node``), so a record read is never lost or doubled,
even if the command is killed: the next ``mrbatch ingest`` of that node seals what it left."""

from __future__ import annotations

import sys
import threading
from typing import Any

import typer

from ..access.accesspoint import AccessPoint
from ..access.ingest import Ingestor, Sealed, split_records
from ..errors import UsageError
from .app import app, console, json_option, print_json, state


@app.command()
def ingest(
    pipeline: str = typer.Argument(
        ..., help="The name of a pipeline declared in mrbatch.toml (pipelines.NAME)."
    ),
    node: str = typer.Option("cli", "--node", help="Names this spool in the sealed keys."),
    batch: int = typer.Option(1000, "--batch", help="Records made durable at a time."),
    json_output: bool = json_option("Print the records accepted and the files sealed as JSON."),
) -> None:
    """Stream records (CSV records or NDJSON lines) from stdin into sealed input files."""
    ws = state.workspace()
    if pipeline not in ws.config.pipelines:
        raise UsageError(
            f"no pipeline named {pipeline!r}",
            hint=f"declared: {', '.join(ws.config.pipelines) or 'none'}",
        )
    ingestor = Ingestor(ws, ws.config.spec(pipeline), node, AccessPoint(ws))
    quote = None if ingestor.format == "jsonl" else ingestor.spec.quote
    sealed: list[Sealed] = []
    stop = threading.Event()
    lock = threading.Lock()

    def seal(everything: bool = False) -> None:
        with lock:
            sealed.extend(ingestor.seal_due(everything=everything))

    def sealer() -> None:  # by time, while stdin is slow
        while not stop.wait(min(1.0, ws.config.ingest.seal_interval)):
            seal()

    seal()  # what an earlier run of this node left
    thread = threading.Thread(target=sealer, daemon=True)
    thread.start()
    accepted = 0
    pending: list[bytes] = []
    try:
        for line in sys.stdin.buffer:
            pending.append(line)
            # never cut a quoted field that spans lines between two batches
            whole = quote is None or b"".join(pending).count(quote.encode()) % 2 == 0
            if len(pending) >= batch and whole:
                accepted += _append(ingestor, pending, quote)
                pending = []
                seal()
        accepted += _append(ingestor, pending, quote)
    finally:
        stop.set()
        thread.join()
        seal(everything=True)
        ingestor.close()
    report: dict[str, Any] = {
        "pipeline": pipeline,
        "accepted": accepted,
        "sealed": [s.__dict__ for s in sealed],
    }
    if json_output:
        print_json(report)
    else:
        console.print(f"{accepted} record(s) accepted; {len(sealed)} file(s) sealed")
        for item in sealed:
            console.print(f"  {item.key}: {item.records} record(s), in {item.region}")


def _append(ingestor: Ingestor, lines: list[bytes], quote: str | None) -> int:
    if not lines:
        return 0
    records = split_records(b"".join(lines), quote=quote)
    ingestor.append(records)
    return len(records)
