"""``mrbatch verify``: the invariant checker. Like a Jepsen checker it reads the history the
system left behind (the objects in every bucket, every state replica, the outbox, the epoch log
and the ledger of accepted uploads) instead of trusting what the records claim.

Every accepted input version (key + content hash) is sorted into exactly one class:

``ok``          one terminal run (COMPLETED, or FAILED with a reason), everything checks out
``recovered``   the same, for a run re-driven or taken over after a fault
``pending``     no terminal run yet, and it can still get one (its input is held somewhere)
``lost``        no terminal run and nothing can produce one, or a completed run whose output,
                rows or mail went missing
``duplicated``  a second, different output, a second mail, extra rows, or a publish by a
                region that was not the active region of its epoch

Besides inputs, the buckets and state replicas of all regions are compared: every difference
is a ``diverged`` violation. Each violation names ``key``, ``region`` and the ``problem``; the
report's ``ok`` is true only when there is none (the checks are in :mod:`.checks`, the report's
types in :mod:`.verdicts`). Verification of a deployment in motion
reports pending work and divergence that replication has not closed yet: ``wait`` polls until
both are gone (or the bound passes) before the final, deep check.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config.workspace import Workspace
from .checks import Checker
from .verdicts import CLASSES, Verdict, VerifyReport, Violation

__all__ = ["CLASSES", "Verdict", "VerifyReport", "Violation", "verify"]


def _settled(report: VerifyReport) -> bool:
    return (
        report.counts["pending"] == 0
        and report.diverged == 0
        and not any("cannot be read" in n for n in report.notes)
    )


def verify(
    ws: Workspace,
    *,
    deep: bool = True,
    final: bool = False,
    wait: float = 0.0,
    poll: float = 0.5,
    echo: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Check the invariants now; with ``wait`` > 0, first poll (cheaply) until nothing is
    pending and the regions have converged, or the bound passes. ``deep`` recounts every
    completed run from its objects; ``final`` counts work still pending as lost (use it when
    the system has been given all the time it needs)."""
    started = time.monotonic()
    deadline = started + wait
    while wait > 0:
        quick = Checker(ws, deep=False, final=False).run()
        if _settled(quick) or time.monotonic() >= deadline:
            break
        if echo is not None:
            echo(
                f"waiting: {quick.counts['pending']} pending, {quick.diverged} diverged"
                f" ({deadline - time.monotonic():.0f}s left)"
            )
        time.sleep(poll)
    report = Checker(ws, deep=deep, final=final).run()
    report.seconds = time.monotonic() - started
    return report
