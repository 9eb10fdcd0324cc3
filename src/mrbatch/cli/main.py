"""The ``mrbatch`` entry point: loads every command module and turns errors into one line
plus a hint on stderr, with exit code 1 (operation failed) or 2 (usage or configuration)."""

from __future__ import annotations

import importlib
import os
import sys

from ..config.workspace import PRIVATE_UMASK
from ..errors import MrbatchError
from .app import app, err_console, state, styled

# Each module registers its commands when imported; this order is the order `--help` lists them.
COMMAND_MODULES = (
    "deploy",
    "objects",
    "runs",
    "recovery",
    "plan_cmds",
    "drill_cmd",
    "gateway_cmd",
    "chaos_cmds",
    "gc_cmd",
    "backup_cmds",
    "ingest_cmd",
    "config_cmd",
    "demo",
)
for _module in COMMAND_MODULES:
    importlib.import_module(f"{__package__}.{_module}")

__all__ = ["run"]


def run(argv: list[str] | None = None) -> int:
    # Files mrbatch writes into the data directory are private; files written for the user
    # (`get -o`) use the user's own umask again (state.user_umask).
    state.user_umask = os.umask(PRIVATE_UMASK)
    try:
        # Standalone mode: click reports its own usage errors (exit 2) and turns typer.Exit
        # into SystemExit; our errors pass through untouched and are reported here.
        app(args=argv, prog_name="mrbatch")
    except MrbatchError as exc:
        if state.debug:
            err_console.print_exception()
        err_console.print(styled(("error:", "red"), f" {exc.message}"), soft_wrap=True)
        if exc.hint:
            err_console.print(f"hint: {exc.hint}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
