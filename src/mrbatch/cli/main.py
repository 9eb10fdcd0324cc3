"""The ``mrbatch`` entry point: runs the command (its module is imported then, see lazy.py) and
turns errors into one line plus a hint on stderr, with exit code 1 (operation failed) or 2
(usage or configuration)."""

from __future__ import annotations

import os
import sys

from ..runtime.relay import RELAYED, relay  # the standard library only, as this module

PRIVATE_UMASK = 0o077  # as config.workspace.PRIVATE_UMASK, without importing the configuration

__all__ = ["run"]


def run(argv: list[str] | None = None) -> int:
    # Imported here: a command the command server runs (see main) needs none of them.
    from ..errors import MrbatchError
    from .app import app, err_console, state, styled

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


# Commands that read or move one thing and print (the ones the command server runs): when they
# return, nothing of theirs is left running. Once their output is flushed they leave at once:
# the interpreter's teardown of the modules they imported (typer, rich, pydantic, sqlite) took
# 50-75 ms, more than `wait` takes to notice a finished run.
QUICK = RELAYED


def main() -> None:
    relayed = relay(sys.argv[1:])
    if relayed is not None:
        sys.exit(relayed)
    code = run()
    from .app import state

    if state.command in QUICK:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:  # a reader that went away (`| head`): nothing more to say
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
