"""Durable acknowledgements: an upload is acknowledged only once its bytes and its ledger entry
are on stable storage. Shown on the syscalls of a real `mrbatch put`, traced by strace: the
blob's file is fsynced before it is renamed into place, the directory after, and the object
index and the state table (the ledger entry) are synced before the answer is written."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mrbatch.config.workspace import Workspace

SYNC = re.compile(r"\b(fsync|fdatasync)\((\d+)<([^>]*)>\)\s*=\s*0")
PWRITE = re.compile(r"\bpwrite64\((\d+)<([^>]*)>")
RENAME = re.compile(r"\brename(?:at2?)?\(.*?\"([^\"]+\.part)\".*?\"([^\"]+)\"")
ANSWER = re.compile(r"\bwrite\(1<[^>]*>,\s*\"\{")


def _trace(
    ws: Workspace,
    tmp_path: Path,
    *python_args: str,
    calls: str = "fsync,fdatasync,rename,renameat,renameat2,write",
) -> list[str]:
    """The lines strace wrote for ``python *python_args`` run in the workspace (``calls``)."""
    assert shutil.which("strace"), "strace is missing: `make test` installs it (setup_deps.py)"
    log = tmp_path / "strace.log"
    subprocess.run(
        ["strace", "-f", "-y", "-qq", "-s", "80", "-o", str(log), "-e", f"trace={calls}",
         sys.executable, *python_args],
        cwd=ws.root, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return log.read_text().splitlines()


def _writes(lines: list[str], path: str) -> list[int]:
    """Where in ``lines`` a pwrite64 to ``path`` was traced."""
    return [i for i, line in enumerate(lines) if (m := PWRITE.search(line)) and m.group(2) == path]


def _synced(lines: list[str]) -> list[str]:
    """The paths ``lines`` show fsynced or fdatasynced."""
    return [m.group(3) for line in lines if (m := SYNC.search(line))]


def test_an_upload_is_synced_before_it_is_acknowledged(
    workspace: Workspace, tmp_path: Path
) -> None:
    source = tmp_path / "durable.csv"
    source.write_bytes(b"uuid,Country\n123456789,France\n")
    lines = _trace(workspace, tmp_path, "-m", "mrbatch.cli.main", "put", str(source), "--json")
    answer = next(i for i, line in enumerate(lines) if ANSWER.search(line))
    before = lines[:answer]
    synced = _synced(before)
    renamed = [
        (i, m.group(1), m.group(2)) for i, line in enumerate(before) if (m := RENAME.search(line))
    ]
    assert renamed, "the blob was never renamed into place"
    rename_at, part, blob = renamed[0]
    # The blob's bytes: fsynced (under its temporary name) before the rename...
    synced_before_rename = _synced(before[:rename_at])
    assert part in synced_before_rename, "the blob was not fsynced before it was renamed"
    # ...its directory after it, so the rename survives a power loss too...
    assert str(Path(blob).parent) in synced, "the blob's directory was not fsynced"
    # ...and the index row and the ledger entry (SQLite WAL, synchronous=FULL).
    assert any(p.endswith("bucket/index.sqlite-wal") for p in synced), synced
    assert any(p.endswith("state.sqlite-wal") for p in synced), synced


# What SQLite's commits and syncs look like under strace.
WAL_CALLS = "fsync,fdatasync,pwrite64"

REPLICATE_ONCE = """
import sys
from mrbatch.config.workspace import Workspace
from mrbatch.runtime.replication import Replicator
Replicator(Workspace.load(), sys.argv[1]).run_once()
"""


def test_a_replicator_syncs_what_it_copied_before_its_cursor_moves_past_it(
    workspace: Workspace, tmp_path: Path
) -> None:
    """The objects cursor lives in the destination's state table, the copied versions in its
    object index: two SQLite files, both committed without a sync. Were the cursor's commit to
    reach the disk and the index's not (a power loss), those objects would never be copied
    again. So the index's WAL is synced after the last copy and before the cursor is written."""
    from mrbatch import backends

    source, dest = workspace.regions[0], workspace.regions[1]
    backends.open_object_store(workspace, source).put("inbox/replicated.csv", b"uuid\n1\n")
    lines = _trace(workspace, tmp_path, "-c", REPLICATE_ONCE, dest, calls=WAL_CALLS)
    dest_dir = str(workspace.region_dir(dest))
    index_wal, state_wal = f"{dest_dir}/bucket/index.sqlite-wal", f"{dest_dir}/state.sqlite-wal"
    before = lines[: _writes(lines, state_wal)[0]]  # up to the cursor's first write
    index_writes = _writes(before, index_wal)
    assert index_writes, "the copy was not committed to the index before the cursor moved"
    synced_after = _synced(before[index_writes[-1] :])
    assert index_wal in synced_after, "the cursor moved before the copied versions were synced"
    copied = backends.open_object_store(workspace, dest).head("inbox/replicated.csv")
    assert copied is not None and copied.origin == source


