"""The last two steps of a run: PUBLISH (the version's own results, then output/<p> unless a
newer version is already shown there) and NOTIFY (one mail per run, linking that version's own
output), each fenced by the control plane: ``MERGED`` -> ``PUBLISHED`` -> ``COMPLETED``.
A FAILED run's own mail is sent by :mod:`.failmail`.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import backends
from ..access.links import presign
from ..errors import MrbatchError, UnavailableError
from ..model.keys import (
    output_key_for,
    rejected_key_for,
    version_output_key,
    version_rejected_key,
)
from ..model.records import (
    FileRun,
    RunStatus,
)
from ..ports import (
    Mail,
    ObjectInfo,
    Routing,
    WebhookSender,
)
from ..retry import Backoff
from .driver import Progress, RunDriver
from .takeover import present

__all__ = ["PublishStage"]

log = logging.getLogger("mrbatch.orchestrator")


class PublishStage(RunDriver):
    def _publish(self, progress: Progress, routing: Routing) -> None:
        """The version's own results first (versions/<run-id>/...), then output/<p> and
        rejected/<p>, unless a version accepted after this one is already published there."""
        run = progress.run
        if not self._confirm(progress, "publish"):
            return
        meta = _published_meta(run)
        assert run.merged_key and run.merged_rejected_key
        newer = _newer_shown(self.store.head(output_key_for(run.input_key)), run)
        # PUBLISHED is recorded only once every copy is on stable storage. When output/<p> is
        # written too, its durable copies (same bytes, same store) also make these two
        # durable: a store's durable write covers its earlier writes (ports.ObjectStore).
        # That halves the fsyncs of the region's busiest step with many small files.
        result = self.store.copy(
            run.merged_key,
            version_output_key(run.run_id, run.input_key),
            version=run.merged_sha256,
            meta=meta,
            epoch=run.epoch,
            durable=newer is not None,
        )
        result_rejected = self.store.copy(
            run.merged_rejected_key,
            version_rejected_key(run.run_id, run.input_key),
            version=run.merged_rejected_sha256,
            meta=meta,
            epoch=run.epoch,
            durable=newer is not None,
        )
        if newer is None:
            self._publish_latest(run, run.epoch)
        else:
            log.info(
                "run %s: %s keeps run %s's result (a version accepted later); this version's"
                " result is at %s",
                run.run_id,
                output_key_for(run.input_key),
                newer,
                result.key,
            )
        self.faults.crash_point("after-publish-copy", self.region)
        run.output_key, run.output_sha256 = output_key_for(run.input_key), result.sha256
        run.rejected_key = rejected_key_for(run.input_key)
        run.result_key, run.result_rejected_key = result.key, result_rejected.key
        self._transition(progress, RunStatus.PUBLISHED)

    def _publish_latest(self, run: FileRun, epoch: int) -> None:
        """Copy ``run``'s results to output/<p> and rejected/<p> (fenced by the caller)."""
        meta = _published_meta(run)
        self.store.copy(
            run.merged_key or "",
            output_key_for(run.input_key),
            version=run.merged_sha256,
            meta=meta,
            epoch=epoch,
            durable=True,
        )
        self.store.copy(
            run.merged_rejected_key or "",
            rejected_key_for(run.input_key),
            version=run.merged_rejected_sha256,
            meta=meta,
            epoch=epoch,
            durable=True,
        )

    def show_newest(self, run: FileRun, routing: Routing) -> bool:
        """Make output/<p> show ``run``'s result if it shows an older version's (or nothing):
        the repair for a newer version published elsewhere whose copy of output/<p> lost to
        an older version's written in a later epoch. False when ``run``'s result has not
        arrived here yet (try again later); True when done or nothing to do."""
        if run.result_key is None or run.merged_sha256 is None:
            return True
        shown = self.store.head(output_key_for(run.input_key))
        if shown is not None and _newer_shown(shown, run) is not None:
            return True
        if shown is not None and shown.meta.get("run_id") == run.run_id:
            return True
        if not (
            present(self.store, run.result_key) and present(self.store, run.result_rejected_key)
        ):
            return False
        if not self.control.confirm(self.region, routing.epoch):
            return True  # not ours to write; the active region will
        result = self.store.head(run.result_key)
        rejected = self.store.head(run.result_rejected_key or "")
        assert result is not None and rejected is not None
        meta = _published_meta(run)
        self.store.copy(
            result.key,
            output_key_for(run.input_key),
            version=result.version,
            meta=meta,
            epoch=routing.epoch,
            durable=True,
        )
        self.store.copy(
            rejected.key,
            rejected_key_for(run.input_key),
            version=rejected.version,
            meta=meta,
            epoch=routing.epoch,
            durable=True,
        )
        log.info(
            "%s shows run %s's result again (the newest accepted version)",
            output_key_for(run.input_key),
            run.run_id,
        )
        return True

    def mail_for(self, run: FileRun) -> Mail:
        notify = self.ws.config.notify
        assert run.output_key
        result_key = run.result_key or run.output_key
        link = presign(
            self.ws.signing_key,
            self.ws.gateway_url,
            result_key,
            expires_in=self.ws.config.gateway.link_expiry,
            now=self.clock(),
        )
        minutes = int(self.ws.config.gateway.link_expiry // 60)
        body = (
            f"mrbatch processed {run.input_key}.\n\n"
            f"Rows in:       {run.rows_in}\n"
            f"Rows out:      {run.rows_out}\n"
            f"Rows rejected: {run.rows_rejected}\n\n"
            f"Download this version's output within {minutes} minutes:\n{link}\n\n"
            f"It is kept at {result_key}; {run.output_key} shows the newest accepted"
            f" version of {run.input_key}.\n"
            f"Rejected rows: {run.result_rejected_key or run.rejected_key}"
            f" (`mrbatch errors {run.run_id}`)\n"
            f"Run {run.run_id}, processed in {run.region} (epoch {run.epoch}).\n"
        )
        direct = self._bucket_link(result_key)
        if direct:
            body += f"\nOr straight from the bucket in {self.region}:\n{direct}\n"
        return Mail(
            message_id=f"<{run.run_id}@mrbatch>",
            sender=notify.sender,
            to=tuple(notify.to),
            subject=f"mrbatch: {run.input_key} processed ({run.rows_out} rows,"
            f" {run.rows_rejected} rejected)",
            body=body,
        )

    def _bucket_link(self, key: str) -> str | None:
        """The object store's own presigned URL of ``key`` (S3's), when ``s3.presign_mail``
        asks for it and the store can make one; None otherwise, or when it cannot now."""
        make = getattr(self.store, "presigned_url", None)
        if not self.ws.config.s3.presign_mail or make is None:
            return None
        try:
            return str(make(key, self.ws.config.gateway.link_expiry))
        except MrbatchError as exc:
            log.warning("no bucket link for %s: %s", key, exc)
            return None

    def _notify(self, progress: Progress, routing: Routing) -> None:
        run = progress.run
        if run.mail_sent_at is not None and run.webhook_url and run.webhook_sent_at is None:
            self._post_webhook(progress)
            return
        if run.mail_sent_at is not None:  # delivered before a crash: only the record is left
            self._complete(progress)
            return
        if progress.future is None:
            if not self._confirm(progress, "notify"):
                return
            mail = self.mail_for(run)
            run.mail_id = mail.message_id
            progress.future = self._mailer.submit(self.notifier.send, mail)
            return
        if not progress.future.done():
            return
        future, progress.future = progress.future, None
        try:
            future.result()
        except Exception as exc:
            run.mail_attempts += 1
            run.mail_error = str(exc)
            attempts = self.ws.config.notify.attempts
            if run.mail_attempts >= attempts:
                run.reason = (
                    f"the output is published at {run.output_key}, but the completion mail"
                    f" could not be sent after {attempts} attempts: {exc}; fix the mail"
                    f" server, then `mrbatch redrive {run.input_key}`"
                )
                self._fail(progress, run.reason)
                return
            if self._save(progress):  # the error shows in status while we retry
                delay = self.mail_backoff.delay(run.mail_attempts)
                progress.retry_at = self.clock() + delay
                log.warning("run %s: mail not sent (%s); retry in %.1fs", run.run_id, exc, delay)
            return
        self.faults.crash_point("after-mail-sent", self.region)
        run.mail_sent_at = self.clock()
        run.mail_error = None
        if run.webhook_url and run.webhook_sent_at is None:
            self._save(progress)  # the mail is recorded delivered; the webhook is next
            return
        self._complete(progress)

    def _complete(self, progress: Progress) -> None:
        run = progress.run
        if self._transition(progress, RunStatus.COMPLETED):
            self.stats["executions_succeeded"] += 1
            self.stats["files_processed"] += 1
            self.stats["rows_processed"] += run.rows_in or 0
            self.stats["rows_rejected"] += run.rows_rejected or 0
            log.info(
                "run %s (%s) COMPLETED: %s rows out, %s rejected",
                run.run_id,
                run.input_key,
                run.rows_out,
                run.rows_rejected,
            )

    def webhook_body(self, run: FileRun) -> dict[str, Any]:
        result_key = run.result_key or run.output_key or ""
        link = presign(
            self.ws.signing_key,
            self.ws.gateway_url,
            result_key,
            expires_in=self.ws.config.gateway.link_expiry,
            now=self.clock(),
        )
        return {
            "run_id": run.run_id,
            "pipeline": run.pipeline,
            "input_key": run.input_key,
            "input_sha256": run.input_sha256,
            "status": "COMPLETED",
            "rows_in": run.rows_in,
            "rows_out": run.rows_out,
            "rows_rejected": run.rows_rejected,
            "output_key": run.output_key,
            "result_key": result_key,
            "rejected_key": run.result_rejected_key or run.rejected_key,
            "link": link,
            "region": run.region,
            "epoch": run.epoch,
        }

    def _post_webhook(self, progress: Progress) -> None:
        """The pipeline's webhook, once the mail is recorded; retried with backoff like the
        mail; COMPLETED only once it is recorded delivered."""
        run = progress.run
        spec = self._spec(progress)
        hook = spec.webhook if spec is not None else None
        if progress.future is None:
            if not self._confirm(progress, "webhook"):
                return
            if hook is None or not run.webhook_url:
                run.webhook_url = None  # no longer declared: nothing to deliver
                self._complete(progress)
                return
            progress.future = self._mailer.submit(
                self._webhooks().post,
                run.webhook_url,
                self.webhook_body(run),
                idempotency_key=run.run_id,
                headers=dict(hook.headers),
                timeout=hook.timeout,
            )
            return
        if not progress.future.done():
            return
        future, progress.future = progress.future, None
        try:
            future.result()
        except Exception as exc:
            run.webhook_attempts += 1
            run.webhook_error = str(exc)
            attempts = hook.attempts if hook is not None else 1
            if run.webhook_attempts >= attempts or not isinstance(exc, UnavailableError):
                self._fail(
                    progress,
                    f"the output is published at {run.output_key} and the mail sent, but the"
                    f" webhook could not be delivered after {run.webhook_attempts}"
                    f" attempt(s): {exc}; fix the receiver, then `mrbatch redrive"
                    f" {run.input_key}`",
                )
                return
            if self._save(progress):
                pause = hook.retry_backoff if hook is not None else 1.0
                delay = Backoff(base=pause, cap=60.0).delay(run.webhook_attempts)
                progress.retry_at = self.clock() + delay
                log.warning(
                    "run %s: webhook not delivered (%s); retry in %.1fs", run.run_id, exc, delay
                )
            return
        self.faults.crash_point("after-webhook-sent", self.region)
        run.webhook_sent_at = self.clock()
        run.webhook_error = None
        self._complete(progress)

    def _webhooks(self) -> WebhookSender:
        sender = getattr(self, "_webhook_sender", None)
        if sender is None:
            sender = self._webhook_sender = backends.open_webhook(self.ws)
        return sender

    def mail_retrying(self) -> list[dict[str, Any]]:
        """Runs whose completion mail failed and is being retried (shown by `mrbatch status`)."""
        return [
            {
                "run_id": p.run.run_id,
                "input_key": p.run.input_key,
                "attempts": p.run.mail_attempts,
                "error": p.run.mail_error,
            }
            for p in self.runs.values()
            if p.run.status is RunStatus.PUBLISHED and p.run.mail_error
        ]


def _published_meta(run: FileRun) -> dict[str, str]:
    """What a published object says about the version it holds (and where it stands in the
    acceptance order of its key)."""
    return {
        "run_id": run.run_id,
        "input_sha256": run.input_sha256,
        "accepted_at": repr(run.accepted_at),
        "accepted_region": run.accepted_region,
    }


def _newer_shown(shown: ObjectInfo | None, run: FileRun) -> str | None:
    """The run id of the version ``shown`` (output/<p>) holds, if it was accepted after
    ``run``'s version; None when ``run`` may replace it."""
    if shown is None or shown.meta.get("run_id") == run.run_id:
        return None
    try:
        at = float(shown.meta.get("accepted_at", "0"))
    except ValueError:
        at = 0.0
    order = (at, shown.meta.get("accepted_region", ""), shown.meta.get("run_id", ""))
    return order[2] if order > run.order else None
