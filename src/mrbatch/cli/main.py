"""The ``mrbatch`` entry point: loads every command module and turns errors into one line
plus a hint on stderr, with exit code 1 (operation failed) or 2 (usage or configuration)."""

from __future__ import annotations

import importlib
import sys

from ..errors import MrbatchError
from .app import app, err_console, state

# Each module registers its commands when imported; this order is the order `--help` lists them.
COMMAND_MODULES = ("deploy", "objects", "runs", "recovery", "gateway_cmd", "chaos_cmds", "demo")
for _module in COMMAND_MODULES:
    importlib.import_module(f"{__package__}.{_module}")

__all__ = ["run"]


def run(argv: list[str] | None = None) -> int:
    try:
        # Standalone mode: click reports its own usage errors (exit 2) and turns typer.Exit
        # into SystemExit; our errors pass through untouched and are reported here.
        app(args=argv, prog_name="mrbatch")
    except MrbatchError as exc:
        if state.debug:
            err_console.print_exception()
        err_console.print(f"[red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
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
