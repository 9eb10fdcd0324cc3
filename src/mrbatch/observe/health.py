"""The verdict ``mrbatch status`` prints in one line (and exits 1 on): is every process up and
within its thresholds, and does every process run this configuration and this code?

Problems (the deployment does not do its work, or will not when it must): the control plane
cannot be read; a region, replicator or gateway process is down, or silent for longer than
``watch.heartbeat_timeout``; a region's bucket or state table cannot be read; replication lags
more than ``watch.max_lag``; a process refuses an edit of ``mrbatch.toml`` (it keeps the
configuration it runs with); on etcd, a region process that holds no lease (self-fenced).
Warnings (worth knowing, nothing down): no supervisor, a recovery plan between fence and
activation, a fenced region, mails being retried, inputs not arrived, a process still on an
older configuration or on another version of mrbatch, a setting that needs a restart, a failed
plan evaluation or standby parity (the last one ``mrbatch watch`` stored).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..config.workspace import Workspace

__all__ = ["verdict"]


def _age(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}s ago"


def _processes(data: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(label, version, config report) of every process that runs and reports."""
    found: list[tuple[str, Any, Any]] = []
    for name, region in data.get("regions", {}).items():
        if region.get("alive") and region.get("heartbeat_age") is not None:
            found.append((f"region:{name}", region.get("version"), region.get("config")))
        if region.get("replicator_alive") and region.get("replicator_heartbeat_age") is not None:
            found.append(
                (
                    f"replicator:{name}",
                    region.get("replicator_version"),
                    region.get("replicator_config"),
                )
            )
    gateway = data.get("gateway", {})
    if gateway.get("alive") and gateway.get("heartbeat_age") is not None:
        found.append(("gateway", gateway.get("version"), gateway.get("config")))
    keeper = data.get("supervisor", {})
    if keeper.get("alive") and keeper.get("config") is not None:
        found.append(("supervisor", keeper.get("version"), keeper.get("config")))
    return found


def _liveness(
    ws: Workspace, data: dict[str, Any], problems: list[str], warnings: list[str]
) -> None:
    watch = ws.config.watch
    timeout = watch.heartbeat_timeout
    if data.get("control_plane_error"):
        problems.append(f"the control plane cannot be read: {data['control_plane_error']}")
    for name, region in data.get("regions", {}).items():
        if region.get("state") is None and not data.get("control_plane_error"):
            problems.append(f"{name} has no routing state")
        elif region.get("state") == "FENCED":
            warnings.append(f"{name} is FENCED (`mrbatch failback` makes it active again)")
        age = region.get("heartbeat_age")
        if not region.get("alive"):
            problems.append(f"{name}'s process is down")
        elif age is None or age > timeout:
            problems.append(f"{name}'s process is silent (heartbeat {_age(age)})")
        elif region.get("process_state") == "control-plane-unreachable":
            problems.append(f"{name}'s process cannot reach the control plane")
        elif region.get("lease_held") is False:  # etcd: cut off, or not yet renewed
            problems.append(
                f"{name}'s process holds no lease on the control plane"
                f" ({region.get('process_state')}): it claims, publishes and mails nothing"
            )
        age = region.get("replicator_heartbeat_age")
        if not region.get("replicator_alive"):
            problems.append(f"{name}'s replicator is down")
        elif age is None or age > timeout:
            problems.append(f"{name}'s replicator is silent (heartbeat {_age(age)})")
        if region.get("error"):
            problems.append(f"{name}: {region['error']}")
        lag = region.get("lag_seconds")
        if lag is not None and lag > watch.max_lag:
            problems.append(
                f"{name}'s changes wait {lag:.1f}s to replicate (watch.max_lag is"
                f" {watch.max_lag:g}s)"
            )
        if region.get("mail_retrying"):
            warnings.append(f"{name} retries {len(region['mail_retrying'])} mail(s)")
        if region.get("waiting"):
            warnings.append(f"{name} waits for {len(region['waiting'])} input(s) to arrive")
    if not data.get("gateway", {}).get("alive"):
        problems.append("the gateway is down")
    if "commands" in data and not data["commands"].get("alive"):
        warnings.append("the command server is down: commands start slower, in their own process")
    if not data.get("supervisor", {}).get("alive"):
        warnings.append("no supervisor: a process that dies stays down (`mrbatch up --detach`)")
    if data.get("phase") not in (None, "ACTIVE"):
        warnings.append(f"phase {data['phase']}: a recovery plan has fenced but not activated")
    evaluation = data.get("plan_evaluation")
    if evaluation and not evaluation.get("ok"):
        failed = "; ".join((evaluation.get("failed_checks") or [])[:3]) or "see `plan evaluate`"
        warnings.append(
            f"the last plan evaluation ({_age(evaluation.get('age_seconds'))}) failed: {failed}"
        )
    if evaluation and evaluation.get("parity_ok") is False:
        differences = ", ".join(map(str, evaluation.get("parity_differences") or [])) or "?"
        warnings.append(f"the standby is not in parity: {differences}")


