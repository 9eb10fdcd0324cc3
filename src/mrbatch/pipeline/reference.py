"""Reference data for enrichment: a columnar cache of one reference version (Parquet parts: a
64-bit hash of each key, the key, the output columns and the same fields rendered as CSV text),
built once per region in bounded memory; the per-chunk lookup that materialises only the rows a
chunk's keys need, so no worker holds a large reference table; and, for a small one, the rendered
fields of each key from the cache held in memory (:mod:`.keyindex`)."""

from __future__ import annotations

import io
import json
import math
import os
import secrets
import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Final

import polars as pl

from ..config.pipelines import REFERENCE_MEMORY_DEFAULT
from ..config.settings import RESERVED_COLUMN_PREFIX
from ..durable import fsync_dir, fsync_file
from ..errors import ConfigError, InputError, ReferenceDataError
from .csvsplit import split_csv
from .formats import csv_fields
from .keyindex import KeyIndex, held

__all__ = [
    "REFERENCE_FIELDS_COLUMN",
    "REFERENCE_KEY_COLUMN",
    "Enrichment",
    "ReferenceInfo",
    "ReferenceTable",
    "hash_keys",
    "prepare_reference",
    "reference_cache_tag",
]


# Name of the key column in a reference cache file (output names may not use it).
REFERENCE_KEY_COLUMN = RESERVED_COLUMN_PREFIX + "_key"

# Name of the column holding a row's output fields as a CSV writer writes them, comma-separated
# (see csv_fields): what a plain pipeline's chunk appends to each input line.
REFERENCE_FIELDS_COLUMN = RESERVED_COLUMN_PREFIX + "_fields"


# Reference cache layout and lookup, chosen by measurement (1M-row reference, 250k random keys
# per lookup, 2 cores, best of 4): Parquet lz4 with 64k-row groups + is_in filter pushed into
# the scan 68 ms / +77 MiB RSS; zstd 64k 81 ms; zstd 16k 100 ms; IPC (scan_ipc + filter) 89 ms
# / +233 MiB, no row-level pushdown; lazy semi-join instead of is_in 51 ms but +190 MiB (it
# reads every column of every row); reading the whole cache is 22 ms but materialises the whole
# reference in every worker. At 10M rows (100k keys, CPU seconds) decoding dominates: six
# columns lz4 0.75 s, uncompressed 0.52 s. Earlier versions packed the key and the output
# columns into one text column, split again after each lookup: 72 ms a lookup of 100k keys
# against 1M rows (one thread) where separate columns take 55 ms, and no faster at 10M rows
# (436-450 ms against 433-465 ms).
_REF_COMPRESSION: Final = "uncompressed"


_REF_ROW_GROUP = 65_536


# Rows per part file. The cache is written part by part from the CSV, so preparing it holds one
# part, never the whole reference: polars' own streaming CSV-to-Parquet sink peaked at 431 MB
# for a 10M-row reference (583 MB of CSV); parts of 131k rows peaked at 236 MB (168 MB
# anonymous), parts of 262k rows at 330 MB, in 12 s of CPU either way.
_PART_ROWS: Final = 131_072


# The duplicate-key check groups the key hashes in passes of about this many rows (hash modulo
# the number of passes), so its memory does not grow with the reference: one group-by over 10M
# string keys peaked at 916 MB, over 10M hashes at 666 MB, ten passes over hashes at 193 MB
# (0.9 s).
_DUPLICATE_PASS_ROWS: Final = 1_000_000


# The cache also holds a 64-bit hash of each key, so a lookup filters on integers (61 ms
# instead of 89 ms for 100k keys against 1M rows, one thread); the join afterwards compares the
# real keys, so a hash collision can only fetch one row too many, never a wrong one. polars'
# hash may change between polars versions and CPUs: reference_cache_tag() goes into the cache
# file name, so a cache built with another hash is never read, only rebuilt.
_REF_HASH_COLUMN: Final = "__mrbatch_hash"


