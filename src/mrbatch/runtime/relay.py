"""The client side of the command server (runtime/commands.py): a quick command hands its
arguments, working directory, environment and its own stdin, stdout and stderr to the
deployment's command server, which runs it in a forked copy of itself with everything imported
already; this process only waits for the exit status.

Importing the CLI (typer, rich) and the configuration model (pydantic) took ~0.3 s of every
command; a relayed one starts in a few tens of milliseconds. Only the standard library and
config/locate.py are imported here. Whenever the server cannot take the command (no deployment
running, another mrbatch version, a global option this parser does not know) the command runs
in this process as before, so relaying never changes what a command does, only how soon it
starts.

Protocol over the Unix socket ``<data_dir>/run/commands.sock``: one length-prefixed JSON
message from the client carrying the three descriptors (SCM_RIGHTS), then from the server
``{"pid": N}`` once the command runs (or ``{"refused": why}``) and ``{"exit": code}`` when it
is done. A signal the client gets (Ctrl-C) is passed to that pid.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__

if TYPE_CHECKING:
    import socket

# Imported only once a workspace is found (json, socket, struct and signal cost ~8 ms, which
# `mrbatch --help` outside any workspace would pay for nothing).

__all__ = ["HANDSHAKE_TIMEOUT", "RELAYED", "SOCKET_NAME", "installation", "relay", "socket_address"]

SOCKET_NAME = "commands.sock"
# Commands that read or move one thing and print, and the help and version of the whole CLI.
# `up`, `down`, `watch` and the rest start or stop processes, or run for long: they run here.
RELAYED = frozenset({"status", "runs", "wait", "url", "get", "put", "errors"})
_HELP_OR_VERSION = frozenset({"--help", "-h", "--version", "-V"})
# How long the server may take to start a command (it answers in milliseconds). A server that
# does not (stopped with SIGSTOP, say) fails the command rather than letting it hang; it is
# not run here instead, because the server may yet have started it.
HANDSHAKE_TIMEOUT = 10.0


def installation() -> dict[str, str]:
    """What must match between client and server: the same mrbatch, from the same place."""
    return {"version": __version__, "package": str(Path(__file__).resolve().parents[1])}


def socket_address(run_dir: Path) -> str:
    """The socket's path, short enough for AF_UNIX (108 bytes) however deep the workspace lies:
    through an open descriptor of the run directory when the full path is too long. The caller
    closes nothing: the descriptor lives as long as the process, as the socket does."""
    full = str(run_dir / SOCKET_NAME)
    if len(full.encode()) < 100:
        return full
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{SOCKET_NAME}"


def _command_and_config(argv: list[str]) -> tuple[bool, str | None]:
    """Whether ``argv`` is a relayed command, and the --config it names. Anything this does not
    understand is left to the full parser in this process."""
    config: str | None = None
    args = iter(argv)
    for arg in args:
        if arg in ("-c", "--config"):
            config = next(args, None)
            if config is None:
                return False, None
        elif arg.startswith("--config="):
            config = arg.partition("=")[2]
        elif arg == "--debug":
            continue
        elif arg in _HELP_OR_VERSION:
            return True, config
        elif arg.startswith("-"):
            return False, None
        else:
            return arg in RELAYED, config
    return True, config  # no command: the help


def _data_dir(config_path: Path) -> Path | None:
    import tomllib  # only when a workspace is found

    from ..config.locate import DEFAULT_DATA_DIR

    try:
        with config_path.open("rb") as handle:
            data_dir = tomllib.load(handle).get("data_dir", DEFAULT_DATA_DIR)
    except (OSError, ValueError):
        return None  # the full path reports what is wrong with it
    return (config_path.parent / data_dir) if isinstance(data_dir, str) else None


def _connect(argv: list[str]) -> socket.socket | None:
    relayed, config = _command_and_config(argv)
    if not relayed:
        return None
    from ..config.locate import find_config
    from ..errors import ConfigError

    try:
        named = config or os.environ.get("MRBATCH_CONFIG")
        config_path = Path(named).resolve() if named else find_config()
    except (ConfigError, OSError):
        return None
    data_dir = _data_dir(config_path)
    if data_dir is None:
        return None
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(HANDSHAKE_TIMEOUT)
    try:
        sock.connect(socket_address(data_dir.resolve() / "run"))
    except OSError:
        sock.close()
        return None
    return sock


def _forward(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass  # it has just finished: its exit status is on its way


def relay(argv: list[str]) -> int | None:
    """Run ``argv`` through the command server; its exit status, or None when it ran nothing
    (then the caller runs the command itself)."""
    if os.environ.get("MRBATCH_IN_PROCESS"):
        return None
    sock = _connect(argv)
    if sock is None:
        return None
    import signal

    from .relay_wire import receive, send

    with sock:
        umask = os.umask(0o077)
        os.umask(umask)
        try:
            request = {
                "argv": argv,
                "cwd": os.getcwd(),  # gone (removed under the shell): the command says so
                "env": dict(os.environ),
                "umask": umask,
                **installation(),
            }
            send(sock, request, [0, 1, 2])
        except (OSError, ValueError):
            return None  # nothing ran
        try:
            answer, _ = receive(sock)
        except TimeoutError:
            sys.stderr.write(
                f"error: the command server did not start the command within"
                f" {HANDSHAKE_TIMEOUT:g}s\nhint: `mrbatch status` shows its pid;"
                " MRBATCH_IN_PROCESS=1 runs a command without it\n"
            )
            return 1
        except (OSError, ValueError):
            return None  # nothing ran
        sock.settimeout(None)  # the command itself may take as long as it takes
        if answer is None or "pid" not in answer:
            return None  # refused (another version) or gone before it started: run it here
        pid = int(answer["pid"])
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, lambda number, _frame: _forward(pid, number))
        try:
            done, _ = receive(sock)
        except (OSError, ValueError):
            done = None
    if done is None or "exit" not in done:
        # It started and may have done part of its work: never run it a second time.
        sys.stderr.write("error: the command server lost this command before it finished\n")
        return 1
    return int(done["exit"])
