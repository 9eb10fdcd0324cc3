"""Reference data for enrichment: a columnar cache of one reference version (Parquet, with a
64-bit hash of each key), built once per region, and the per-chunk lookup that reads only the
rows a chunk's keys need, so no worker holds the whole reference table."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import polars as pl

from ..config.settings import RESERVED_COLUMN_PREFIX
from ..errors import ConfigError, ReferenceDataError

__all__ = [
    "REFERENCE_KEY_COLUMN",
    "Enrichment",
    "ReferenceInfo",
    "ReferenceTable",
    "prepare_reference",
    "reference_cache_tag",
]


# Name of the key column in a reference cache file (output names may not use it).
REFERENCE_KEY_COLUMN = RESERVED_COLUMN_PREFIX + "_key"


# Reference cache layout and lookup, chosen by measurement (1M-row reference, 250k random keys
# per lookup, 2 cores, best of 4): Parquet lz4 with 64k-row groups + is_in filter pushed into
# the scan 68 ms / +77 MiB RSS; zstd 64k 81 ms; zstd 16k 100 ms; uncompressed 69 ms but 27 MB
# on disk vs 22 MB; IPC (scan_ipc + filter) 89 ms / +233 MiB, no row-level pushdown; Parquet
# sorted by key 70 ms (random keys skip no row group); lazy semi-join instead of is_in 51 ms
# but +190 MiB (it reads every column of every row); parallel="prefiltered" same as "auto";
# reading the whole cache is 22 ms but materialises the whole reference in every worker.
# A u64-hash prefilter took 31 ms, but polars' hash is not stable across versions or CPUs, and
# a cache built by one worker is read by others, so it was not adopted.
_REF_COMPRESSION: Final = "lz4"


_REF_ROW_GROUP = 65_536


# The cache also holds a 64-bit hash of each key, so a lookup filters on integers (61 ms
# instead of 89 ms for 100k keys against 1M rows, one thread); the join afterwards compares the
# real keys, so a hash collision can only fetch one row too many, never a wrong one. polars'
# hash may change between polars versions and CPUs: reference_cache_tag() goes into the cache
# file name, so a cache built with another hash is never read, only rebuilt.
_REF_HASH_COLUMN: Final = "__mrbatch_hash"


_REF_HASH_SEED: Final = 7_919


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
        if REFERENCE_KEY_COLUMN in outputs:
            raise ConfigError(
                f"enrichment: output column name {REFERENCE_KEY_COLUMN!r} is reserved"
            )


@dataclass(frozen=True)
class ReferenceInfo:
    """What :func:`prepare_reference` found: the number of reference rows."""

    rows: int


def prepare_reference(
    csv_path: str | Path, cache_path: str | Path, enrichment: Enrichment, *, source: str
) -> ReferenceInfo:
    """Check a reference CSV and write its columnar cache atomically; return its row count.

    Every value is read as text. The cache (Parquet) holds the key as
    ``REFERENCE_KEY_COLUMN`` and the listed columns under their output names. Raises
    ReferenceDataError (naming ``source``) for a missing file or column, no rows, an empty key or
    duplicate keys; on error no cache file is left behind. Streams, so memory stays low.
    """
    csv_path, cache_path = Path(csv_path), Path(cache_path)
    lf = pl.scan_csv(csv_path, infer_schema=False, raise_if_empty=False)
    try:
        names = lf.collect_schema().names()
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise _ref_error(source, f"cannot read the reference data: {_first_line(exc)}") from exc
    wanted = [enrichment.reference_key, *enrichment.columns]
    missing = [c for c in dict.fromkeys(wanted) if c not in names]
    if missing:
        raise _ref_error(
            source,
            f"reference data lacks column {', '.join(map(repr, missing))} "
            f"(it has {', '.join(map(repr, names))})",
        )
    lf = lf.select(
        pl.col(enrichment.reference_key).alias(REFERENCE_KEY_COLUMN),
        *[pl.col(src).alias(dst) for src, dst in enrichment.columns.items()],
        pl.col(enrichment.reference_key).hash(_REF_HASH_SEED).alias(_REF_HASH_COLUMN),
    )
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(f".{cache_path.name}.{secrets.token_hex(6)}.tmp")
    try:
        try:
            # Synced before the rename: a cache truncated by a crash would fail every run.
            lf.sink_parquet(
                tmp,
                compression=_REF_COMPRESSION,
                row_group_size=_REF_ROW_GROUP,
                sync_on_close="all",
            )
        except pl.exceptions.PolarsError as exc:
            detail = _first_line(exc)
            raise _ref_error(source, f"cannot parse the reference data: {detail}") from exc
        rows = _check_reference(tmp, enrichment, source)
        os.replace(tmp, cache_path)
    finally:
        tmp.unlink(missing_ok=True)
    return ReferenceInfo(rows=rows)


def reference_cache_tag() -> str:
    """A short tag naming the key hash this polars computes (see _REF_HASH_COLUMN)."""
    probe = pl.Series(["mrbatch-reference-probe"]).hash(_REF_HASH_SEED).item()
    return f"{int(probe) & 0xFFFFFFFF:08x}"


def _check_reference(path: Path, enrichment: Enrichment, source: str) -> int:
    keys = pl.scan_parquet(path).select(REFERENCE_KEY_COLUMN)
    stats = keys.select(
        pl.len().alias("rows"), pl.col(REFERENCE_KEY_COLUMN).null_count().alias("nulls")
    ).collect()
    rows, nulls = stats.item(0, "rows"), stats.item(0, "nulls")
    if rows == 0:
        raise _ref_error(source, "reference data has no rows")
    if nulls:
        raise _ref_error(
            source, f"reference key column {enrichment.reference_key!r} is empty on {nulls} row(s)"
        )
    dupes = (
        keys.group_by(REFERENCE_KEY_COLUMN)
        .len()
        .filter(pl.col("len") > 1)
        .select(REFERENCE_KEY_COLUMN)
        .sort(REFERENCE_KEY_COLUMN)
        .collect(engine="streaming")
        .to_series()
    )
    if len(dupes):
        shown = ", ".join(repr(k) for k in dupes.head(5).to_list())
        more = f" and {len(dupes) - 5} more" if len(dupes) > 5 else ""
        raise _ref_error(
            source,
            f"reference data has duplicate keys in column {enrichment.reference_key!r}: "
            f"{shown}{more}",
        )
    return int(rows)


def _ref_error(source: str, text: str) -> ReferenceDataError:
    return ReferenceDataError(
        f"{source}: {text}",
        hint="fix the reference CSV (one row per key, all listed columns) and upload it again",
    )


class ReferenceTable:
    """Read side of a reference cache written by :func:`prepare_reference`."""

    def __init__(self, cache_path: str | Path) -> None:
        self.path = Path(cache_path)

    def lookup(self, keys: pl.Series) -> pl.DataFrame:
        """Reference rows whose key is in ``keys`` (key column ``REFERENCE_KEY_COLUMN`` first).

        The filter is pushed into the Parquet scan, so only matching rows are materialised.
        """
        # Not .unique(): is_in copes with repeats and unique() costs more than it saves.
        wanted = keys.drop_nulls().cast(pl.String).hash(_REF_HASH_SEED)
        try:
            return (
                pl.scan_parquet(self.path)
                .filter(pl.col(_REF_HASH_COLUMN).is_in(wanted.implode()))
                .drop(_REF_HASH_COLUMN)
                .collect()
            )
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise ReferenceDataError(
                f"reference cache {self.path.name} is unreadable: {_first_line(exc)}",
                hint="prepare the reference data again",
            ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
