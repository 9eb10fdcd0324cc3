"""The checks behind ``mrbatch verify`` (see :mod:`.verify`): runs, outputs, rows, mails,
fencing and convergence, read from a snapshot of every region."""

from __future__ import annotations

import time
from collections import Counter

from ..config.workspace import Workspace
from ..errors import MrbatchError, NotFoundError
from ..maintain.gc import retention_window
from ..model.keys import OUTPUT, VERSIONS, is_chunk_intermediate, run_id_for, version_input_key
from ..model.records import FileRun, RunStatus
from .evidence import (
    accepted_versions,
    epoch_owners,
    mail_problem,
    merged_runs,
    object_state,
    outbox_message_ids,
    published_kind,
    read_region,
    record_state,
)
from .recount import recount
from .verdicts import DIVERGED, DUPLICATED, LOST, MAX_DIVERGED, Verdict, VerifyReport, Violation

__all__ = ["Checker"]


class Checker:
    def __init__(self, ws: Workspace, *, deep: bool, final: bool) -> None:
        self.ws = ws
        self.deep = deep
        self.final = final
        self.violations: list[Violation] = []
        self.notes: list[str] = []
        self.regions = [read_region(ws, name) for name in ws.regions]
        self.reachable = [r for r in self.regions if r.error is None]
        for region in self.regions:
            if region.error:
                self.notes.append(f"{region.name} cannot be read: {region.error}")
        if not self.reachable:
            raise MrbatchError(
                "no region's bucket and state table can be read",
                hint="check `mrbatch status`; verify needs at least one region",
            )
        self.runs = merged_runs(self.reachable)
        self.owners, notes = epoch_owners(ws)
        self.notes.extend(notes)
        self.mails, note = outbox_message_ids(ws)
        self.check_mail = note is None
        if note:
            self.notes.append(note)
        self.diverged_keys: set[str] = set()

    def violate(
        self, verdict: Verdict | None, key: str, region: str, problem: str, kind: str, check: str
    ) -> None:
        self.violations.append(Violation(key, region, problem, kind, check))
        if verdict is not None and kind in (LOST, DUPLICATED):
            verdict.demote(kind)

    # ------------------------------------------------------------------ inputs
    def accepted(self) -> dict[str, tuple[str, str]]:
        return accepted_versions(self.reachable, self.runs)

    def _blob(self, key: str | None, sha256: str | None) -> bytes | None:
        """The bytes of ``key`` if some reachable region holds them with ``sha256``."""
        if not key or not sha256:
            return None
        for region in self.reachable:
            assert region.store is not None
            info = region.objects.get(key)
            try:
                if info is not None and info.sha256 == sha256:
                    return region.store.get(key, version=info.version)
                if info is None and key.startswith(VERSIONS):
                    continue  # a version's own keys are immutable: absent means not here
                return region.store.get(key, version=sha256)
            except NotFoundError:
                continue
            except MrbatchError:
                continue  # became unreachable meanwhile: try the next region
        return None

    def _has(self, key: str | None, sha256: str | None) -> bool:
        """Is ``key`` with these bytes readable in a reachable region (without reading it)?"""
        if not key or not sha256:
            return False
        for region in self.reachable:
            assert region.store is not None
            info = region.objects.get(key)
            if info is None and key.startswith(VERSIONS):
                continue  # immutable: absent from the snapshot means not here
            try:
                if info is not None and info.sha256 == sha256:
                    region.store.open(key, version=info.version).close()
                else:
                    region.store.open(key, version=sha256).close()
            except MrbatchError:
                continue  # not there, or became unreachable meanwhile: try the next region
            return True
        return False

    def input_held(self, key: str, sha256: str) -> bool:
        if len(self.reachable) < len(self.regions):
            return True  # an unreachable region may hold it: it is not lost, only unknown
        kept = version_input_key(run_id_for(key, sha256), key)
        return self._has(kept, sha256) or self._has(key, sha256)

    def check_input(self, run_id: str, key: str, sha256: str) -> Verdict:
        verdict = Verdict(key=key, sha256=sha256, run_id=run_id)
        run = self.runs.get(run_id)
        if run is None:
            if self.final or not self.input_held(key, sha256):
                self.violate(
                    verdict,
                    key,
                    "-",
                    "accepted, but no region has a run for it"
                    + ("" if self.input_held(key, sha256) else " nor its input"),
                    LOST,
                    "run",
                )
            else:
                verdict.demote("pending")
                verdict.notes.append("not claimed yet")
            return verdict
        verdict.status, verdict.region = str(run.status), run.region
        verdict.rows = {"in": run.rows_in, "out": run.rows_out, "rejected": run.rows_rejected}
        if not run.status.terminal:
            movable = self.input_held(key, sha256) or run.status in (
                RunStatus.MERGED,
                RunStatus.PUBLISHED,
            )
            if self.final or not movable:
                self.violate(
                    verdict,
                    key,
                    run.region,
                    f"run {run_id} stuck at {run.status} in epoch {run.epoch}"
                    + ("" if movable else "; its input is in no region"),
                    LOST,
                    "run",
                )
            else:
                verdict.demote("pending")
            return verdict
        if run.redriven or len({(h.get("region"), h.get("epoch")) for h in run.history}) > 1:
            verdict.demote("recovered")
        if run.status is RunStatus.FAILED:
            if not (run.reason or "").strip():
                self.violate(verdict, key, run.region, "FAILED without a reason", LOST, "run")
            return verdict
        self.check_completed(run, verdict)
        return verdict

    def check_completed(self, run: FileRun, verdict: Verdict) -> None:
        key = run.input_key
        count = self.mails.get(f"<{run.run_id}@mrbatch>", 0)
        if self.check_mail:
            if count == 0:
                self.violate(
                    verdict, key, run.region, "COMPLETED but no mail in the outbox", LOST, "mail"
                )
            elif count > 1:
                self.violate(
                    verdict, key, run.region, f"{count} mails for one run", DUPLICATED, "mail"
                )
        if run.webhook_url and not run.webhook_sent_at:
            self.violate(
                verdict, key, run.region, "COMPLETED but its webhook is not recorded", LOST, "mail"
            )
        for entry in run.history:
            if entry.get("status") not in ("PUBLISHED", "COMPLETED"):
                continue
            epoch, region = int(entry.get("epoch", 0)), str(entry.get("region"))
            owner = self.owners.get(epoch)
            if owner is not None and owner != region:
                self.violate(
                    verdict,
                    key,
                    region,
                    f"{entry['status']} by {region} in epoch {epoch}, whose active"
                    f" region was {owner}",
                    DUPLICATED,
                    "fencing",
                )
        output_key = run.result_key or run.output_key
        rejected_key = run.result_rejected_key or run.rejected_key
        has_output = self._has(output_key, run.output_sha256)
        has_rejected = self._has(rejected_key, run.merged_rejected_sha256)
        if not (has_output and has_rejected):
            if time.time() - run.updated_at > retention_window(self.ws):
                # Past the retention window garbage collection removes a run's objects (then
                # its records): what is left of it is not a loss.
                verdict.notes.append("past the retention window: being collected")
                return
            what = "output" if not has_output else "rejected rows"
            self.violate(
                verdict,
                key,
                run.region,
                f"COMPLETED, but its published {what} is in no region",
                LOST,
                "output",
            )
            return
        if not self.deep:
            return
        data = self._blob(run.source()[0], run.input_sha256)
        output = self._blob(output_key, run.output_sha256)
        rejected = self._blob(rejected_key, run.merged_rejected_sha256)
        if data is None or output is None or rejected is None:
            verdict.notes.append("recount skipped: an object went missing while verifying")
            return
        spec = self.ws.config.spec_for_run(run.pipeline, run.input_key)
        plain = spec is None or not (spec.transforms or spec.columns or spec.delimiter != ",")
        counted = recount(
            data,
            output,
            rejected,
            input_format=run.input_format,
            quote=spec.quote if spec is not None else '"',
            order=plain,
        )
        verdict.order_checked = counted.order_checked
        if counted.note:
            verdict.notes.append(counted.note)
        recorded = (run.rows_in, run.rows_out, run.rows_rejected)
        if recorded != (counted.rows_in, counted.rows_out, counted.rows_rejected):
            kind = LOST if (run.rows_in or 0) > counted.rows_in else DUPLICATED
            if counted.rows_out + counted.rows_rejected < counted.rows_in:
                kind = LOST
            self.violate(
                verdict,
                key,
                run.region,
                f"recorded in/out/rejected {recorded} but the objects hold"
                f" {(counted.rows_in, counted.rows_out, counted.rows_rejected)}",
                kind,
                "conservation",
            )
        for kind, text in counted.problems:
            mapped = LOST if kind == "order" else kind  # altered rows: the right output is lost
            self.violate(
                verdict,
                key,
                run.region,
                text,
                mapped,
                "order" if kind == "order" else "conservation",
            )

    # ------------------------------------------------------------------ published objects
    def check_published(self, verdicts: dict[str, Verdict]) -> None:
        """Every published object (output/, rejected/ and each version's own results): written
        in an epoch by that epoch's active region, and the bytes its run recorded; output/<p>
        holds the result of the newest accepted version that was published."""
        newest: dict[str, FileRun] = {}
        for run in self.runs.values():
            # A run that published and then FAILED (its mail could not be sent) published too.
            published = run.output_key and (
                run.result_key or any(h.get("status") == "PUBLISHED" for h in run.history)
            )
            if published and run.output_key:
                shown = newest.get(run.output_key)
                if shown is None or run.order > shown.order:
                    newest[run.output_key] = run
        for region in self.reachable:
            for info in region.objects.values():
                kind = published_kind(info.key)
                if kind is None:
                    continue
                owner_run = self.runs.get(info.meta.get("run_id", ""))
                verdict = verdicts.get(owner_run.run_id) if owner_run else None
                owner = self.owners.get(info.epoch)
                if info.epoch == 0 or (owner is not None and owner != info.origin):
                    self.violate(
                        verdict,
                        info.key,
                        region.name,
                        f"written by {info.origin} in epoch {info.epoch}, whose active"
                        f" region was {owner or 'nobody'}",
                        DUPLICATED,
                        "fencing",
                    )
                if owner_run is None:
                    self.violate(
                        None,
                        info.key,
                        region.name,
                        f"published by run {info.meta.get('run_id')!r}, which no region knows",
                        DUPLICATED,
                        "output",
                    )
                    continue
                want = (
                    owner_run.output_sha256 if kind == OUTPUT else owner_run.merged_rejected_sha256
                )
                if want and info.sha256 != want and owner_run.status is not RunStatus.FAILED:
                    self.violate(
                        verdict,
                        info.key,
                        region.name,
                        f"holds bytes {info.sha256[:12]} (epoch {info.epoch}) but run"
                        f" {owner_run.run_id} published {want[:12]}: a second, different"
                        " output",
                        DUPLICATED,
                        "output",
                    )
                shown = newest.get(info.key)
                if (
                    info.key.startswith(OUTPUT)
                    and shown is not None
                    and shown.run_id != owner_run.run_id
                    and info.key not in self.diverged_keys
                ):
                    self.violate(
                        verdict,
                        info.key,
                        region.name,
                        f"holds run {owner_run.run_id}'s output, not that of run"
                        f" {shown.run_id}, the newest accepted version published",
                        DUPLICATED,
                        "output",
                    )
        for message_id, count in self.mails.items():
            problem = mail_problem(message_id, count, self.runs)
            if problem:
                self.violate(None, message_id, "-", problem, DUPLICATED, "mail")

    # ------------------------------------------------------------------ convergence
    def check_convergence(self) -> None:
        if len(self.reachable) < len(self.regions):
            self.notes.append("convergence not checked: not every region can be read")
            return
        listed: Counter[str] = Counter()

        def differ(key: str, region: str, problem: str) -> None:
            self.diverged_keys.add(key)
            listed[region] += 1
            if listed[region] <= MAX_DIVERGED:
                self.violations.append(Violation(key, region, problem, DIVERGED, "convergence"))

        first, *others = self.reachable
        for other in others:
            for a, b in ((first, other), (other, first)):
                for key, info in a.objects.items():
                    if is_chunk_intermediate(key):  # not replicated (runtime.replication)
                        continue
                    theirs = b.objects.get(key)
                    if theirs is None:
                        differ(key, b.name, f"object missing in {b.name} (present in {a.name})")
                    elif a is first and object_state(theirs) != object_state(info):
                        differ(
                            key,
                            b.name,
                            f"object differs: {a.name} has {info.sha256[:12]} (epoch"
                            f" {info.epoch}, by {info.origin}), {b.name} has"
                            f" {theirs.sha256[:12]} (epoch {theirs.epoch}, by {theirs.origin})",
                        )
                for pk, record in a.records.items():
                    theirs_r = b.records.get(pk)
                    if theirs_r is None:
                        differ(pk, b.name, f"record missing in {b.name} (present in {a.name})")
                    elif a is first and record_state(theirs_r) != record_state(record):
                        differ(
                            pk,
                            b.name,
                            f"record differs: {a.name} has version"
                            f" {record.version} epoch {record.epoch}, {b.name} has version"
                            f" {theirs_r.version} epoch {theirs_r.epoch}",
                        )
        for region, n in listed.items():
            if n > MAX_DIVERGED:
                self.violations.append(
                    Violation(
                        "*",
                        region,
                        f"{n - MAX_DIVERGED} more differences not listed",
                        DIVERGED,
                        "convergence",
                    )
                )

    def run(self) -> VerifyReport:
        started = time.monotonic()
        self.check_convergence()
        verdicts: dict[str, Verdict] = {}
        for run_id, (key, sha256) in sorted(self.accepted().items(), key=lambda kv: kv[1]):
            verdicts[run_id] = self.check_input(run_id, key, sha256)
        self.check_published(verdicts)
        return VerifyReport(
            violations=self.violations,
            inputs=list(verdicts.values()),
            notes=self.notes,
            epochs=self.owners,
            seconds=time.monotonic() - started,
        )
