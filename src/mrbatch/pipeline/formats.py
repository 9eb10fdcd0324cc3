"""The output format written as text (a row's fields rendered as the CSV writer renders them),
and the rejected-rows format after the chunks: renumbering a chunk's rows for the merged file,
and reading rejected rows back for display (``mrbatch errors``)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import polars as pl

from .parse import TEXT

__all__ = ["csv_fields", "csv_line", "read_rejected", "renumber_rejected"]


def csv_line(fields: list[str]) -> bytes:
    """One CSV row with minimal quoting and a ``\\n`` line end (the output format)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_MINIMAL).writerow(fields)
    return buffer.getvalue().encode("utf-8")


def csv_fields(columns: list[str]) -> pl.Expr:
    """The text columns as one CSV row of them, comma-separated, exactly as the chunk output's
    writer (polars, minimal quoting) writes them: a missing value as nothing, an empty one as
    ``""``, one holding a quote, comma or line break quoted, its quotes doubled."""
    fields = []
    for name in columns:
        value = pl.col(name)
        quoted = pl.lit('"') + value.str.replace_all('"', '""', literal=True) + pl.lit('"')
        needs = value.str.contains(r'[",\r\n]') | (value == "")
        fields.append(pl.when(value.is_null()).then(pl.lit("")).when(needs).then(quoted)
                      .otherwise(value))  # fmt: skip
    return pl.concat_str(fields, separator=",")


def renumber_rejected(data: bytes, offset: int) -> bytes:
    """Add ``offset`` to the ``row`` field of every rejected row; other bytes are unchanged."""
    if offset == 0 or not data:
        return data
    lines = pl.Series(TEXT, [data.decode("utf-8")]).str.split("\n").explode().to_frame()
    quotes = pl.col(TEXT).str.count_matches('"', literal=True).cast(pl.Int64)
    # A line starts a record when the quote count before it is even.
    starts = (quotes.cum_sum().shift(1, fill_value=0) % 2 == 0) & (pl.col(TEXT) != "")
    number = pl.col(TEXT).str.extract(r"^(\d+),", 1).cast(pl.Int64) + offset
    rest = pl.col(TEXT).str.replace(r"^\d+", "")
    fixed = pl.when(starts).then(pl.concat_str(number.cast(pl.String), rest)).otherwise(TEXT)
    return lines.select(fixed.str.join("\n")).item().encode("utf-8")


def read_rejected(data: bytes, header: list[str]) -> list[dict[str, Any]]:
    """Parse rejected rows (CSV without header line) for display.

    ``header`` is either the ``rejected_header`` the rows were written with or the input header
    (the columns between ``reason`` and ``_extra``); a row has 4 more fields than the input
    header, which tells the two apart. Returns one
    ``{"row": int, "line": int, "reason": str, "values": {column: value}, "extra": [...]}`` per
    row, in order.
    """
    out = []
    for rec in csv.reader(io.StringIO(data.decode("utf-8"), newline="")):
        if not rec:
            continue
        columns = header[3:-1] if len(header) == len(rec) else header
        out.append(
            {
                "row": int(rec[0]),
                "line": int(rec[1]),
                "reason": rec[2],
                "values": dict(zip(columns, rec[3:-1], strict=True)),
                "extra": json.loads(rec[-1]) if rec[-1] else [],
            }
        )
    return out
