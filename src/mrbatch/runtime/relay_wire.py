"""The messages of the command server's socket (runtime/relay.py, runtime/commands.py): a
4-byte length, then that many bytes of JSON; the first message of a client carries its three
standard descriptors (SCM_RIGHTS)."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

__all__ = ["receive", "send"]

_HEADER = struct.Struct("!I")
_MAX_MESSAGE = 1 << 20


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    body = json.dumps(message).encode()
    data = _HEADER.pack(len(body)) + body
    if fds:
        sent = socket.send_fds(sock, [data], fds)
        data = data[sent:]
    if data:
        # Never an empty sendall: it still calls send(), which fails with EPIPE once a server
        # that read the whole message with its descriptors has answered and closed (a refusal).
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
