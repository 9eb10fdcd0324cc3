"""Recovery reports: what an auditor asks after a failover, a failback or a drill, answered from
what the deployment recorded — the timeline (detection → decision → fence → activation → first
claim → every in-flight file terminal), the RTO against ``failover.desired_rto`` counted from
detection as well as from the command, the files at risk and what became of each, the approvals
(the wait, who answered, how, when), the ``verify`` verdict and the differences between regions.

:func:`plan_report` and :func:`drill_report` build the JSON; :func:`render_markdown` renders
either (deterministically: ``mrbatch report verify`` renders again and compares); :mod:`.chain`
stores and chains them.
"""

from __future__ import annotations

import time
from typing import Any

from .plan import Execution

__all__ = ["drill_report", "plan_report", "render_markdown"]

_MILESTONES = (
    ("detected", "failure detected"),
    ("command", "plan started"),
    ("decided", "decision (approved)"),
    ("fenced", "old region fenced"),
    ("activated", "new region active"),
    ("first_claim", "first claim in the new region"),
    ("in_flight_terminal", "every in-flight file terminal"),
    ("ended", "plan ended"),
)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def plan_report(
    execution: Execution,
    *,
    first_claim: dict[str, Any] | None,
    in_flight_terminal: float | None,
    verify: dict[str, Any] | None,
    parity: dict[str, Any] | None,
) -> dict[str, Any]:
    """The report of one plan execution (see the module doc)."""
    e = execution
    origin = e.detected_at if e.detected_at is not None else e.started
    at: dict[str, float | None] = {
        "detected": e.detected_at,
        "command": e.started,
        "decided": e.decided_at,
        "fenced": e.fenced_at,
        "activated": e.activated_at,
        "first_claim": first_claim["at"] if first_claim else None,
        "in_flight_terminal": in_flight_terminal,
        "ended": e.ended,
    }
    timeline: list[dict[str, Any]] = []
    for name, label in _MILESTONES:
        when = at[name]
        timeline.append(
            {
                "event": name,
                "what": label,
                "at": when,
                "since_detection": None if when is None else _round(when - origin),
                "since_command": None if when is None else _round(when - e.started),
            }
        )
    if e.in_flight and in_flight_terminal is None:
        timeline[-2]["note"] = "not every run in flight at the fence was terminal in time"
    from_command = _round(e.activated_at - e.started) if e.activated_at else None
    from_detection = _round(e.activated_at - origin) if e.activated_at else None
    at_risk = [dict(item) for item in (e.rpo or {}).get("items", [])]
    known = {item["run_id"] for item in at_risk}
    for item in e.at_risk:  # named by reconcile, not in the fence-time list
        if item.get("run_id") not in known:
            at_risk.append({**item, "state": "at-risk after reconcile", "source": "reconcile"})
    return {
        "v": 1,
        "kind": e.plan,
        "execution": e.id,
        "drill": e.drill,
        "trigger": e.trigger,
        "mode": e.mode,
        "mode_changes": e.mode_changes,
        "source": e.source,
        "target": e.target,
        "epoch": {"before": e.epoch_before, "after": e.epoch_after},
        "outcome": e.outcome,
        "reason": e.reason,
        "detected_by": e.detected_by or "the command (nothing had failed)",
        "timeline": timeline,
        "first_claim": first_claim,
        "rto": {
            "desired": e.desired_rto,
            "from_command": from_command,
            "from_detection": from_detection,
            "met": from_detection is not None and from_detection <= e.desired_rto,
        },
        "approvals": e.approvals,
        "in_flight": e.in_flight,
        "at_risk": at_risk,
        "rpo": {k: v for k, v in (e.rpo or {}).items() if k != "items"},
        "verify": verify,
        "parity": parity,
        "steps": [
            {
                "name": s.name,
                "outcome": s.outcome,
                "seconds": s.seconds,
                "message": s.message,
            }
            for s in e.steps
        ],
        "written_at": time.time(),
    }


def drill_report(drill: dict[str, Any]) -> dict[str, Any]:
    """The report of a drill: its verdict, budgets, load and the reports of its two plans."""
    return {"v": 1, "kind": "drill", **drill, "written_at": time.time()}


# --------------------------------------------------------------------------- Markdown


def _when(value: Any) -> str:
    if value is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(value))) + (
        f".{int((float(value) % 1) * 1000):03d}Z"
    )


def _secs(value: Any) -> str:
    return "—" if value is None else f"{float(value):.3f} s"


