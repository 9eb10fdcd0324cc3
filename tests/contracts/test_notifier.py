"""The notifier contract: the outbox and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

from email import message_from_bytes
from pathlib import Path

import pytest

from mrbatch.backends.mail import OutboxNotifier, SmtpNotifier
from mrbatch.errors import UnavailableError
from mrbatch.ports import Mail
from tests.conftest import free_port
from tests.smtp_server import SmtpServer

MAIL = Mail(
    message_id="<run-1@mrbatch>",
    sender="mrbatch@localhost",
    to=("a@example.com", "b@example.com"),
    subject="mrbatch: input/x.csv processed",
    body="Download: http://127.0.0.1:1/objects/output/x.csv?expires=1&signature=abc\n",
)


def test_outbox_writes_one_rfc5322_file_per_message_id(tmp_path: Path) -> None:
    outbox = OutboxNotifier(tmp_path / "outbox")
    first = outbox.send(MAIL)
    second = outbox.send(MAIL)
    assert first == second
    files = list((tmp_path / "outbox").iterdir())
    assert len(files) == 1
    message = message_from_bytes(files[0].read_bytes())
    assert message["Message-ID"] == MAIL.message_id
    assert message["To"] == "a@example.com, b@example.com"
    assert "signature=abc" in message.get_payload()  # readable, not quoted-printable


def test_smtp_delivers_to_a_real_server() -> None:
    with SmtpServer() as server:
        SmtpNotifier("127.0.0.1", server.port, timeout=5).send(MAIL)
        assert len(server.handler.messages) == 1
        assert server.handler.messages[0]["Subject"] == MAIL.subject


def test_smtp_failures_are_unavailable_not_swallowed() -> None:
    with SmtpServer() as server:
        server.handler.failing = True
        with pytest.raises(UnavailableError, match="did not accept"):
            SmtpNotifier("127.0.0.1", server.port, timeout=5).send(MAIL)
        assert server.handler.refused == 1
    with pytest.raises(UnavailableError):
        SmtpNotifier("127.0.0.1", free_port(), timeout=2).send(MAIL)  # nothing listens
