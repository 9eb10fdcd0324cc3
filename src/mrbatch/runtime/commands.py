"""The command server: one process per deployment (``commands``, started by ``mrbatch up``)
that imports the CLI and what the quick commands need once, then runs each relayed command
(runtime/relay.py) in a forked copy of itself.

The fork inherits the imports and nothing else that belongs to the server: it takes the
client's stdin, stdout and stderr as its own descriptors, its working directory, environment
and umask, leaves the server's process group (so `mrbatch down` does not cut a `wait` short)
and imports the CLI modules afresh, so that the consoles see the client's terminal. The
configuration is read again by every command, as in its own process. The server stays single
threaded, so a fork never copies a lock some other thread holds; a library that starts threads
when imported (polars) is therefore imported by the command that needs it, not here.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import signal
import socket
import struct
import sys
import threading
import traceback
from typing import Any

from ..config.workspace import Workspace
from .relay import RELAYED, SOCKET_NAME, installation, socket_address
from .relay_wire import receive, send

__all__ = ["CommandServer", "serve"]

log = logging.getLogger("mrbatch.commands")

_ACCEPT_POLL = 0.5  # seconds between looks at the stop flag
_CLI = "mrbatch.cli"
# Imported by the server for what they import, and again by every command: they read the
# environment (typer's help: FORCE_COLOR, TERMINAL_WIDTH, ...) or the terminal when imported.
_LIBRARIES_READ_AFRESH = ("typer.rich_utils",)


def _cli_modules() -> list[str]:
    from ..cli.lazy import LISTED

    wanted = {m for item in LISTED if item.name in RELAYED for m in item.modules}
    return [f"{_CLI}.main", *(f"{_CLI}.{m}" for m in sorted(wanted)), *_LIBRARIES_READ_AFRESH]


def _read_afresh(name: str) -> bool:
    return name == _CLI or name.startswith(f"{_CLI}.") or name in _LIBRARIES_READ_AFRESH


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _code_stamp() -> int:
    """The newest modification time of the mrbatch modules imported here: a change (an
    upgrade, an edit of an editable install) means the forks would run code that is gone."""
    newest = 0
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and (name == "mrbatch" or name.startswith("mrbatch.")):
            try:
                newest = max(newest, os.stat(path).st_mtime_ns)
            except OSError:
                return -1  # removed: changed as well
    return newest


class CommandServer:
    def __init__(self, ws: Workspace, stop: threading.Event) -> None:
        self.ws = ws
        self.stop = stop
        self.path = ws.run_dir / SOCKET_NAME
        self.installation = installation()
        self.stamp = 0

    def preload(self) -> None:
        """Import what the relayed commands import; the CLI modules themselves are imported
        again by each command (see _run)."""
        for name in _cli_modules():
            importlib.import_module(name)
        if _threads() != 1:
            raise RuntimeError(f"{_threads()} threads after the imports: forking is not safe")
        self.stamp = _code_stamp()

    def serve(self) -> None:
        self.preload()
        self.ws.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # left by a server that was killed
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(socket_address(self.ws.run_dir))
        os.chmod(self.path, 0o600)
        inode = self.path.stat().st_ino
        listener.listen(64)
        listener.settimeout(_ACCEPT_POLL)
        # The kernel reaps the forks: the server never waits for a command.
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        log.info("command server listening on %s", self.path)
        try:
            while not self.stop.is_set():
                try:
                    conn, _ = listener.accept()
                except (TimeoutError, InterruptedError):
                    continue
                with conn:
                    self._take(conn, listener)
        finally:
            listener.close()
            try:
                if self.path.stat().st_ino == inode:  # a newer server may have replaced it
                    self.path.unlink()
            except FileNotFoundError:
                pass

    def _take(self, conn: socket.socket, listener: socket.socket) -> None:
        conn.settimeout(5.0)  # a client that connects and sends nothing does not hold us up
        fds: list[int] = []
        try:
            peer = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", peer)
            request, fds = receive(conn, max_fds=3)
            if uid != os.getuid() or request is None or len(fds) != 3:
                return
            if {k: request.get(k) for k in self.installation} != self.installation:
                # Another mrbatch than the one imported here: that command runs in its own
                # process, and this server ends so that its restart imports the new one.
                send(conn, {"refused": "another mrbatch installation"})
                self.stop.set()
                return
            if _code_stamp() != self.stamp:
                send(conn, {"refused": "the installed code changed"})
                self.stop.set()
                return
            if _threads() != 1:
                send(conn, {"refused": "the server is not single threaded"})
                return
            conn.settimeout(None)
            if os.fork() == 0:
                try:
                    listener.close()
                    _run(conn, fds, request)
                finally:
                    os._exit(1)  # the fork never goes back into the server's loop
        except (OSError, ValueError) as exc:
            log.warning("a command was not taken: %s", exc)
        finally:
            for fd in fds:
                os.close(fd)


def _std_stream(fd: int, like: Any, write: bool) -> io.TextIOWrapper:
    """A text stream on ``fd`` as Python makes one at start-up: line buffered on a terminal
    (and always for stderr), the encoding and error handler of the stream it replaces."""
    line_buffered = write and (fd == 2 or os.isatty(fd))
    return open(
        fd,
        "w" if write else "r",
        buffering=1 if line_buffered else -1,
        encoding=getattr(like, "encoding", None) or "utf-8",
        errors=getattr(like, "errors", None) or "strict",
        closefd=False,
    )


def _watch_client(conn: socket.socket) -> None:
    """The client went away (killed, its terminal closed): interrupt the command."""
    try:
        conn.recv(1)
    except OSError:
        pass
    import _thread

    _thread.interrupt_main()


def _take_over_client(fds: list[int], request: dict[str, Any]) -> None:
    """Become the client's process as far as the command can tell: its descriptors, working
    directory, environment and umask, a logging set-up of its own, fresh CLI modules."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setpgid(0, 0)
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    fds.clear()
    sys.stdin = _std_stream(0, sys.__stdin__, write=False)
    sys.stdout = _std_stream(1, sys.__stdout__, write=True)
    sys.stderr = _std_stream(2, sys.__stderr__, write=True)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.umask(int(request["umask"]))
    root = logging.getLogger()
    for handler in list(root.handlers):  # the server's log file is not the command's
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    sys.argv = ["mrbatch", *request["argv"]]
    for name in [n for n in sys.modules if _read_afresh(n)]:
        del sys.modules[name]


def _run(conn: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
    """The fork's whole life. Until the command starts, a failure goes to the server's log and
    the client, told nothing, runs the command itself; after, the client gets the exit status."""
    server_log = os.dup(2)
    code, started = 1, False
    try:
        _take_over_client(fds, request)
        cli_main = importlib.import_module(f"{_CLI}.main")
        send(conn, {"pid": os.getpid()})
        started = True
        threading.Thread(target=_watch_client, args=(conn,), daemon=True).start()
        code = cli_main.run(list(request["argv"]))
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        os.write(2 if started else server_log, traceback.format_exc().encode())
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        if started:
            # The watcher interrupts the main thread once the client is gone: from here on
            # there is nothing left to interrupt.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                send(conn, {"exit": code})
            except (OSError, KeyboardInterrupt):
                pass
        os._exit(code)


def serve(ws: Workspace, stop: threading.Event) -> None:
    CommandServer(ws, stop).serve()