def _cell(value: Any) -> str:
    return str("—" if value is None else value).replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _plan_markdown(r: dict[str, Any]) -> list[str]:
    rto = r["rto"]
    out = [
        f"# Recovery report {r['seq']}: {r['kind']} to {r['target']} — {r['outcome']}",
        "",
        f"- execution `{r['execution']}`"
        + (f" (drill `{r['drill']}`)" if r.get("drill") else "")
        + f", triggered by {r['trigger']}, mode {r['mode']}",
        f"- from {r['source']} to {r['target']}, epoch {r['epoch']['before']} →"
        f" {r['epoch']['after']}" + (f"; {r['reason']}" if r.get("reason") else ""),
        f"- detected by {r['detected_by']}",
        f"- RTO {_secs(rto['from_detection'])} from detection, {_secs(rto['from_command'])}"
        f" from the command; desired {_secs(rto['desired'])}:"
        f" **{'met' if rto['met'] else 'MISSED'}**",
        "",
        "## Timeline",
        "",
    ]
    out += _table(
        ["event", "at (UTC)", "since detection", "since command"],
        [
            [t["what"], _when(t["at"]), _secs(t["since_detection"]), _secs(t["since_command"])]
            for t in r["timeline"]
        ],
    )
    for change in r.get("mode_changes") or []:
        out.append(
            f"\nMode switched from {change.get('from')} to {change.get('mode')} by"
            f" {change.get('by')} (via {change.get('via')}) at {_when(change.get('at'))}."
        )
    out += ["", "## Approvals", ""]
    out += _table(
        ["step", "decision", "by", "via", "at (UTC)", "waited"],
        [
            [a.get("step"), a.get("decision"), a.get("by"), a.get("via"), _when(a.get("at")),
             _secs(a.get("waited_seconds"))]
            for a in r.get("approvals") or []
        ],
    )  # fmt: skip
    rpo = r.get("rpo") or {}
    out += ["", "## Files at risk", ""]
    if rpo.get("source_readable") is False:
        out.append(f"{rpo.get('source_error')}\n")
    out += _table(
        ["input", "run", "bytes", "accepted in", "state", "closed at (UTC)", "approved by"],
        [
            [i.get("key") or i.get("input_key"), i.get("run_id"), i.get("size"),
             i.get("accepted_region") or i.get("region"), i.get("state"),
             _when(i.get("closed_at")), (i.get("approved") or {}).get("by")]
            for i in r.get("at_risk") or []
        ],
    )  # fmt: skip
    out += ["", "## Runs in flight at the fence", ""]
    out += _table(
        ["input", "run", "at the fence", "now", "region", "terminal at (UTC)"],
        [
            [i.get("key"), i.get("run_id"), i.get("status_at_fence"), i.get("status"),
             i.get("region"), _when(i.get("terminal_at"))]
            for i in r.get("in_flight") or []
        ],
    )  # fmt: skip
    out += _verify_and_parity(r)
    out += ["", "## Steps", ""]
    out += _table(
        ["step", "outcome", "seconds", "message"],
        [[s["name"], s["outcome"], s["seconds"], s["message"]] for s in r["steps"]],
    )
    return out


def _verify_and_parity(r: dict[str, Any]) -> list[str]:
    out = ["", "## Verify", ""]
    verify = r.get("verify")
    if verify is None:
        out.append("not run")
    else:
        out.append(
            f"{'clean' if verify.get('ok') else 'VIOLATIONS'}: {verify.get('counts')};"
            f" {len(verify.get('violations') or [])} violation(s)"
        )
        for v in (verify.get("violations") or [])[:20]:
            out.append(f"- {v.get('key')} ({v.get('region')}): {v.get('problem')}")
    out += ["", "## Differences between regions", ""]
    parity = r.get("parity")
    if parity is None:
        out.append("not checked")
    elif not parity.get("differences"):
        out.append("none: every region runs with the same schema, reference data and config")
    else:
        for d in parity["differences"]:
            values = ", ".join(f"{k}: {str(v)[:12]}" for k, v in d["values"].items())
            out.append(f"- {d['what']}: {values} (on disk {str(d.get('on_disk'))[:12]})")
    return out


def _drill_markdown(r: dict[str, Any]) -> list[str]:
    out = [
        f"# Drill report {r['seq']}: {'PASSED' if r.get('passed') else 'FAILED'}",
        "",
        f"- drill `{r['drill']}`, {r.get('trigger')}, mode {r.get('mode')}, from"
        f" {r.get('home')} to {r.get('away')} and back",
        f"- started {_when(r.get('started'))}, ended {_when(r.get('ended'))}",
    ]
    out += [f"- **{reason}**" for reason in r.get("failures") or []]
    out += ["", "## Budgets", ""]
    out += _table(
        ["switch", "RTO from detection", "budget", "met", "report"],
        [
            [p.get("plan"), _secs(p.get("rto")), _secs(p.get("budget")), p.get("met"),
             p.get("report_seq")]
            for p in r.get("plans") or []
        ],
    )  # fmt: skip
    load = r.get("load") or {}
    out += [
        "",
        "## Load",
        "",
        f"{load.get('accepted')} file(s) accepted, {load.get('completed')} completed,"
        f" {load.get('failed')} failed, {load.get('pending')} pending",
    ]
    out += _verify_and_parity(r)
    return out


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown (the same JSON always renders to the same text)."""
    lines = _drill_markdown(report) if report.get("kind") == "drill" else _plan_markdown(report)
    lines += [
        "",
        "---",
        f"seq {report['seq']} · written {_when(report.get('written_at'))} · previous"
        f" `{report['prev_hash']}` · hash `{report['hash']}`",
        "",
    ]
    return "\n".join(lines)
