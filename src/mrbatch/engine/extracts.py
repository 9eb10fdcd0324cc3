"""Which reference rows a chunk task reads: the whole reference cache, or the rows its group's
extract filed for it (see pipeline/extract.py), made once per group under a file lock by the
first chunk of the group that needs it."""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Sequence
from pathlib import Path

from ..model.records import ChunkSpec
from ..pipeline.extract import (
    EXTRACT_MIN_REFERENCE_ROWS,
    ExtractedReference,
    extract_group,
    requested_keys,
    sweep_extracts,
)
from ..pipeline.parse import Dialect
from ..pipeline.reference import ReferenceLookup, ReferenceTable, key_hashes
from ..ports import ObjectStore

__all__ = ["reference_for_chunk", "release"]


def reference_for_chunk(
    table: ReferenceTable,
    *,
    cache_dir: Path,
    store: ObjectStore,
    source: tuple[str, str | None],
    run_id: str,
    spec: ChunkSpec,
    group: Sequence[ChunkSpec],
    data: bytes,
    header: bytes,
    key: str,
    dialect: Dialect,
) -> ReferenceLookup:
    """The lookup chunk ``spec`` should use. ``group`` lists the chunks sharing a reference scan
    (the chunk itself among them), ``data`` is this chunk's CSV with its header, ``header`` the
    file's header line and ``source`` the input's (key, version)."""
    if len(group) < 2 or table.rows < EXTRACT_MIN_REFERENCE_ROWS:
        return table
    extracts = cache_dir / "extracts"
    digest = hashlib.sha256(
        "|".join([table.path.name, key, *(m.sha256 for m in group)]).encode()
    ).hexdigest()[:16]
    target = extracts / f"{run_id[:48]}-{digest}"
    if not target.is_dir():
        extracts.mkdir(parents=True, exist_ok=True)
        with open(_lock(target), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.is_dir():
                sweep_extracts(extracts)
                requests = {}
                for member in group:
                    if member.index == spec.index:
                        text = data
                    else:
                        body = store.get_range(
                            source[0], member.start, member.end - member.start, version=source[1]
                        )
                        text = header + body
                    keys = requested_keys(text, key, dialect.delimiter, dialect.quote)
                    if keys is not None:  # else that chunk looks its keys up itself
                        requests[member.index] = key_hashes(keys)
                extract_group(table, requests, target)
    mine = target / f"{spec.index:05d}"
    return ExtractedReference(table, mine) if mine.is_dir() else table


def release(reference: ReferenceLookup) -> None:
    """After the chunk's outputs are written: its extracted rows are not needed again (a run
    of the chunk after this reads the whole reference)."""
    if isinstance(reference, ExtractedReference) and reference.release():
        _lock(reference.directory.parent).unlink(missing_ok=True)


def _lock(target: Path) -> Path:
    return target.with_name(target.name + ".lock")
