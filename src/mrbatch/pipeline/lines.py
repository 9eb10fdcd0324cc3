"""The fast paths for a chunk's records: a body proven to hold one record per line is read by
polars' own CSV reader in one pass, nothing done per record in Python.

A body without quotes (and without lone ``\\r``) is accepted when a delimiter count proves no
record is ragged; a body whose every line is one well-formed record, quoted or not (as
spreadsheet and database exports write them), once a regex has proven it. Either returns None
when it cannot prove its case, and :func:`~mrbatch.pipeline.parse.parse_general` decides.
Both give what the general path gives for the same records (property-tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import polars as pl

from .csvsplit import BOM
from .parse import CSV, LINE, ROW, Dialect, line_count, regex_char

__all__ = ["QuotedLines", "parse_fast", "parse_quoted_lines"]


def parse_fast(
    body: bytes, header: list[str], first_line: int, dialect: Dialect = CSV
) -> pl.DataFrame | None:
    """Parse a quote-free body with polars' CSV reader, or None when the general path is needed.

    The reader cannot tell a missing field from an empty one, nor a blank line from a record of
    empty fields, so the result is accepted only when the comma total proves every line has
    exactly the header's field count (polars refuses longer rows itself). Lone ``\\r`` are sent
    to the general path because the reader drops a ``\\r`` before a comma, and so is a body
    starting with a BOM, which the reader would drop.
    """
    ncols = len(header)
    delimiter = dialect.delimiter.encode()
    if ncols < 2 or not body or dialect.quote.encode() in body or body.startswith(BOM):
        return None
    if b"\r" in body and body.count(b"\r") != body.count(b"\r\n") + body.endswith(b"\r"):
        return None
    lines = line_count(body)
    if body.count(delimiter) != (ncols - 1) * lines:
        return None
    return _read_lines(body, header, first_line, dialect, quote_char=None, lines=lines)


@dataclass(frozen=True)
class QuotedLines:
    """A body read by :func:`parse_quoted_lines`. ``plain_unquoted``: no value holds the
    delimiter, the quote character or a line break, so each line with its quote characters
    removed is the line a CSV writer (minimal quoting, empty values as nothing) writes for its
    record."""

    frame: pl.DataFrame
    plain_unquoted: bool


def parse_quoted_lines(
    body: bytes, header: list[str], first_line: int, dialect: Dialect = CSV
) -> QuotedLines | None:
    """Parse a body whose every line is one well-formed record of the header's field count,
    quoted or not (as spreadsheet and database exports write them), with polars' reader in one
    pass; None when the general path is needed (a blank line, a line break inside quotes, a
    carriage return, a BOM, or any record the strict csv module would read otherwise).

    One regex proves the shape (a field is ``parse._field``'s, without line breaks), so nothing
    is done per record: the general path splits the body into records,
    checks each, joins them and copies them again before polars reads them. A stricter one is
    tried first (quotes only around whole values that hold no delimiter and no quote, as
    exports quote every field): it proves the shape too, and that the lines need no more than
    their quotes removed to be written (QuotedLines.plain_unquoted)."""
    ncols = len(header)
    if ncols < 2 or not body or b"\r" in body or body.startswith(BOM) or dialect.quote == "\0":
        return None
    q, d = regex_char(dialect.quote), regex_char(dialect.delimiter)
    plain_field = f"(?:[^{q}{d}\\n]*|{q}[^{q}{d}\\n]*{q})"
    field = f"(?:[^{q}{d}\\n]*|{q}(?:[^{q}\\n]|{q}{q})*{q})"
    # One copy of the body, in polars (a Python str of it would be another, up to 4x larger),
    # as pieces of whole lines: the regex engine allocates about four bytes per byte it checks
    # (44 MB for an 8 MB chunk in one piece, 18 MB in pieces of 1 MB, in less CPU).
    try:
        text = pl.Series(_whole_lines(body, _CHECK_PIECE), dtype=pl.Binary).cast(pl.String)
    except pl.exceptions.PolarsError:  # not UTF-8: the general path says where
        return None
    plain = bool(text.str.contains(_lines_of(plain_field, d, ncols)).all())
    if not plain and not text.str.contains(_lines_of(field, d, ncols)).all():
        return None
    del text
    # quoted "" is empty too, as in the general path
    empty_is_null = [pl.when(pl.col(c) != "").then(pl.col(c)).alias(c) for c in header]
    frame = _read_lines(
        body, header, first_line, dialect,
        quote_char=dialect.quote, lines=line_count(body), values=empty_is_null,
    )  # fmt: skip
    return None if frame is None else QuotedLines(frame, plain)


def _lines_of(field: str, delimiter: str, ncols: int) -> str:
    """A regex matching whole lines of ``ncols`` fields, each line ended but maybe the last."""
    record = f"{field}(?:{delimiter}{field}){{{ncols - 1}}}"
    return f"\\A(?:{record}\\n)*(?:{record})?\\z"


_CHECK_PIECE: Final = 1 << 20


def _whole_lines(body: bytes, size: int) -> list[bytes]:
    """``body`` cut after the first line end at or beyond every ``size`` bytes (so every piece
    but the last ends with a line end, and a piece is never empty)."""
    pieces, start = [], 0
    while start < len(body):
        end = body.find(b"\n", start + size - 1)
        end = len(body) if end < 0 else end + 1
        pieces.append(body[start:end])
        start = end
    return pieces


def _read_lines(
    body: bytes, header: list[str], first_line: int, dialect: Dialect, *,
    quote_char: str | None, lines: int, values: list[pl.Expr] | None = None,
) -> pl.DataFrame | None:  # fmt: skip
    """A body proven one record per line, read by polars (text, empty as null) behind the row
    and line columns, ``values`` (default: the columns as read); None when the reader fails or
    does not give ``lines`` rows: the general path decides then."""
    try:
        frame = pl.read_csv(
            body,
            separator=dialect.delimiter,
            has_header=False,
            schema=dict.fromkeys(header, pl.String),
            quote_char=quote_char,
            empty_string_is_null=True,
            truncate_ragged_lines=False,
            raise_if_empty=False,
        )
    except pl.exceptions.PolarsError:
        return None
    if frame.height != lines:
        return None
    index = pl.int_range(1, frame.height + 1, dtype=pl.Int64)
    return frame.select(
        index.alias(ROW), (index + (first_line - 1)).alias(LINE), *(values or [pl.all()])
    )
