"""Durable acknowledgements: an upload is acknowledged only once its bytes and its ledger entry
are on stable storage. Shown on the syscalls of a real `mrbatch put`, traced by strace: the
blob's file is fsynced before it is renamed into place, the directory after, and the object
index and the state table (the ledger entry) are synced before the answer is written."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from mrbatch.config.workspace import Workspace

SYNC = re.compile(r"\b(fsync|fdatasync)\((\d+)<([^>]*)>\)\s*=\s*0")
RENAME = re.compile(r"\brename(?:at2?)?\(.*?\"([^\"]+\.part)\".*?\"([^\"]+)\"")
ANSWER = re.compile(r"\bwrite\(1<[^>]*>,\s*\"\{")


def _trace(ws: Workspace, tmp_path: Path, *args: str) -> list[str]:
    assert shutil.which("strace"), "strace is missing: `make test` installs it (setup_deps.py)"
    log = tmp_path / "strace.log"
    subprocess.run(
        ["strace", "-f", "-y", "-qq", "-s", "80", "-o", str(log),
         "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,write",
         sys.executable, "-m", "mrbatch.cli.main", *args],
        cwd=ws.root, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return log.read_text().splitlines()


def test_an_upload_is_synced_before_it_is_acknowledged(
    workspace: Workspace, tmp_path: Path
) -> None:
    source = tmp_path / "durable.csv"
    source.write_bytes(b"uuid,Country\n123456789,France\n")
    lines = _trace(workspace, tmp_path, "put", str(source), "--json")
    answer = next(i for i, line in enumerate(lines) if ANSWER.search(line))
    before = lines[:answer]
    synced = [m.group(3) for line in before if (m := SYNC.search(line))]
    renamed = [
        (i, m.group(1), m.group(2)) for i, line in enumerate(before) if (m := RENAME.search(line))
    ]
    assert renamed, "the blob was never renamed into place"
    rename_at, part, blob = renamed[0]
    # The blob's bytes: fsynced (under its temporary name) before the rename...
    synced_before_rename = [m.group(3) for line in before[:rename_at] if (m := SYNC.search(line))]
    assert part in synced_before_rename, "the blob was not fsynced before it was renamed"
    # ...its directory after it, so the rename survives a power loss too...
    assert str(Path(blob).parent) in synced, "the blob's directory was not fsynced"
    # ...and the index row and the ledger entry (SQLite WAL, synchronous=FULL).
    assert any(p.endswith("bucket/index.sqlite-wal") for p in synced), synced
    assert any(p.endswith("state.sqlite-wal") for p in synced), synced
