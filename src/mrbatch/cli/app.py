"""The Typer application and what every command shares: the workspace, output helpers."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from ..config.workspace import Workspace

__all__ = ["State", "app", "console", "err_console", "print_json", "state", "styled"]

app = typer.Typer(
    name="mrbatch",
    help="Resilient multi-region batch processing: files in, validated and enriched files out,"
    " in whichever region is active.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Data (keys, reasons, values) is printed as it is: never read as rich markup, never
# highlighted; the few words mrbatch styles itself go through ``styled``.
console = Console(markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Plain strings and ``(text, style)`` pairs joined: the only way output gets style."""
    return Text.assemble(*parts)


@dataclass
class State:
    config: Path | None = None
    debug: bool = False
    user_umask: int = 0o022  # the umask the command was started with (see main.run)
    _ws: Workspace | None = field(default=None, repr=False)

    def workspace(self) -> Workspace:
        if self._ws is None:
            self._ws = Workspace.load(self.config)
        return self._ws


state = State()


@app.callback()
def _options(
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="Path to mrbatch.toml (default: found from the current directory upwards).",
        envvar="MRBATCH_CONFIG",
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks on errors, and the library's log."
    ),
) -> None:
    state.config = config
    state.debug = debug
    state._ws = None
    # Commands report what matters in their own output (an upload that fell back to another
    # region shows the region it landed in); the library's log is for --debug and the
    # long-running processes, which log to their files.
    logging.basicConfig(
        level=logging.INFO if debug else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")
