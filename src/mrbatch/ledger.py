"""The history of uploads the access point accepted, kept by the access point itself (so every
upload — `mrbatch put`, the gateway, `load`, chaos — is in it) so that ``mrbatch verify`` can
check every acknowledged upload, not only the ones the buckets still show (an upload
acknowledged by a region that was then lost would otherwise vanish without a trace, which is
exactly the failure a checker must catch).

One JSON line per accepted upload of an input in ``<data_dir>/accepted.jsonl``. Lines are appended
with ``O_APPEND`` in one ``write``, so concurrent writers (several load threads or processes)
never interleave within a line; a torn last line (a writer killed mid-write) is skipped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .workspace import Workspace

__all__ = ["Accepted", "ledger_path", "read_accepted", "record_accepted"]


@dataclass(frozen=True)
class Accepted:
    """One acknowledged upload: the input version (key + content hash), where it landed."""

    key: str
    sha256: str
    region: str
    at: float
    source: str = "load"


def ledger_path(ws: Workspace) -> Path:
    return ws.data_dir / "accepted.jsonl"


def record_accepted(
    ws: Workspace, key: str, sha256: str, region: str, *, source: str = "load"
) -> Accepted:
    """Append one accepted upload to the ledger. Idempotent in effect: verify reads the ledger
    as a set of input versions, so a repeated line changes nothing."""
    entry = Accepted(key=key, sha256=sha256, region=region, at=time.time(), source=source)
    path = ledger_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(asdict(entry), sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return entry


def read_accepted(ws: Workspace) -> list[Accepted]:
    """Every accepted upload recorded so far, oldest first; empty when there is no ledger."""
    try:
        raw = ledger_path(ws).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = []
    for line in raw.splitlines():
        try:
            data = json.loads(line)
            entries.append(Accepted(**data))
        except (ValueError, TypeError):
            continue  # a line torn by a killed writer
    return entries
