"""The ``mrbatch`` entry point: runs the command (its module is imported then, see lazy.py) and
turns errors into one line plus a hint on stderr, with exit code 1 (operation failed) or 2
(usage or configuration)."""

from __future__ import annotations

import os
import sys

from ..errors import MrbatchError
from .app import app, err_console, state, styled

PRIVATE_UMASK = 0o077  # as config.workspace.PRIVATE_UMASK, without importing the configuration

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
