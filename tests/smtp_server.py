"""A real SMTP server for tests (aiosmtpd on 127.0.0.1, a free port) that records messages and
can be told to refuse them, like a failing mail server."""

from __future__ import annotations

import socket
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class RecordingHandler:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.failing = False
        self.refused = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.failing:
            self.refused += 1
            return "451 4.3.0 temporarily unavailable (test server told to fail)"
        content: Any = envelope.original_content or envelope.content
        self.messages.append(message_from_bytes(content))
        return "250 OK"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SmtpServer:
    def __init__(self) -> None:
        self.handler = RecordingHandler()
        self.port = _free_port()  # aiosmtpd cannot bind port 0 itself
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self.running = False

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        self.running = True
        return self

    def stop(self) -> None:
        """Stop listening: connections to the port are then refused, like a server that is
        down. Idempotent, so a test may stop it early and leave the rest to ``__exit__``."""
        if self.running:
            self.running = False
            self.controller.stop()

    def __exit__(self, *exc: object) -> None:
        self.stop()