def _configuration(data: dict[str, Any], problems: list[str], warnings: list[str]) -> None:
    digest = data.get("config", {}).get("digest")
    errors: dict[str, list[str]] = defaultdict(list)
    older: list[str] = []
    restart: dict[str, list[str]] = defaultdict(list)
    versions: dict[str, list[str]] = defaultdict(list)
    for label, version, config in _processes(data):
        versions[str(version or "unknown")].append(label)
        if not isinstance(config, dict):
            older.append(label)  # a process from before configurations were reported
            continue
        if config.get("error"):
            errors[str(config["error"])].append(label)
        elif digest and config.get("digest") != digest:
            older.append(label)
        for key in config.get("restart_needed") or ():
            restart[key].append(label)
    everyone = [label for label, _, _ in _processes(data)]

    def who(labels: list[str]) -> str:
        return "every process" if labels == everyone and len(labels) > 1 else ", ".join(labels)

    for error, labels in errors.items():
        problems.append(
            f"{who(labels)} refused the edited mrbatch.toml and keep(s) the configuration"
            f" it runs with: {error}"
        )
    if older:
        warnings.append(
            f"{who(older)} run(s) an older configuration than {digest}"
            " (`mrbatch reload` applies it now)"
        )
    for key, labels in restart.items():
        warnings.append(f"restart needed for {key} ({who(labels)}): `mrbatch down`, `up`")
    mine = str(data.get("version"))
    if set(versions) - {mine}:
        shown = "; ".join(f"{v}: {', '.join(labels)}" for v, labels in sorted(versions.items()))
        warnings.append(f"versions differ from this mrbatch {mine}: {shown}")


def verdict(ws: Workspace, data: dict[str, Any]) -> dict[str, Any]:
    """``{"ok", "summary", "problems", "warnings"}`` for a ``views.status`` document."""
    problems: list[str] = []
    warnings: list[str] = []
    _liveness(ws, data, problems, warnings)
    _configuration(data, problems, warnings)
    regions = data.get("regions", {}).values()
    if (
        regions
        and not data.get("gateway", {}).get("alive")
        and not any(r.get("alive") or r.get("replicator_alive") for r in regions)
    ):
        problems = ["nothing is running (`mrbatch up --detach` starts it)"]
        warnings = [w for w in warnings if not w.startswith(("no supervisor", "the command"))]
    if problems:
        summary = f"{len(problems)} problem(s): " + "; ".join(problems)
        if warnings:
            summary += " (also: " + "; ".join(warnings) + ")"
    elif warnings:
        summary = "ok, but " + "; ".join(warnings)
    else:
        lags = [r.get("lag_seconds") or 0.0 for r in data.get("regions", {}).values()]
        summary = (
            f"ok: every process is up, replication lag {max(lags, default=0.0):.1f}s,"
            f" one configuration ({data.get('config', {}).get('digest')})"
        )
    return {"ok": not problems, "summary": summary, "problems": problems, "warnings": warnings}
