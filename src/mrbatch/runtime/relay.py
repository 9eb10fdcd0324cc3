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

import json
import os
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from .. import __version__

__all__ = [
    "RELAYED",
    "SOCKET_NAME",
    "installation",
    "receive",
    "relay",
    "send",
    "socket_address",
]

SOCKET_NAME = "commands.sock"
# Commands that read or move one thing and print, and the help and version of the whole CLI.
# `up`, `down`, `watch` and the rest start or stop processes, or run for long: they run here.
RELAYED = frozenset({"status", "runs", "wait", "url", "get", "put", "errors"})
_HELP_OR_VERSION = frozenset({"--help", "-h", "--version", "-V"})
_HEADER = struct.Struct("!I")
_MAX_MESSAGE = 1 << 20
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
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


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    body = json.dumps(message).encode()
    data = _HEADER.pack(len(body)) + body
    if fds:
        sent = socket.send_fds(sock, [data], fds)
        data = data[sent:]
    sock.sendall(data)


def _exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = b""
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return chunks


def receive(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message (None at end of stream) and the descriptors that came with it."""
    fds: list[int] = []
    if max_fds:
        data, fds, _flags, _addr = socket.recv_fds(sock, _HEADER.size, max_fds)
        head = data + (_exactly(sock, _HEADER.size - len(data)) or b"") if data else None
    else:
        head = _exactly(sock, _HEADER.size)
    if not head or len(head) < _HEADER.size:
        return None, fds
    (size,) = _HEADER.unpack(head)
    if size > _MAX_MESSAGE:
        raise ValueError(f"a message of {size} bytes")
    body = _exactly(sock, size)
    return (json.loads(body) if body is not None else None), fds


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
        for sig in FORWARDED_SIGNALS:
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
