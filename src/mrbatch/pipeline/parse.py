"""Parsing the records of a chunk into a frame of text columns, vectorised.

Fields of a record without ``"`` are split on every comma; a record with ``"`` is parsed by the
stdlib ``csv`` module in strict mode, and one it refuses (``"ab"c``, a line break outside
quotes) is rejected with the reason, never silently repaired.

Speed: a body proven to hold one record per line (quoted or not) is read by polars' own CSV
reader in one pass (:mod:`mrbatch.pipeline.lines`); anything else takes the general path here,
which is still vectorised for every record without ``"``. All give identical results for the
same records (property-tested).
"""

from __future__ import annotations

import csv
import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import polars as pl

from ..errors import InputError

__all__ = ["CSV", "Dialect", "count_records", "line_count", "regex_char"]


@dataclass(frozen=True)
class Dialect:
    """A CSV dialect: the field delimiter and the quote character. ``quote`` is NUL for "no
    quoting": input text never holds NUL (it is refused as binary), so counting it finds none
    and every record takes the plain path."""

    delimiter: str = ","
    quote: str = '"'

    @classmethod
    def of(cls, delimiter: str, quote: str | None) -> Dialect:
        return cls(delimiter, quote or "\0")

    def reader_options(self) -> dict[str, Any]:
        """Options for the stdlib csv module."""
        if self.quote == "\0":
            return {"delimiter": self.delimiter, "quoting": csv.QUOTE_NONE}
        return {"delimiter": self.delimiter, "quotechar": self.quote}


CSV = Dialect()


# Internal column names start with NUL: input text never contains NUL (it is refused as binary),
# so they can never collide with a header name.
ROW, LINE, TEXT, QUOTES, EXTRA, REASON, HIT = (
    "\0row",
    "\0line",
    "\0text",
    "\0quotes",
    "\0extra",
    "\0reason",
    "\0hit",
)


def header_end(data: bytes, source: str, dialect: Dialect = CSV) -> int:
    """Byte offset just after the header record (the first record, quote-aware)."""
    end = data.find(b"\n")
    end = len(data) if end < 0 else end + 1
    quote = dialect.quote.encode()
    while data.count(quote, 0, end) % 2:
        if end >= len(data):
            raise InputError(
                f"{source}: line 1: the header has a quoted name that is never closed",
                hint="close the quote in the header",
            )
        nxt = data.find(b"\n", end)
        end = len(data) if nxt < 0 else nxt + 1
    if not data[:end].strip():
        raise InputError(
            f"{source} is empty: expected a header row naming the columns, then one record per line"
            if not data.strip()
            else f"{source}: line 1 is blank: expected a header row naming the columns",
            hint="upload a CSV file with a header and records",
        )
    return end


def parse_header(raw: bytes, source: str, dialect: Dialect = CSV) -> list[str]:
    text = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
    quote = dialect.quote
    if "\r" in text and quote not in text:
        # Lines ended by CR alone (classic Mac OS): the whole file reads as one header line.
        raise InputError(
            f"{source}: line 1 holds a carriage return (\\r) inside it: the file's lines end"
            " with CR alone; mrbatch reads lines ended by LF or CRLF",
            hint="save the file with LF (Unix) or CRLF (Windows) line endings",
        )
    if quote not in text:
        return text.split(dialect.delimiter)
    try:
        rows = list(csv.reader([text], strict=True, **dialect.reader_options()))
    except csv.Error as exc:
        raise InputError(f"{source}: line 1: the header is not valid CSV: {exc}") from exc
    if len(rows) != 1:
        raise InputError(f"{source}: line 1: the header is not valid CSV")
    return rows[0]


def line_count(body: bytes) -> int:
    """Records in a body of one record per line (the last may lack its line end)."""
    return body.count(b"\n") + (not body.endswith(b"\n"))  # C-level: ~8 ms for 30 MB


