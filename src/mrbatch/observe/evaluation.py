"""The last recovery-plan evaluation as ``status`` shows it. Apart from the metrics collector so
that ``status`` does not import prometheus_client (17 ms of a command's start)."""

from __future__ import annotations

__all__ = ["EVALUATION_DOC", "evaluation_summary"]


EVALUATION_DOC = "evaluation/latest"  # written by recovery.watch.evaluate_now


def evaluation_summary(document: dict | None, now: float) -> dict | None:
    """What ``status`` shows of the last evaluation."""
    if not document:
        return None
    parity = document.get("parity") or {}
    return {
        "ok": bool(document.get("ok")),
        "at": document.get("at"),
        "age_seconds": round(now - float(document.get("at") or now), 3),
        "failed": document.get("failed"),
        "warnings": document.get("warnings"),
        "failed_checks": [
            f"{c['plan']} {c['check']}: {c['detail']}"
            for c in document.get("checks") or []
            if c.get("status") == "failed"
        ],
        "parity_ok": parity.get("ok"),
        "parity_differences": [d.get("what") for d in parity.get("differences") or []],
    }
