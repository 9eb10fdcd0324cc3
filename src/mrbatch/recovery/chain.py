"""The chain of recovery reports: every report (one per plan execution and drill) carries the
hash of the one before it, so a report removed, inserted or edited afterwards shows.

A report is kept twice: as a control-plane document ``report/<seq>`` and as files under
``<data dir>/reports/`` (``<seq>-<kind>-<id>.json`` and the ``.md`` rendered from it, mode
0600). Its ``hash`` is the SHA-256 of its canonical JSON (sorted keys, no spaces, UTF-8)
without the ``hash`` key and with ``prev_hash`` — the previous report's hash, 64 zeros for the
first. Appending takes a lock file, so two plans ending at once on this machine never write
the same ``seq``. :func:`verify_chain` names every gap (a missing ``seq``), edit (content that
no longer matches its hash, or Markdown that no longer matches its JSON), broken link, and
copy that differs between the two places.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import backends
from ..config.workspace import Workspace
from ..errors import MrbatchError
from .plan import DRILL_PREFIX, PLAN_PREFIX

__all__ = [
    "GENESIS",
    "REPORT_PREFIX",
    "append_report",
    "canonical",
    "digest",
    "load_reports",
    "reports_dir",
    "verify_chain",
]

REPORT_PREFIX = "report/"
GENESIS = "0" * 64
Renderer = Callable[[dict[str, Any]], str]


def canonical(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode("utf-8")


def digest(report: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in report.items() if k != "hash"})).hexdigest()


def reports_dir(ws: Workspace) -> Path:
    return ws.data_dir / "reports"


@contextlib.contextmanager
def _locked(ws: Workspace) -> Iterator[None]:
    directory = reports_dir(ws)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file renamed into place), mode 0600,
    on stable storage before the rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _file_name(report: dict[str, Any]) -> str:
    ident = str(report.get("execution") or report.get("drill") or "report")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in ident)
    return f"{int(report['seq']):08d}-{report.get('kind', 'report')}-{safe}"


def _from_files(ws: Workspace) -> dict[int, tuple[Path, dict[str, Any] | None]]:
    found: dict[int, tuple[Path, dict[str, Any] | None]] = {}
    directory = reports_dir(ws)
    if not directory.exists():
        return found
    for path in sorted(directory.glob("*.json")):
        try:
            seq = int(path.name.split("-", 1)[0])
        except ValueError:
            continue
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            body = None
        found[seq] = (path, body)
    return found


def _from_control(ws: Workspace) -> dict[int, dict[str, Any]] | None:
    try:
        docs = backends.open_control_plane(ws).documents(REPORT_PREFIX)
    except MrbatchError:
        return None
    out = {}
    for name, body in docs.items():
        with contextlib.suppress(ValueError):
            out[int(name[len(REPORT_PREFIX) :])] = body
    return out


def _anchors(ws: Workspace) -> dict[int, tuple[str, str]]:
    """The reports the plan executions and drills say they wrote: seq -> (who, hash). They
    anchor the chain's end: a report cut off the tail is still missed by its writer."""
    anchors: dict[int, tuple[str, str]] = {}
    try:
        control = backends.open_control_plane(ws)
        docs = {**control.documents(PLAN_PREFIX), **control.documents(DRILL_PREFIX)}
    except MrbatchError:
        return anchors
    for name, body in docs.items():
        ref = body.get("report")
        if isinstance(ref, dict) and isinstance(ref.get("seq"), int):
            anchors[ref["seq"]] = (name, str(ref.get("hash")))
    return anchors