def parse_general(
    body: bytes, header: list[str], first_line: int, source: str, dialect: Dialect = CSV
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(good, structural rejects) for any body: quoted fields, ragged rows, blank lines, CR.

    Records without ``"`` are split vectorised; only records with ``"`` go through the csv
    module, so a file with a few quoted values stays nearly as fast as the fast path.
    """
    records = _records(body.decode("utf-8"), first_line, source, dialect.quote)
    ncols = len(header)
    comma = dialect.delimiter
    names = [ROW, LINE, *header]
    plain = records.filter(pl.col(QUOTES) == 0).with_columns(
        (pl.col(TEXT).str.count_matches(comma, literal=True) + 1).alias("\0n")
    )
    split = pl.col(TEXT).str.split_exact(comma, ncols - 1).struct.rename_fields(header)
    parts = [plain.filter(pl.col("\0n") == ncols).select(ROW, LINE, split).unnest(TEXT)]

    bad_rows: list[tuple[Any, ...]] = []
    ragged = plain.filter(pl.col("\0n") != ncols)
    for row, line, text in ragged.select(ROW, LINE, TEXT).iter_rows():
        bad_rows.append(_structural(row, line, text.split(comma), ncols))

    quoted = records.filter(pl.col(QUOTES) > 0)
    fast = _parse_quoted_fast(quoted, header, dialect)
    if fast is not None:
        parts.append(fast)
        quoted = quoted.filter(~pl.col(ROW).is_in(fast.get_column(ROW).implode()))
    parsed = _parse_quoted(quoted.get_column(TEXT).to_list(), dialect)
    keep = [i for i, values in enumerate(parsed) if type(values) is list and len(values) == ncols]
    if len(keep) < len(parsed):
        kept = set(keep)
        for i, values in enumerate(parsed):
            if i in kept:
                continue
            row, line, raw = quoted.item(i, ROW), quoted.item(i, LINE), quoted.item(i, TEXT)
            if isinstance(values, str):  # the csv module's complaint; keep the raw text
                reason = f"line {line}: malformed quoting: {values}"
                extra = json.dumps([raw], ensure_ascii=False)
                bad_rows.append((row, line, *([None] * ncols), extra, reason))
            else:
                bad_rows.append(_structural(row, line, values, ncols))
    if keep:
        rows = parsed if len(keep) == len(parsed) else [parsed[i] for i in keep]
        frame = pl.DataFrame(
            [pl.Series(name, list(map(itemgetter(j), rows)), pl.String)
             for j, name in enumerate(header)]
        )  # fmt: skip
        ids = quoted.select(ROW, LINE)[keep]
        parts.append(pl.concat([ids, frame], how="horizontal"))
    good = pl.concat(parts) if len(parts) > 1 else parts[0]
    if len(parts) > 1:
        good = good.sort(ROW)
    good = good.with_columns([pl.when(pl.col(c) != "").then(pl.col(c)).alias(c) for c in header])

    types: dict[str, Any] = {ROW: pl.Int64, LINE: pl.Int64, **dict.fromkeys(header, pl.String)}
    bad_types = {**types, EXTRA: pl.String, REASON: pl.String}
    bad = pl.DataFrame(bad_rows, schema=bad_types, orient="row").sort(ROW)
    return good.select(names), bad


# A field the csv module (strict) reads exactly as polars' reader does: unquoted without any
# quote, or quoted from its first character to its last with inner quotes doubled. Carriage
# returns are left to the csv module.
def regex_char(char: str) -> str:
    """One character as a Rust regex literal (inside a class too)."""
    return char if char in ",;'\"" else f"\\x{{{ord(char):x}}}"


def _field(dialect: Dialect) -> str:
    q, d = regex_char(dialect.quote), regex_char(dialect.delimiter)
    return f"(?:[^{q}{d}\\r]*|{q}(?:[^{q}\\r]|{q}{q})*{q})"


def _parse_quoted_fast(
    quoted: pl.DataFrame, header: list[str], dialect: Dialect = CSV
) -> pl.DataFrame | None:
    """The quoted records that are well formed and have the header's field count, parsed by
    polars' reader in one pass (``ROW``, ``LINE``, the header's columns); None when there is
    none, or the reader does not give one row per record (the csv module then reads them all).

    Spreadsheet and database exports quote every field: without this, every one of their
    records would go through the csv module, several times slower than the rest."""
    if quoted.is_empty():
        return None
    # Well formed with exactly the header's field count, in one linear pass of the regex.
    field, d = _field(dialect), regex_char(dialect.delimiter)
    exact = f"^{field}(?:{d}{field}){{{len(header) - 1}}}$"
    good = quoted.filter(pl.col(TEXT).str.contains(exact))
    if good.is_empty():
        return None
    text = "\n".join(good.get_column(TEXT).to_list()) + "\n"
    try:
        frame = pl.read_csv(
            text.encode("utf-8"),
            separator=dialect.delimiter,
            has_header=False,
            schema=dict.fromkeys(header, pl.String),
            quote_char=dialect.quote,
            truncate_ragged_lines=False,
            raise_if_empty=False,
        )
    except pl.exceptions.PolarsError:
        return None
    if frame.height != good.height:
        return None
    return pl.concat([good.select(ROW, LINE), frame], how="horizontal")


def _parse_quoted(texts: list[str], dialect: Dialect = CSV) -> list[list[str] | str]:
    """Fields of each record text, or the csv module's complaint about it (strict mode).

    One reader over all records is much faster than one per record. It is trusted only when it
    yields exactly one row per record: a record the reader sees as unfinished swallows the next
    one (fewer rows) and a line break outside quotes raises, so any misalignment is detected and
    the records are then parsed one by one.
    """
    if not texts:
        return []
    try:
        # Hundreds of thousands of new lists would trigger many full garbage collections
        # (measured: half the time of this path); none of them can form a cycle.
        with _gc_paused():
            rows: list[list[str] | str] = list(
                csv.reader(texts, strict=True, **dialect.reader_options())
            )
        if len(rows) == len(texts):
            return rows
    except csv.Error:
        pass
    out: list[list[str] | str] = []
    for text in texts:
        try:
            one = list(csv.reader([text], strict=True, **dialect.reader_options()))
        except csv.Error as exc:
            out.append(str(exc))
            continue
        out.append(one[0] if len(one) == 1 else "a line break outside quotes")
    return out


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _structural(row: int, line: int, values: list[str], ncols: int) -> tuple[Any, ...]:
    padded = [v or None for v in values[:ncols]] + [None] * (ncols - len(values))
    extra = json.dumps(values[ncols:], ensure_ascii=False) if len(values) > ncols else None
    word = "field" if len(values) == 1 else "fields"
    reason = f"line {line}: {len(values)} {word}, the header has {ncols}"
    return (row, line, *padded, extra, reason)


def _records(text: str, first_line: int, source: str, quote: str = '"') -> pl.DataFrame:
    """Records of a body: ``ROW`` (1-based), ``LINE``, ``TEXT`` (final ``\\r`` dropped) and
    ``QUOTES`` (count of ``"``). Blank lines are dropped; InputError for an unterminated quote."""
    lines = pl.Series(TEXT, [text]).str.split("\n").explode().to_frame()
    lines = lines.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(LINE))
    if quote in text:
        lines = lines.with_columns(
            pl.col(TEXT).str.count_matches(quote, literal=True).cast(pl.Int64).alias(QUOTES)
        )
        odd = (lines.get_column(QUOTES).cum_sum() % 2) == 1  # inside quotes after this line
        if odd[-1]:
            opener = text.rfind(quote)
            at = first_line + text.count("\n", 0, opener)
            raise InputError(
                f"{source}: line {at}: a quoted field opened here is never closed",
                hint='close the quote, or double a quote that belongs to the value ("")',
            )
        if odd.any():  # some record spans lines: group lines into records
            starts = (~odd.shift(1, fill_value=False)).cum_sum()
            lines = (
                lines.with_columns(starts.alias("\0rec"))
                .group_by("\0rec", maintain_order=True)
                .agg(pl.col(TEXT).str.join("\n"), pl.col(LINE).first(), pl.col(QUOTES).sum())
                .drop("\0rec")
            )
    else:
        lines = lines.with_columns(pl.lit(0, pl.Int64).alias(QUOTES))
    recs = lines.with_columns(pl.col(TEXT).str.strip_suffix("\r")).filter(pl.col(TEXT) != "")
    return recs.with_columns(
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(ROW),
        pl.col(LINE) + first_line,
    )


def count_records(data: bytes, quote: str = '"') -> int:
    """Number of records in a CSV body without header (quote-aware; blank lines not counted).
    ``quote`` "" or NUL: nothing is quoted (JSON Lines: one record per non-blank line).

    Raises InputError for a quoted field that is never closed.
    """
    if not data:
        return 0
    quote = quote or "\0"
    if quote.encode() not in data and not _may_have_blank_line(data):
        return line_count(data)
    text = data.decode("utf-8", errors="replace")
    return _records(text, 1, "data", quote).height


def _may_have_blank_line(data: bytes) -> bool:
    return (
        b"\n\n" in data
        or b"\n\r\n" in data
        or data.startswith((b"\n", b"\r\n"))
        or data.endswith(b"\n\r")
        or data == b"\r"
    )
