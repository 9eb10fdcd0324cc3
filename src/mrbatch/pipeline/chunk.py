"""One chunk through the pipeline: parse, validate (JSON Schema as polars expressions), enrich
(reference join), write. Pure over bytes (plus the reference cache file), so the same input,
schema and reference data always give byte-identical output.

Output
    CSV rows without header, ``\\n`` line ends, UTF-8, minimal quoting. An empty value is
    written as nothing (not ``""``), except in a one-column file, where it must be ``""`` so
    the row is not a blank line.

Rejected rows
    CSV rows ``row, line, reason, <input columns...>, _extra``; ``row`` is the 1-based index of
    the record among the chunk's records (the merge adds earlier chunks' counts with
    :func:`~mrbatch.pipeline.rejected.renumber_rejected`), ``line`` the physical line where it
    starts, ``_extra`` a JSON array of the fields beyond the header's count (for a malformed
    record: its raw text).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from ..errors import InputError
from .csvsplit import BOM, check_text
from .parse import (
    EXTRA,
    HIT,
    LINE,
    REASON,
    ROW,
    header_end,
    parse_fast,
    parse_general,
    parse_header,
)
from .reference import REFERENCE_KEY_COLUMN, Enrichment, ReferenceTable
from .schema import RecordSchema

__all__ = ["ChunkOutput", "process_chunk"]


@dataclass(frozen=True)
class ChunkOutput:
    """Result of one chunk. ``output``/``rejected`` are CSV rows without header, ``\\n`` line
    ends, minimal quoting; ``rows_in == rows_out + rows_rejected``."""

    output: bytes
    rejected: bytes
    output_header: list[str]
    rejected_header: list[str]
    rows_in: int
    rows_out: int
    rows_rejected: int


def process_chunk(
    data: bytes,
    *,
    schema: RecordSchema,
    enrichment: Enrichment | None,
    reference: ReferenceTable | None,
    first_line: int,
    source: str,
    escape_formulas: bool = False,
) -> ChunkOutput:
    """Validate and enrich one chunk (header line + records) into output and rejected rows.

    ``first_line`` is the physical line of the first record (``SplitChunk.first_line``).
    Output columns: the schema's properties in schema order (an optional property the file
    lacks is empty), then the other input columns in input order, then the enrichment's output
    columns; rows keep input order. A record is rejected when its field count differs from the
    header's, when it breaks a schema rule, or when enrichment finds no reference row for it.
    Raises InputError only for problems of the whole file (binary, not UTF-8, header, an
    unterminated quote); every record problem becomes a rejected row with a reason.

    ``escape_formulas`` (opt-in, ``output.escape_formulas``): a value that a spreadsheet would
    run as a formula (first character ``=``, ``+``, ``-``, ``@``, tab or carriage return) is
    written with a ``'`` in front, in the output and the rejected rows. It changes the values
    (``-5`` becomes ``'-5``), which is why it is off unless asked for.
    """
    if enrichment is not None and reference is None:
        raise ValueError("an enrichment needs a reference table")
    if data.startswith(BOM):
        data = data[3:]
    end_of_header = header_end(data, source)
    check_text(data, 0, end_of_header, None, 1, source)
    header = parse_header(data[:end_of_header], source)
    schema.check_header(header, source=source)
    if enrichment is not None:
        _check_enrichment_columns(header, schema, enrichment, source)
    body = data[end_of_header:]
    check_text(body, 0, len(body), None, first_line, source)

    good = parse_fast(body, header, first_line)
    bad: list[pl.DataFrame] = []
    if good is None:
        good, structural = parse_general(body, header, first_line, source)
        bad.append(structural)
    rows_in = good.height + sum(b.height for b in bad)
    absent = [c for c in schema.properties if c not in header]
    if absent:  # optional properties the file does not have: empty values
        good = good.with_columns(pl.lit(None, pl.String).alias(c) for c in absent)

    valid_mask = good.with_columns(schema.valid_expr().alias("\0valid")).get_column("\0valid")
    if not valid_mask.all():
        invalid = good.filter(~valid_mask)
        bad.append(invalid.with_columns(schema.reasons_expr().alias(REASON)))
        good = good.filter(valid_mask)

    out_cols = [pl.col(c) for c in schema.properties]
    out_cols += [pl.col(c) for c in header if c not in schema.properties]
    if enrichment is not None and reference is not None:
        good, missing = _enrich(good, enrichment, reference)
        bad.append(missing)
        out_cols += [pl.col(c) for c in enrichment.columns.values()]
    output = good.select(out_cols)
    rejected = _rejected_frame(bad, header)
    if escape_formulas:
        output, rejected = _escape_formulas(output), _escape_formulas(rejected)
    rejected_header = ["row", "line", "reason", *header, "_extra"]
    return ChunkOutput(
        output=_write_csv(output),
        rejected=_write_csv(rejected),
        output_header=output.columns,
        rejected_header=rejected_header,
        rows_in=rows_in,
        rows_out=output.height,
        rows_rejected=rejected.height,
    )


def _check_enrichment_columns(
    header: Sequence[str], schema: RecordSchema, enrichment: Enrichment, source: str
) -> None:
    if enrichment.key not in header:
        raise InputError(
            f"{source}: header lacks column {enrichment.key!r}, the key for reference data",
            hint=f"add the column {enrichment.key!r}",
        )
    taken = set(header) | set(schema.properties)
    clash = [name for name in enrichment.columns.values() if name in taken]
    if clash:
        raise InputError(
            f"{source}: column {', '.join(map(repr, clash))} is also an enrichment output column",
            hint="rename the input column; enrichment adds it",
        )


def _enrich(
    good: pl.DataFrame, enrichment: Enrichment, reference: ReferenceTable
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(matched rows with reference columns, rejects for rows without reference data)."""
    ref = reference.lookup(good.get_column(enrichment.key))
    ref = ref.select(REFERENCE_KEY_COLUMN, *enrichment.columns.values()).with_columns(
        pl.lit(True).alias(HIT)
    )
    joined = good.join(
        ref,
        left_on=enrichment.key,
        right_on=REFERENCE_KEY_COLUMN,
        how="left",
        maintain_order="left",
        coalesce=True,
    )
    hit = joined.get_column(HIT).is_not_null()
    if hit.all():  # the usual case: skip copying every column through a filter
        none = joined.clear().with_columns(pl.lit(None, pl.String).alias(REASON))
        return joined.drop(HIT), none
    missing = joined.filter(~hit).with_columns(
        pl.format(
            "{}: no reference data for '{}'",
            pl.lit(enrichment.key),
            pl.col(enrichment.key).fill_null(""),
        ).alias(REASON)
    )
    return joined.filter(hit).drop(HIT), missing


def _rejected_frame(parts: list[pl.DataFrame], header: list[str]) -> pl.DataFrame:
    cols = [pl.col(ROW), pl.col(LINE), pl.col(REASON), *map(pl.col, header)]
    no_extra = pl.lit(None, pl.String).alias(EXTRA)
    frames = [p.select(*cols, pl.col(EXTRA) if EXTRA in p.columns else no_extra) for p in parts]
    if not frames:
        text = dict.fromkeys([REASON, *header, EXTRA], pl.String)
        return pl.DataFrame(schema={ROW: pl.Int64, LINE: pl.Int64, **text})
    return pl.concat(frames).sort(ROW)


_FORMULA_START = r"^[=+\-@\t\r]"


def _escape_formulas(df: pl.DataFrame) -> pl.DataFrame:
    text = [name for name, dtype in df.schema.items() if dtype == pl.String]
    return df.with_columns(
        pl.when(pl.col(name).str.contains(_FORMULA_START))
        .then(pl.lit("'") + pl.col(name))
        .otherwise(pl.col(name))
        .alias(name)
        for name in text
    )


def _write_csv(df: pl.DataFrame) -> bytes:
    """CSV rows, no header, ``\\n``, minimal quoting; empty values are written as nothing.

    polars quotes an empty *string* (``""``) but writes null as nothing, so values are kept
    null when empty. A one-column row of an empty value would then be a blank line, which
    readers skip, so that case is written as ``""`` like the stdlib csv writer does.
    """
    if df.width == 1:
        df = df.select(pl.all().fill_null(""))
    buf = io.BytesIO()
    df.write_csv(buf, include_header=False, quote_style="necessary", line_terminator="\n")
    return buf.getvalue()
