"""The notifier contract, run against every notifier in :mod:`tests.contracts.backends` (the
outbox and a real SMTP server, aiosmtpd), then a few checks specific to one backend."""

from __future__ import annotations

from email import message_from_bytes, policy
from pathlib import Path

import pytest

from mrbatch import backends
from mrbatch.backends.mail import render
from mrbatch.errors import UnavailableError
from mrbatch.ports import Mail, Notifier
from tests.contracts.backends import NOTIFIERS, NotifierSetup, smtp_workspace
from tests.smtp_server import SmtpServer

MAIL = Mail(
    message_id="<run-1@mrbatch>",
    sender="mrbatch@localhost",
    to=("a@example.com", "b@example.com"),
    subject="mrbatch: input/x.csv processed",
    body="Download: http://127.0.0.1:1/objects/output/x.csv?expires=1&signature=abc\n",
)


def _name(setup: NotifierSetup) -> str:
    return setup.workspace.config.backends.notifier


def test_delivers_one_rfc5322_message(notifier: Notifier, notifier_setup: NotifierSetup) -> None:
    assert notifier.send(MAIL)  # where it went
    delivered = notifier_setup.delivered()
    assert len(delivered) == 1
    message = delivered[0]
    assert message["Message-ID"] == MAIL.message_id
    assert message["From"] == MAIL.sender
    assert message["To"] == "a@example.com, b@example.com"
    assert message["Subject"] == MAIL.subject
    assert "signature=abc" in message.get_payload()  # readable, not quoted-printable


def test_a_resend_is_idempotent_where_the_backend_can_tell(
    notifier: Notifier, notifier_setup: NotifierSetup
) -> None:
    first = notifier.send(MAIL)
    again = notifier.send(MAIL)
    delivered = notifier_setup.delivered()
    # Every copy carries the one Message-ID, so a receiver can drop a repeat the backend sent.
    assert {m["Message-ID"] for m in delivered} == {MAIL.message_id}
    if notifier_setup.deduplicates:
        assert again == first
        assert len(delivered) == 1
    else:  # declared honestly: a backend that cannot tell delivers both copies
        assert len(delivered) == 2


def test_forget_drops_what_the_notifier_keeps_of_a_message(
    notifier: Notifier, notifier_setup: NotifierSetup
) -> None:
    notifier.send(MAIL)
    kept = notifier_setup.deduplicates  # a backend that keeps copies (the outbox) can tell
    assert notifier.forget(MAIL.message_id) is kept
    assert notifier.forget(MAIL.message_id) is False  # idempotent
    if kept:
        assert notifier_setup.delivered() == []
    assert notifier.forget("<never-sent@mrbatch>") is False


def test_a_refusing_destination_raises_unavailable(
    notifier: Notifier, notifier_setup: NotifierSetup
) -> None:
    if notifier_setup.refuse_from_now_on is None:
        pytest.skip(f"{_name(notifier_setup)} lacks capability refuse_from_now_on: no server")
    notifier_setup.refuse_from_now_on()
    with pytest.raises(UnavailableError):
        notifier.send(MAIL)
    assert notifier_setup.delivered() == []


def test_an_unreachable_destination_raises_unavailable(
    notifier: Notifier, notifier_setup: NotifierSetup
) -> None:
    if notifier_setup.make_unreachable is None:
        pytest.skip(f"{_name(notifier_setup)} lacks capability make_unreachable: no server")
    notifier_setup.make_unreachable()
    with pytest.raises(UnavailableError):
        notifier.send(MAIL)


# --------------------------------------------------------------------------- one backend each


def test_outbox_returns_the_one_file_named_after_the_message_id(tmp_path: Path) -> None:
    with NOTIFIERS["outbox"](tmp_path) as setup:
        where = backends.open_notifier(setup.workspace).send(MAIL)
        assert [str(p) for p in setup.workspace.outbox_dir.iterdir()] == [where]
        assert Path(where).name == "run-1_mrbatch.eml"
        assert message_from_bytes(Path(where).read_bytes())["Message-ID"] == MAIL.message_id


def test_smtp_names_the_server_that_did_not_accept(tmp_path: Path) -> None:
    with SmtpServer() as server:
        notifier = backends.open_notifier(smtp_workspace(tmp_path, server.port))
        server.handler.failing = True
        with pytest.raises(UnavailableError, match=f"127.0.0.1:{server.port} did not accept"):
            notifier.send(MAIL)
        assert server.handler.refused == 1  # the server saw the message and refused it


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        (MAIL.subject, MAIL.body),  # ASCII: the legacy API's fast path
        ("mrbatch: " + "input/a-long-name/" * 8 + "x.csv processed (10 rows)", MAIL.body),
        ("mrbatch: input/café.csv processed", "Téléchargez : http://x/y?signature=abc\n"),
    ],
)
def test_a_rendered_mail_reads_back_as_written(subject: str, body: str) -> None:
    mail = Mail(MAIL.message_id, MAIL.sender, MAIL.to, subject, body)
    message = message_from_bytes(bytes(render(mail)), policy=policy.default)
    assert message["Subject"] == subject and message["Message-ID"] == MAIL.message_id
    assert message["To"] == "a@example.com, b@example.com" and message["Date"]
    assert message.get_content() == body
    assert max(len(line) for line in bytes(render(mail)).splitlines()) <= 998


def test_a_line_break_in_a_header_is_refused() -> None:
    mail = Mail(MAIL.message_id, MAIL.sender, MAIL.to, "x\r\nBcc: evil@example.com", MAIL.body)
    with pytest.raises(ValueError):
        render(mail)