_REF_HASH_SEED: Final = 7_919


# The cache's layout, in its name (with the key hash, see reference_cache_tag): a cache of
# another layout (earlier versions packed the columns into one) is never read, only rebuilt.
_LAYOUT: Final = 3
_META_FILE: Final = "cache.json"


@dataclass(frozen=True)
class Enrichment:
    """Join rule: input column ``key`` matches reference column ``reference_key``; ``columns``
    maps reference column names to output column names, in output order."""

    key: str
    reference_key: str
    columns: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.key or not self.reference_key:
            raise ConfigError("enrichment: key and reference_key must be non-empty")
        outputs = list(self.columns.values())
        if any(not name for name in outputs) or len(set(outputs)) != len(outputs):
            raise ConfigError(
                f"enrichment: output column names must be non-empty and distinct, got {outputs}"
            )
        reserved = [name for name in outputs if name.startswith(RESERVED_COLUMN_PREFIX)]
        if reserved:
            raise ConfigError(
                f"enrichment: output column names starting with {RESERVED_COLUMN_PREFIX!r} are"
                f" reserved, got {reserved}"
            )


@dataclass(frozen=True)
class ReferenceInfo:
    """What :func:`prepare_reference` found: the number of reference rows."""

    rows: int


def prepare_reference(
    csv_path: str | Path, cache_path: str | Path, enrichment: Enrichment, *, source: str
) -> ReferenceInfo:
    """Check a reference CSV and write its columnar cache atomically; return its row count.

    Every value is read as text. The cache is a directory of Parquet parts holding a 64-bit
    hash of the key, the key (``REFERENCE_KEY_COLUMN``) and the listed columns under their
    output names, as lookups give them back. Raises
    ReferenceDataError (naming ``source``) for a missing file or column, no rows, an empty key or
    duplicate keys; on error no cache is left behind. Memory is one part of ``_PART_ROWS`` rows
    plus the duplicate check's passes, whatever the size of the reference.
    """
    csv_path, cache_path = Path(csv_path), Path(cache_path)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(f".{cache_path.name}.{secrets.token_hex(6)}.tmp")
    tmp.mkdir()
    try:
        rows, memory = _write_parts(csv_path, tmp, enrichment, source)
        meta = {"columns": list(enrichment.columns.values()), "memory": memory}
        (tmp / _META_FILE).write_text(json.dumps(meta))
        _check_duplicates(_parts(tmp), rows, enrichment, source)
        # Synced before the rename: a cache truncated by a crash would fail every run.
        fsync_dir(tmp)
        _swap_in(tmp, cache_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ReferenceInfo(rows=rows)


def hash_keys(keys: pl.Expr) -> pl.Expr:
    """The 64-bit hash of join keys, as the cache holds it for the reference's keys."""
    return keys.cast(pl.String).hash(_REF_HASH_SEED)


@cache  # the same for the life of a process; computing it was 5% of a small file's chunk task
def reference_cache_tag() -> str:
    """A short tag naming the cache layout and the key hash this polars computes (see
    _REF_HASH_COLUMN)."""
    probe = pl.Series(["mrbatch-reference-probe"]).hash(_REF_HASH_SEED).item()
    return f"{_LAYOUT}{int(probe) & 0xFFFFFFFF:08x}"


def _write_parts(
    csv_path: Path, directory: Path, enrichment: Enrichment, source: str
) -> tuple[int, int]:
    """Stream the CSV into part files of whole records; return the row count and the memory
    the cache takes when held (see ReferenceTable.holdable)."""
    rows = nulls = memory = 0
    try:
        stream = open(csv_path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise _ref_error(source, f"cannot read the reference data: {_first_line(exc)}") from exc
    with stream:
        try:
            for part in split_csv(stream, chunk_rows=_PART_ROWS, source=source):
                frame = _read_part(part.data, enrichment, source)
                if frame.height == 0:
                    continue
                nulls += frame.get_column(REFERENCE_KEY_COLUMN).null_count()
                path = directory / f"part-{part.index:05d}.parquet"
                frame.write_parquet(
                    path, compression=_REF_COMPRESSION, row_group_size=_REF_ROW_GROUP
                )
                fsync_file(path)
                rows += frame.height
                held_columns = frame.select(REFERENCE_KEY_COLUMN, REFERENCE_FIELDS_COLUMN)
                memory += int(held_columns.estimated_size()) + 20 * frame.height  # hashes, rows
        except InputError as exc:
            raise _ref_error(source, f"cannot read the reference data: {exc.message}") from exc
    if rows == 0:
        raise _ref_error(source, "reference data has no rows")
    if nulls:
        raise _ref_error(
            source, f"reference key column {enrichment.reference_key!r} is empty on {nulls} row(s)"
        )
    return rows, memory


def _read_part(data: bytes, enrichment: Enrichment, source: str) -> pl.DataFrame:
    try:
        frame = pl.read_csv(io.BytesIO(data), infer_schema=False, raise_if_empty=False)
    except pl.exceptions.PolarsError as exc:
        raise _ref_error(source, f"cannot parse the reference data: {_first_line(exc)}") from exc
    wanted = [enrichment.reference_key, *enrichment.columns]
    missing = [c for c in dict.fromkeys(wanted) if c not in frame.columns]
    if missing:
        raise _ref_error(
            source,
            f"reference data lacks column {', '.join(map(repr, missing))} "
            f"(it has {', '.join(map(repr, frame.columns))})",
        )
    return frame.select(
        hash_keys(pl.col(enrichment.reference_key)).alias(_REF_HASH_COLUMN),
        pl.col(enrichment.reference_key).alias(REFERENCE_KEY_COLUMN),
        *[pl.col(column).alias(name) for column, name in enrichment.columns.items()],
        csv_fields(list(enrichment.columns)).alias(REFERENCE_FIELDS_COLUMN),
    )


def _check_duplicates(parts: list[Path], rows: int, enrichment: Enrichment, source: str) -> None:
    """Refuse duplicate keys. Equal keys have equal hashes, so hashes seen twice are found pass
    by pass (a share of the hash space each), then only those are compared as text."""
    passes = max(1, math.ceil(rows / _DUPLICATE_PASS_ROWS))
    hashes = pl.scan_parquet(parts).select(_REF_HASH_COLUMN)
    seen_twice: list[pl.Series] = []
    for share in range(passes):
        mine = hashes.filter(pl.col(_REF_HASH_COLUMN) % passes == share) if passes > 1 else hashes
        repeated = (
            mine.group_by(_REF_HASH_COLUMN).len().filter(pl.col("len") > 1).collect()
        ).get_column(_REF_HASH_COLUMN)
        if len(repeated):
            seen_twice.append(repeated)
    if not seen_twice:
        return
    candidates = pl.concat(seen_twice)
    dupes = (
        pl.scan_parquet(parts)
        .filter(pl.col(_REF_HASH_COLUMN).is_in(candidates.implode()))
        .select(REFERENCE_KEY_COLUMN)
        .group_by(REFERENCE_KEY_COLUMN)
        .len()
        .filter(pl.col("len") > 1)
        .select(REFERENCE_KEY_COLUMN)
        .sort(REFERENCE_KEY_COLUMN)
        .collect()
        .to_series()
    )
    if len(dupes):  # else: only distinct keys sharing a hash, which lookups cope with
        shown = ", ".join(repr(k) for k in dupes.head(5).to_list())
        more = f" and {len(dupes) - 5} more" if len(dupes) > 5 else ""
        raise _ref_error(
            source,
            f"reference data has duplicate keys in column {enrichment.reference_key!r}: "
            f"{shown}{more}",
        )


def _swap_in(tmp: Path, cache_path: Path) -> None:
    """Rename the finished cache into place, replacing an older one (a directory, or a single
    file as earlier versions wrote)."""
    old = None
    if cache_path.exists():
        old = cache_path.with_name(f".{cache_path.name}.{secrets.token_hex(6)}.old")
        os.replace(cache_path, old)
    os.replace(tmp, cache_path)
    fsync_dir(cache_path.parent)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _parts(path: Path) -> list[Path]:
    return sorted(path.glob("part-*.parquet"))


def _ref_error(source: str, text: str) -> ReferenceDataError:
    return ReferenceDataError(
        f"{source}: {text}",
        hint="fix the reference CSV (one row per key, all listed columns) and upload it again",
    )


class ReferenceTable:
    """Read side of a reference cache written by :func:`prepare_reference`."""

    def __init__(
        self, cache_path: str | Path, *, hold_max_bytes: int = REFERENCE_MEMORY_DEFAULT
    ) -> None:
        self.path = Path(cache_path)
        self.hold_max_bytes = hold_max_bytes
        self._meta: dict[str, Any] | None = None

    @property
    def parts(self) -> list[Path]:
        """The cache's Parquet files."""
        parts = _parts(self.path)
        if not parts:
            raise self._unreadable(FileNotFoundError(f"no reference cache at {self.path}"))
        return parts

    @property
    def columns(self) -> list[str]:
        """The output column names, in order."""
        return list(self._read_meta()["columns"])

    @property
    def holdable(self) -> bool:
        """Whether :meth:`fields` may hold this cache in memory: its keys and rendered fields
        (polars' estimate, plus the sorted hashes) take up to ``hold_max_bytes``
        (pipeline.reference_memory). A larger cache is scanned chunk by chunk, so no process
        holds a large reference."""
        return int(self._read_meta()["memory"]) <= self.hold_max_bytes

    def fields(self, keys: pl.Series) -> pl.DataFrame | None:
        """One row per key, in the keys' order: the key as the reference has it
        (``REFERENCE_KEY_COLUMN``, null when it has no such key) and the output fields as CSV
        text (``REFERENCE_FIELDS_COLUMN``). From the cache held in memory (read on first use);
        None when it is not to be held (too large, or two keys share a hash)."""
        if not self.holdable:
            return None
        try:  # a cache prepared again at the same path is another directory, swapped in
            stat = self.path.stat()
            identity = (self.path, stat.st_ino, stat.st_mtime_ns)
            index = held(identity, self._load_index)
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise self._unreadable(exc) from exc
        if index is None:
            return None
        keys = keys.cast(pl.String)
        return index.find(keys, keys.to_frame().select(hash_keys(pl.first())).to_series())

    def _load_index(self) -> KeyIndex | None:
        columns = [REFERENCE_KEY_COLUMN, REFERENCE_FIELDS_COLUMN]
        return KeyIndex.load(self.parts, _REF_HASH_COLUMN, columns)

    def _read_meta(self) -> dict[str, Any]:
        if self._meta is None:
            try:
                self._meta = dict(json.loads((self.path / _META_FILE).read_text()))
            except (OSError, ValueError) as exc:
                raise self._unreadable(exc) from exc
        return self._meta

    def lookup(self, keys: pl.Series) -> pl.DataFrame:
        """Reference rows whose key is in ``keys`` (key column ``REFERENCE_KEY_COLUMN`` first,
        then the output columns).

        The filter is pushed into the Parquet scan, so only matching rows are materialised.
        """
        # Not .unique(): is_in copes with repeats and unique() costs more than it saves.
        hashes = keys.to_frame().select(hash_keys(pl.first().drop_nulls())).to_series()
        try:
            return (
                pl.scan_parquet(self.parts)
                .filter(pl.col(_REF_HASH_COLUMN).is_in(hashes.implode()))
                .select(REFERENCE_KEY_COLUMN, *self.columns)
                .collect()
            )
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise self._unreadable(exc) from exc

    def _unreadable(self, exc: BaseException) -> ReferenceDataError:
        return ReferenceDataError(
            f"reference cache {self.path.name} is unreadable: {_first_line(exc)}",
            hint="prepare the reference data again",
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
