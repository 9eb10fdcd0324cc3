"""Commands imported when they are run, not when ``mrbatch`` starts.

Every command module registers its commands on the shared Typer app when it is imported;
importing them all (polars, the recovery engine, the gateway, ...) cost most of a second before
any command ran. The group below knows which modules hold which command and imports only those;
``mrbatch --help`` lists the commands from the same table without importing any of them
(tests/test_help.py checks the table against the commands themselves).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

import typer
from typer import _click as click
from typer.core import TyperCommand, TyperGroup
from typer.main import get_command_from_info, get_group_from_info

__all__ = ["LISTED", "LazyGroup", "Listed"]


@dataclass(frozen=True)
class Listed:
    """A command as ``mrbatch --help`` lists it: its name, the modules that define it (a group
    may gather commands from several) and the first line of its help."""

    name: str
    modules: tuple[str, ...]
    summary: str


def _listed(name: str, modules: str, summary: str) -> Listed:
    return Listed(name, tuple(modules.split()), summary)


# In the order `mrbatch --help` lists them.
LISTED = (
    _listed(
        "init",
        "deploy",
        "Create a workspace: mrbatch.toml, the sample pipeline and the data dir.",
    ),
    _listed(
        "up",
        "deploy",
        "Start one process per region, the replicators and the gateway, and keep them running.",
    ),
    _listed("down", "deploy", "Stop the supervisor, then every process `mrbatch up` started."),
    _listed(
        "status",
        "deploy",
        "Active region, epoch, and per region: state, process, backlog and lag.",
    ),
    _listed(
        "put",
        "objects",
        "Upload FILE through the access point to the preferred healthy region.",
    ),
    _listed("get", "objects", "Download KEY from whichever region holds it."),
    _listed(
        "url",
        "objects",
        "Print a presigned link to KEY, served by the gateway from any region holding it.",
    ),
    _listed(
        "errors",
        "objects",
        "The rejected rows of an input's latest run: row number, values, reason.",
    ),
    _listed("wait", "runs", "Wait until every named input version (or every one) has finished."),
    _listed("runs", "runs", "The file runs known to any region: the list, or one run's history."),
    _listed("failover", "recovery", "Run the failover plan against the region being activated."),
    _listed(
        "failback",
        "recovery",
        "Run the failback plan: catch the returning region up, hand runs over, activate it.",
    ),
    _listed(
        "reconcile",
        "recovery",
        "Re-drive every unfinished run in the active region; report each by name.",
    ),
    _listed(
        "redrive",
        "recovery",
        "Run a FAILED run (or every matching one) again in the active region, from its last step.",
    ),
    _listed(
        "watch",
        "recovery",
        "Watch the active region's health; recommend (or run) a failover, with the evidence.",
    ),
    _listed(
        "plan",
        "plan_cmds drill_cmd",
        "Recovery plans as code: show, evaluate, history; answers to a running plan.",
    ),
    _listed(
        "drill",
        "drill_cmd",
        "Practise recovery on the live deployment: load, failover, failback, verify.",
    ),
    _listed("report", "drill_cmd", "Recovery reports: list, show, verify the chain."),
    _listed("verify", "chaos_cmds", "Check the five invariants across all regions."),
    _listed(
        "chaos",
        "chaos_cmds",
        "Inject a fault into the running deployment, restore, verify and report.",
    ),
    _listed(
        "load",
        "chaos_cmds",
        "Upload generated orders files and measure throughput and latency.",
    ),
    _listed(
        "scenario",
        "chaos_cmds",
        "A seeded schedule of faults, failovers and failbacks over a load, then verify.",
    ),
    _listed(
        "gateway",
        "gateway_cmd",
        "The HTTP gateway: uploads, presigned links, status API, /metrics and the dashboard.",
    ),
    _listed("gc", "gc_cmd", "Remove what finished runs leave behind, in every region."),
    _listed(
        "backup",
        "backup_cmds",
        "Back up state records, the objects they reference and the control plane into TO.",
    ),
    _listed(
        "restore",
        "backup_cmds",
        "Rebuild REGION from the backups in FROM, as of AT; it then catches up by replication.",
    ),
    _listed(
        "backups",
        "backup_cmds",
        "List the complete backups in FROM, oldest first (their times are what --at takes).",
    ),
    _listed(
        "ingest",
        "ingest_cmd",
        "Stream records (CSV records or NDJSON lines) from stdin into sealed input files.",
    ),
    _listed(
        "reload",
        "config_cmd",
        "Make every running process apply the edited mrbatch.toml now.",
    ),
    _listed(
        "demo",
        "demo",
        "The whole system end to end in a temporary workspace, then cleaned up.",
    ),
)


class LazyGroup(TyperGroup):
    """The top-level group: resolves a command by importing the modules that define it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Commands of modules imported before the group was built (a test, a benchmark) come
        # in through typer itself.
        for command in self.commands.values():
            reflowed(command)
        self._listing = False
        self._loaded: set[str] = set()

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = [entry.name for entry in LISTED]
        return names + sorted(name for name in self.commands if name not in names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = next((e for e in LISTED if e.name == cmd_name), None)
        if entry is not None and self._listing:  # the command list needs no import
            return TyperCommand(entry.name, short_help=entry.summary, help=entry.summary)
        if entry is not None:
            for module in entry.modules:
                self.load(module)
        return self.commands.get(cmd_name)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def load(self, module: str) -> None:
        """Import ``module`` and add the commands and groups it registered on the app."""
        if module in self._loaded:
            return
        self._loaded.add(module)
        importlib.import_module(f"{__package__}.{module}")
        app = self.typer_app()
        for info in app.registered_commands:
            command = get_command_from_info(
                info,
                pretty_exceptions_short=app.pretty_exceptions_short,
                rich_markup_mode=app.rich_markup_mode,
            )
            if command.name and command.name not in self.commands:
                self.commands[command.name] = reflowed(command)
        for group_info in app.registered_groups:
            group = get_group_from_info(
                group_info,
                pretty_exceptions_short=app.pretty_exceptions_short,
                rich_markup_mode=app.rich_markup_mode,
                suggest_commands=app.suggest_commands,
            )
            if group.name:
                # A group gathered from several modules is built again once they are all in.
                self.commands[group.name] = reflowed(group)

    def typer_app(self) -> typer.Typer:
        """The app the command modules register on (app.py names it)."""
        raise NotImplementedError

    def load_all(self) -> None:
        """Every command, as ``mrbatch --version`` and the help tests need them."""
        for entry in LISTED:
            for module in entry.modules:
                self.load(module)


def reflowed(command: click.Command) -> click.Command:
    """``command`` (and its subcommands) with each paragraph of its help on one line, which
    the terminal then wraps: the help texts are docstrings broken at 100 columns, and rich
    help keeps single line breaks after the first paragraph ("throughput,|latency ...").
    A paragraph with an indented or bulleted line is kept as written."""
    if command.help:
        paragraphs = inspect.cleandoc(command.help).split("\n\n")
        command.help = "\n\n".join(
            p
            if any(line[:1] in (" ", "-", "*", "\b") for line in p.splitlines())
            else " ".join(p.split("\n"))
            for p in paragraphs
        )
    for sub in getattr(command, "commands", {}).values():
        reflowed(sub)
    return command