# Leaves without closing its SQLite connections: closing the last one checkpoints and syncs,
# which would hide a restore that did not sync what it wrote before returning.
RESTORE = """
import os, sys
from mrbatch.config.workspace import Workspace
from mrbatch.maintain.restore import restore
restore(Workspace.load(), sys.argv[1], region=sys.argv[2])
os._exit(0)
"""


def test_a_restore_syncs_what_it_wrote_before_it_reports(
    workspace: Workspace, tmp_path: Path
) -> None:
    """A restore reports the region rebuilt; its records (and the objects they name, first)
    must then survive a power loss: the state table's WAL is fsynced after its last write."""
    from mrbatch import backends
    from mrbatch.maintain.backup import take_backup

    region = workspace.regions[0]
    backends.open_object_store(workspace, region).put("notes/kept", b"bytes")
    backends.open_state_table(workspace, region).insert("note/kept", "note", {"n": 1}, epoch=1)
    dest = tmp_path / "backup"
    take_backup(workspace, str(dest), region=region)
    shutil.rmtree(workspace.region_dir(region))
    lines = _trace(workspace, tmp_path, "-c", RESTORE, str(dest), region, calls=WAL_CALLS)
    state_wal = f"{workspace.region_dir(region)}/state.sqlite-wal"
    writes = _writes(lines, state_wal)
    assert writes, "the restore wrote nothing to the state table"
    assert state_wal in _synced(lines[writes[-1] :]), "the restore's last records were not synced"
    restored = backends.open_state_table(workspace, region).get("note/kept")
    assert restored is not None and restored.body == {"n": 1}


WRITEBACK = re.compile(r"\bsync_file_range\((\d+)<([^>]*\.part)>, (\d+), (\d+),")


@pytest.mark.parametrize(
    ("mib", "durable", "started"),
    [(20, False, []), (20, True, [0, 8]), (70, False, [0])],
    ids=["a-chunk-output", "durable", "past-64-MiB"],
)
def test_a_large_blob_is_on_its_way_to_storage_while_it_is_written(
    workspace: Workspace, tmp_path: Path, mib: int, durable: bool, started: list[int]
) -> None:
    """The embedded store starts the writeback of a durable blob every 8 MiB, and of any blob
    once past 64 MiB (an upload or a merged output, made durable next), so the fsync that makes
    it durable waits for its tail only; a blob of a chunk output's size starts none."""
    code = (
        "import sys; from pathlib import Path\n"
        "from mrbatch.backends.localfs import LocalObjectStore\n"
        f"LocalObjectStore(Path(sys.argv[1]), 'r').put('x', bytes({mib} << 20), durable={durable})"
    )
    lines = _trace(
        workspace, tmp_path, "-c", code, str(tmp_path / "s"), calls="sync_file_range,fsync"
    )
    starts = [(i, m) for i, line in enumerate(lines) if (m := WRITEBACK.search(line))]
    assert [int(m.group(3)) >> 20 for _, m in starts] == started  # from these MiB on
    assert all(int(m.group(4)) >= 8 << 20 for _, m in starts)
    synced = [
        i for i, line in enumerate(lines) if (m := SYNC.search(line)) and ".part" in m.group(3)
    ]
    assert synced == ([max(i for i, _ in starts) + 1] if durable else [])  # then the tail


def test_bytes_the_embedded_store_holds_already_make_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file created and deleted for nothing costs each later new file on an ext4 without a
    # journal (it scans past recently freed inodes): the same bytes again write no file.
    from mrbatch.backends import blobfiles
    from mrbatch.backends.localfs import LocalObjectStore

    store = LocalObjectStore(tmp_path / "bucket", "r1")
    first = store.put("runs/a/rejected/00000.csv", b"", durable=True)
    created: list[str] = []
    real_open = open

    def counting_open(path: str, *args: object, **kwargs: object) -> object:
        created.append(path)
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(blobfiles, "open", counting_open, raising=False)
    again = store.put("runs/b/rejected/00000.csv", b"", durable=True)
    assert created == [] and again.sha256 == first.sha256
    assert store.get("runs/b/rejected/00000.csv") == b""
    new = store.put("runs/b/out/00000.csv", b"rows\n")  # new bytes: one file, hashed once
    assert len(created) == 1 and store.get("runs/b/out/00000.csv") == b"rows\n"
    assert new.sha256 == hashlib.sha256(b"rows\n").hexdigest()
