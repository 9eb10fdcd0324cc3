"""Notifier backends: an outbox of ``.eml`` files (the embedded default) and SMTP."""

from __future__ import annotations

import os
import re
import smtplib
import uuid
from email.message import EmailMessage, Message
from email.mime.text import MIMEText
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UnavailableError
from ..ports import Mail

if TYPE_CHECKING:
    from ..config.workspace import Workspace

__all__ = ["OutboxNotifier", "SmtpNotifier", "open_outbox", "open_smtp", "render"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def render(mail: Mail) -> Message:
    """The RFC 5322 message for ``mail``; ``Message-ID`` is the idempotency key."""
    headers = {
        "From": mail.sender,
        "To": ", ".join(mail.to),
        "Subject": mail.subject,
        "Date": formatdate(localtime=False, usegmt=True),
        "Message-ID": mail.message_id,
    }
    if all(_plain_ascii(v) for v in headers.values()) and mail.body.isascii():
        # The legacy API, for text that needs no encoding (every completion mail here): a
        # fifth of the default policy's cost (0.2 ms against 1.0 a mail, 8% of a region's
        # CPU with many small files). Line breaks in a header value (an injection) and other
        # text take the default policy, which refuses or encodes them.
        plain = MIMEText(mail.body, "plain", "us-ascii")
        for name, value in headers.items():
            plain[name] = value
        return plain
    message = EmailMessage()
    for name, value in headers.items():
        message[name] = value
    # Plain 7-bit text keeps the link readable in the raw .eml; other text is encoded.
    message.set_content(mail.body, cte="7bit" if mail.body.isascii() else "quoted-printable")
    return message


def _plain_ascii(value: str) -> bool:
    return value.isascii() and "\r" not in value and "\n" not in value


class OutboxNotifier:
    """One file per message id in a directory: writing the same message twice is a no-op."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, message_id: str) -> Path:
        return self.directory / (_UNSAFE.sub("_", message_id.strip("<>")) + ".eml")

    def send(self, mail: Mail) -> str:
        try:
            return self._write(mail)
        except OSError as exc:
            # A full disk or a directory that cannot be written: the send is retried, like a
            # mail server that does not answer.
            raise UnavailableError(
                f"the outbox {self.directory} cannot be written: {exc}",
                hint="check the data directory's disk space and permissions",
            ) from exc

    def forget(self, message_id: str) -> bool:
        try:
            self.path_for(message_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def _write(self, mail: Mail) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path_for(mail.message_id)
        if target.exists():
            return str(target)
        tmp = self.directory / f".{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as out:
            out.write(bytes(render(mail)))
            out.flush()
            os.fsync(out.fileno())  # the send is recorded (COMPLETED) only after this
        try:
            os.link(tmp, target)  # atomic and exclusive: a racing sender cannot write twice
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return str(target)


class SmtpNotifier:
    """Hands each message to an SMTP server. The server cannot de-duplicate for us, so the
    orchestrator records the send before completing the run; the stable Message-ID lets a
    receiving system drop the rare repeat after a crash between send and record."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    def send(self, mail: Mail) -> str:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                refused = smtp.send_message(render(mail))
        except (TimeoutError, OSError, smtplib.SMTPException) as exc:
            raise UnavailableError(
                f"mail server {self.host}:{self.port} did not accept the message: {exc}",
                hint="check notify.smtp_host / notify.smtp_port; the send is retried",
            ) from exc
        if refused:
            raise UnavailableError(f"mail server refused recipients: {sorted(refused)}")
        return f"smtp://{self.host}:{self.port}"

    def forget(self, message_id: str) -> bool:
        return False  # what a mail server delivered is the recipients' to keep


def open_outbox(ws: Workspace) -> OutboxNotifier:
    return OutboxNotifier(ws.outbox_dir)


def open_smtp(ws: Workspace) -> SmtpNotifier:
    notify = ws.config.notify
    assert notify.smtp_host is not None  # the config refuses smtp without a host
    return SmtpNotifier(notify.smtp_host, notify.smtp_port, notify.smtp_timeout)
