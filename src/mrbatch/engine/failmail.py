"""Telling a FAILED run's owners: a mail of its own (``<run-id.failed.N@mrbatch>``, N the run's
round, so a later completion's ``<run-id@mrbatch>`` never shares its id) with the reason, the
counts and a link to the rejected rows.

It is best effort, and recorded: ``_fail`` records the mail as due on the run in the same write
that makes it FAILED (``failure_mail``); this stage sends it (fenced, like every mail), retries
with backoff up to ``notify.attempts`` and records the outcome (attempts, sent_at, error). A
FAILED run whose mail cannot be sent is FAILED all the same. A mail recorded as due but not sent
(a crash, a failover) is sent by the active region when it next looks at the run.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..access.links import presign
from ..errors import ConflictError, MrbatchError, NotFoundError
from ..model.records import FileRun, RunStatus, failure_message_id, run_pk
from ..ports import Mail
from .driver import RunDriver

__all__ = ["FailureMail", "FailureMailStage"]

log = logging.getLogger("mrbatch.orchestrator")


@dataclass
class FailureMail:
    """One failure mail on its way (see the module's docstring)."""

    run: FileRun
    epoch: int  # the epoch in which this region must be ACTIVE to send it
    future: Future[Any] | None = None
    retry_at: float = 0.0
    attempts: int = 0
    error: str | None = None
    sent_at: float | None = None


class FailureMailStage(RunDriver):
    def wants_failure_mail(self, run: FileRun) -> bool:
        """A FAILED run whose failure mail is recorded as due and not sent or given up."""
        mail = run.failure_mail
        return (
            run.status is RunStatus.FAILED
            and mail is not None
            and mail.get("sent_at") is None
            and int(mail.get("attempts", 0)) < self.ws.config.notify.attempts
            and run.run_id not in self.failure_mails
        )

    def queue_failure_mail(self, run: FileRun, version: int) -> None:
        if self.epoch is not None and self.wants_failure_mail(run):
            attempts = int((run.failure_mail or {}).get("attempts", 0))
            self.failure_mails[run.run_id] = FailureMail(run, self.epoch, attempts=attempts)

    def failure_mail_for(self, run: FileRun) -> Mail:
        notify = self.ws.config.notify
        gateway = self.ws.config.gateway
        counts = run.rows_in is not None and run.rows_rejected is not None
        lines = [
            f"mrbatch could not process {run.input_key} (sha256 {run.input_sha256[:12]}).",
            "",
            f"Reason: {run.reason}",
            "",
        ]
        if counts:
            lines += [
                f"Rows in:       {run.rows_in}",
                f"Rows out:      {run.rows_out}",
                f"Rows rejected: {run.rows_rejected}",
                "",
            ]
        rejected = run.result_rejected_key or run.merged_rejected_key
        if rejected and run.rows_rejected:
            link = presign(
                self.ws.signing_key,
                self.ws.gateway_url,
                rejected,
                expires_in=gateway.link_expiry,
                now=self.clock(),
            )
            lines += [
                f"Download the {run.rows_rejected} rejected row(s) within"
                f" {int(gateway.link_expiry // 60)} minutes:",
                link,
                f"(or `mrbatch errors {run.run_id[:12]}`)",
                "",
            ]
        else:
            lines += ["No rejected rows were kept for this run.", ""]
        lines += [
            "Fix the cause, then run it again with"
            f" `mrbatch redrive {run.run_id[:12]}` (or upload corrected bytes).",
            f"Run {run.run_id}, failed in {run.region} (epoch {run.epoch}).",
        ]
        summary = (
            f" ({run.rows_rejected} of {run.rows_in} rows rejected)"
            if counts and run.rows_rejected
            else ""
        )
        return Mail(
            message_id=failure_message_id(run.run_id, run.redriven),
            sender=notify.sender,
            to=tuple(notify.to),
            subject=f"mrbatch: {run.input_key} FAILED{summary}",
            body="\n".join(lines) + "\n",
        )

    def _failure_mails(self) -> None:
        """Advance every failure mail: send (fenced), retry with backoff, record the outcome."""
        now = self.clock()
        for run_id, pending in list(self.failure_mails.items()):
            if pending.future is None and pending.sent_at is None and pending.error is None:
                if now >= pending.retry_at:
                    self._send_failure_mail(pending)
                continue
            if pending.future is not None:
                if not pending.future.done():
                    continue
                future, pending.future = pending.future, None
                try:
                    future.result()
                    pending.sent_at, pending.error = self.clock(), None
                except Exception as exc:
                    pending.attempts += 1
                    if pending.attempts < self.ws.config.notify.attempts:
                        pending.retry_at = now + self.mail_backoff.delay(pending.attempts)
                        log.warning(
                            "run %s: failure mail not sent (%s); retry in %.1fs",
                            run_id,
                            exc,
                            pending.retry_at - now,
                        )
                        continue
                    pending.error = str(exc)
                    log.error("run %s: failure mail not sent, given up: %s", run_id, exc)
            if self._record_failure_mail(pending):
                self.failure_mails.pop(run_id, None)

    def _send_failure_mail(self, pending: FailureMail) -> None:
        run_id = pending.run.run_id
        try:
            record = self.table.get(run_pk(run_id))
            fresh = FileRun.from_record(record) if record is not None else None
            if (
                fresh is None
                or fresh.status is not RunStatus.FAILED
                or (fresh.redriven != pending.run.redriven)
            ):
                self.failure_mails.pop(run_id, None)  # re-driven or collected meanwhile
                return
            if not self.control.confirm(self.region, pending.epoch):
                log.warning("run %s: failure mail not sent: %s is not ACTIVE", run_id, self.region)
                self.failure_mails.pop(run_id, None)  # the active region sends it
                return
        except MrbatchError as exc:
            pending.retry_at = self.clock() + self.mail_backoff.delay(1)
            log.warning("run %s: failure mail waits: %s", run_id, exc)
            return
        pending.run = fresh
        pending.future = self._mailer.submit(self.notifier.send, self.failure_mail_for(fresh))

    def _record_failure_mail(self, pending: FailureMail) -> bool:
        """Record the mail's outcome on the run; False to try again on the next pass."""
        pk = run_pk(pending.run.run_id)
        try:
            record = self.table.get(pk)
            if record is None:
                return True
            run = FileRun.from_record(record)
            if run.status is not RunStatus.FAILED or run.redriven != pending.run.redriven:
                return True  # re-driven meanwhile: the mail was about the failure before
            run.failure_mail = {
                **(run.failure_mail or {}),
                "message_id": failure_message_id(run.run_id, run.redriven),
                "round": run.redriven,
                "attempts": pending.attempts + (1 if pending.sent_at else 0),
                "sent_at": pending.sent_at,
                "error": pending.error,
            }
            self.table.update(
                pk, run.to_body(), expected_version=record.version, epoch=record.epoch
            )
        except (ConflictError, NotFoundError):
            return False
        except MrbatchError as exc:
            log.warning(
                "run %s: failure mail outcome not recorded yet: %s", pending.run.run_id, exc
            )
            return False
        return True
