"""The Typer application and what every command shares: the workspace, output helpers."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.text import Text

from .. import __version__
from .lazy import LazyGroup

if TYPE_CHECKING:
    from rich.progress import ProgressColumn

    from ..config.workspace import Workspace

__all__ = [
    "DURATION",
    "State",
    "app",
    "console",
    "description_column",
    "duration",
    "err_console",
    "json_option",
    "print_json",
    "state",
    "styled",
]

# Help texts are rich markup (typer's default, named here so a new typer cannot change it):
# write no [square brackets] in a help text; tests/test_help.py renders every command's help.
HELP = {"rich_markup_mode": "rich", "context_settings": {"help_option_names": ["-h", "--help"]}}


class _Commands(LazyGroup):
    def typer_app(self) -> typer.Typer:
        return app


app = typer.Typer(
    name="mrbatch",
    help="Resilient multi-region batch processing: files in, validated and enriched files out,"
    " in whichever region is active.",
    cls=_Commands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    **HELP,  # type: ignore[arg-type]
)
# Data (keys, reasons, values) is printed as it is: never read as rich markup, never
# highlighted; the few words mrbatch styles itself go through ``styled``.
# Piped (not a terminal), a line is never broken at some width: `mrbatch put ... | cat` shows
# each line whole.
console = Console(markup=False, highlight=False, soft_wrap=not sys.stdout.isatty())
err_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=not sys.stderr.isatty())


def styled(*parts: str | tuple[str, str]) -> Text:
    """Plain strings and ``(text, style)`` pairs joined: the only way output gets style."""
    return Text.assemble(*parts)


def description_column() -> ProgressColumn:
    """A progress bar's description column: a key in it is shown as it is, never as markup."""
    from rich.progress import TextColumn  # the commands with a bar import rich.progress anyway

    return TextColumn("{task.description}", style="progress.description", markup=False)


@dataclass
class State:
    config: Path | None = None
    debug: bool = False
    user_umask: int = 0o022  # the umask the command was started with (see main.run)
    command: str | None = None  # the command being run (see main.main)
    _ws: Workspace | None = field(default=None, repr=False)

    def workspace(self, *, pipelines: bool = True) -> Workspace:
        """The workspace; ``pipelines=False`` for a command that runs no pipeline (status,
        runs, wait, put, get, url, failover, failback, reconcile): their schemas and user
        code are not compiled, which would import polars (a broken pipeline is still refused
        by `up`, `reload` and the processes themselves)."""
        if self._ws is None:
            # Imported here: `--help` and `--version` need no configuration (nor pydantic).
            from ..config.workspace import Workspace

            self._ws = Workspace.load(self.config, pipelines=pipelines)
        return self._ws


state = State()


def _version(value: bool) -> None:
    if value:
        console.print(f"mrbatch {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    ctx: typer.Context,
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
    _show_version: bool = typer.Option(
        False,
        "--version",
        "-V",
        callback=_version,
        is_eager=True,
        help="Print the version of mrbatch and exit.",
    ),
) -> None:
    state.config = config
    state.debug = debug
    state.command = ctx.invoked_subcommand
    state._ws = None
    # Commands report what matters in their own output (an upload that fell back to another
    # region shows the region it landed in); the library's log is for --debug and the
    # long-running processes, which log to their files.
    logging.basicConfig(
        level=logging.INFO if debug else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _duration(value: str) -> float:
    from ..config.values import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def duration(default: str | None, *names: str, help: str) -> Any:
    """An option that takes a duration (``90``, ``500ms``, ``60s``, ``15m``, ``2h``, ``7d``)
    and gives seconds, as every command's durations do."""
    return typer.Option(default, *names, parser=_duration, metavar="DURATION", help=help)


DURATION = "90, 500ms, 60s, 15m, 2h or 7d"


def json_option(what: str = "Print the result as JSON instead of a table.") -> Any:
    return typer.Option(False, "--json", help=what)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")