def append_report(ws: Workspace, body: dict[str, Any], render: Renderer) -> dict[str, Any]:
    """Give ``body`` the next ``seq`` and the head's hash, hash it, and store it (files and
    control plane). Returns the stored report, with ``files`` (not hashed: where it is)."""
    body = json.loads(canonical(body))  # plain JSON from here on: what is stored is what is hashed
    with _locked(ws):
        files = _from_files(ws)
        docs = _from_control(ws) or {}
        seq = max([0, *files, *docs])
        head = docs.get(seq) or (files.get(seq, (None, None))[1] if seq else None)
        report = {**body, "seq": seq + 1, "prev_hash": (head or {}).get("hash", GENESIS)}
        report.setdefault("written_at", time.time())
        report["hash"] = digest(report)
        base = reports_dir(ws) / _file_name(report)
        _write_private(base.with_suffix(".json"), json.dumps(report, indent=2, default=str))
        _write_private(base.with_suffix(".md"), render(report))
        stored = {"json": str(base.with_suffix(".json")), "markdown": str(base.with_suffix(".md"))}
        try:
            backends.open_control_plane(ws).put_document(
                f"{REPORT_PREFIX}{report['seq']:08d}", report
            )
            stored["control_plane"] = f"{REPORT_PREFIX}{report['seq']:08d}"
        except MrbatchError as exc:
            stored["control_plane_error"] = str(exc)
    return {**report, "files": stored}


def load_reports(ws: Workspace) -> list[dict[str, Any]]:
    """Every report, oldest first (the control plane's copy where there is one)."""
    files = _from_files(ws)
    docs = _from_control(ws) or {}
    merged = {seq: body for seq, (_path, body) in files.items() if body is not None}
    merged.update(docs)
    return [merged[seq] for seq in sorted(merged)]


def verify_chain(ws: Workspace, render: Renderer) -> dict[str, Any]:
    """Check the chain in both places; see the module doc."""
    files = _from_files(ws)
    docs = _from_control(ws)
    problems: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []

    def problem(seq: int, kind: str, text: str) -> None:
        problems.append({"seq": seq, "kind": kind, "problem": text})

    if docs is None:
        warnings.append({"seq": None, "kind": "unreadable", "problem": "control plane unreadable"})
        docs = {}
    anchors = _anchors(ws)
    seqs = sorted(set(files) | set(docs) | set(anchors))
    previous: str | None = GENESIS
    for seq in range(1, (seqs[-1] if seqs else 0) + 1):
        path, from_file = files.get(seq, (None, None))
        from_doc = docs.get(seq)
        if path is None and from_doc is None:
            named = f" (the report of {anchors[seq][0]})" if seq in anchors else ""
            problem(seq, "gap", f"report {seq} is missing{named}")
            previous = None  # the next report cannot be linked to anything
            continue
        if path is not None and from_file is None:
            problem(seq, "unreadable", f"{path.name} is not valid JSON")
        report = from_doc if from_doc is not None else from_file
        if path is None:
            warnings.append({"seq": seq, "kind": "copy-missing", "problem": f"no file for {seq}"})
        elif from_doc is None and docs:
            warnings.append(
                {"seq": seq, "kind": "copy-missing", "problem": f"{seq} not in the control plane"}
            )
        elif from_file is not None and from_doc is not None and from_file != from_doc:
            problem(seq, "edited", f"{path.name} differs from the control plane's report {seq}")
        for where, body in (("file", from_file), ("control plane", from_doc)):
            if body is None:
                continue
            if body.get("seq") != seq:
                problem(seq, "edited", f"the {where} copy of report {seq} says seq {body['seq']}")
            if body.get("hash") != digest(body):
                problem(seq, "edited", f"the {where} copy of report {seq} does not match its hash")
        assert report is not None
        if previous is not None and report.get("prev_hash") != previous:
            problem(seq, "link", f"report {seq} does not carry the hash of report {seq - 1}")
        if path is not None and from_file is not None:
            markdown = path.with_suffix(".md")
            try:
                if markdown.read_text(encoding="utf-8") != render(from_file):
                    problem(seq, "edited", f"{markdown.name} does not match its report's JSON")
            except OSError:
                warnings.append({"seq": seq, "kind": "copy-missing", "problem": f"no {markdown}"})
        if seq in anchors and anchors[seq][1] != report.get("hash"):
            problem(seq, "edited", f"report {seq} is not the one {anchors[seq][0]} wrote")
        previous = report.get("hash")
    return {
        "ok": not problems,
        "reports": len(seqs),
        "head": {"seq": seqs[-1], "hash": previous} if seqs else None,
        "problems": problems,
        "warnings": warnings,
    }
