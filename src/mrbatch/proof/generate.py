"""Seeded generators of orders files and their reference data, shaped like the sample workload.

Used by the benchmarks and the load generator. Vectorised with polars (hash-based pseudo-random
columns), so millions of rows take a second or two; the same arguments give the same bytes.
"""

from __future__ import annotations

import csv
import io
from functools import cache
from pathlib import Path

import polars as pl

from ..config.initialize import sample_bytes

__all__ = ["ORDER_COLUMNS", "orders_frame", "reference_frame", "write_orders", "write_reference"]

ORDER_COLUMNS = [
    "uuid",
    "Country",
    "Item Type",
    "Sales Channel",
    "Order Priority",
    "Order Date",
    "Region",
    "Ship Date",
]
# A multiplier coprime with 10**9 maps 0..10**9-1 onto itself: distinct indexes, distinct uuids.
_SPREAD = 387_420_489


@cache
def _pools() -> dict[str, pl.Series]:
    # Series made once: building one from a Python list was half of a 1,000-row file's
    # generation (the load generator makes one a file).
    rows = list(csv.reader(io.StringIO(sample_bytes("orders.csv").decode("utf-8"))))
    header, body = rows[0], rows[1:]
    return {
        name: pl.Series(name, sorted({row[i] for row in body}), dtype=pl.String)
        for i, name in enumerate(header)
    }


def _uuid(index: pl.Expr) -> pl.Expr:
    return ((index * _SPREAD) % 1_000_000_000).cast(pl.String).str.zfill(9)


def _pick(name: str, salt: int, seed: int) -> pl.Expr:
    pool = _pools()[name]
    return pl.lit(pool).gather(pl.col("i").hash(seed + salt) % len(pool))


def reference_frame(rows: int, *, seed: int = 1) -> pl.DataFrame:
    """``rows`` distinct uuids with financial columns (text, two decimals), like the sample."""
    frame = pl.DataFrame({"i": pl.int_range(rows, eager=True, dtype=pl.UInt64)})
    units = pl.col("i").hash(seed + 11) % 10_000 + 1
    price = (pl.col("i").hash(seed + 12) % 60_000 + 100).cast(pl.Float64) / 100
    cost = price * 0.7
    return frame.select(
        uuid=_uuid(pl.col("i")),
        unitsSold=units.cast(pl.String),
        unitPrice=price.round(2).cast(pl.String),
        unitCost=cost.round(2).cast(pl.String),
        totalRevenue=(price * units).round(2).cast(pl.String),
        totalCost=(cost * units).round(2).cast(pl.String),
        totalProfit=((price - cost) * units).round(2).cast(pl.String),
    )


def orders_frame(
    rows: int, *, reference_rows: int, seed: int = 1, invalid_fraction: float = 0.0
) -> pl.DataFrame:
    """``rows`` orders whose uuids come from a reference of ``reference_rows``; a share
    ``invalid_fraction`` of them (chosen by the seed) break the sample schema."""
    frame = pl.DataFrame({"i": pl.int_range(rows, eager=True, dtype=pl.UInt64)})
    ref_index = pl.col("i").hash(seed) % reference_rows
    invalid = (pl.col("i").hash(seed + 99) % 1_000_000) < int(invalid_fraction * 1_000_000)
    return frame.select(
        uuid=pl.when(invalid).then(pl.lit("NOT-A-UUID")).otherwise(_uuid(ref_index)),
        **{name: _pick(name, salt, seed) for salt, name in enumerate(ORDER_COLUMNS[1:], 1)},
    )


def write_reference(path: Path, rows: int, *, seed: int = 1) -> Path:
    reference_frame(rows, seed=seed).write_csv(path)
    return path


def write_orders(
    path: Path, rows: int, *, reference_rows: int, seed: int = 1, invalid_fraction: float = 0.0
) -> Path:
    orders_frame(
        rows, reference_rows=reference_rows, seed=seed, invalid_fraction=invalid_fraction
    ).write_csv(path)
    return path
