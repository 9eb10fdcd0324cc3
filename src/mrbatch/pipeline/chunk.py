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
from dataclasses import dataclass, field

import polars as pl

from ..errors import UserCodeError
from .csvsplit import BOM, check_text
from .enrich import (
    ApiAnswers,
    check_enrichment_columns,
    enrich_from_api,
    enrich_from_reference,
    with_fields,
)
from .formats import csv_fields
from .lines import parse_fast, parse_quoted_lines
from .parse import (
    CSV,
    EXTRA,
    LINE,
    REASON,
    ROW,
    TEXT,
    Dialect,
    header_end,
    parse_general,
    parse_header,
)
from .reference import REFERENCE_FIELDS_COLUMN, Enrichment, ReferenceTable
from .schema import RecordSchema
from .usercode import Rules

__all__ = ["ApiAnswers", "ChunkOutput", "Extras", "process_chunk", "process_records"]


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
    # Distinct values (up to 3) of the pipeline's expected-count column in this chunk.
    counts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Extras:
    """What a declared pipeline adds to a chunk: its row checks and transforms, its HTTP
    enrichment, its expected-count column and its output columns."""

    rules: Rules | None = None
    api: ApiAnswers | None = None
    count_column: str | None = None
    columns: tuple[str, ...] | None = None


def process_chunk(
    data: bytes,
    *,
    schema: RecordSchema,
    enrichment: Enrichment | None,
    reference: ReferenceTable | None,
    first_line: int,
    source: str,
    escape_formulas: bool = False,
    dialect: Dialect = CSV,
    extras: Extras | None = None,
    header_line: bytes = b"",
) -> ChunkOutput:
    """Validate and enrich one chunk (header line + records) into output and rejected rows.

    ``header_line``: when given, the file's header line (with its line end) and ``data`` only
    the records after it, so the chunk is never copied to join them (a chunk task's body is
    held as it came from the store).

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
    if not header_line:
        if data.startswith(BOM):
            data = data[3:]
        end = header_end(data, source, dialect)
        header_line, data = data[:end], data[end:]
    header_line = header_line.removeprefix(BOM)
    end_of_header = header_end(header_line, source, dialect)
    check_text(header_line, 0, end_of_header, None, 1, source)
    header = parse_header(header_line[:end_of_header], source, dialect)
    schema.check_header(header, source=source)
    body = data
    check_text(body, 0, len(body), None, first_line, source)

    good = parse_fast(body, header, first_line, dialect)
    # A quote-free body in the default dialect: every record is one line that a CSV writer
    # would write as it is; a quoted one, once its quotes are removed, when none was needed.
    lines = body if good is not None and dialect == CSV else None
    unquote = False
    quoted = None if good is not None else parse_quoted_lines(body, header, first_line, dialect)
    if quoted is not None:
        good = quoted.frame
        if quoted.plain_unquoted and dialect == CSV:
            lines, unquote = body, True
    bad: list[pl.DataFrame] = []
    if good is None:
        good, structural = parse_general(body, header, first_line, source, dialect)
        bad.append(structural)
    return process_records(
        good,
        bad,
        header,
        schema=schema,
        enrichment=enrichment,
        reference=reference,
        source=source,
        escape_formulas=escape_formulas,
        extras=extras,
        lines=lines,
        unquote_lines=unquote,
    )


def process_records(
    good: pl.DataFrame,
    bad: list[pl.DataFrame],
    header: list[str],
    *,
    schema: RecordSchema,
    enrichment: Enrichment | None,
    reference: ReferenceTable | None,
    source: str,
    escape_formulas: bool = False,
    extras: Extras | None = None,
    lines: bytes | None = None,
    unquote_lines: bool = False,
) -> ChunkOutput:
    """The rest of a chunk once its records are parsed (any input format): ``good`` holds
    ``ROW``, ``LINE`` and one text column per ``header`` name; ``bad`` the structural rejects.
    Schema, row checks, enrichment (reference data or an HTTP API), transforms, output.

    With a reference small enough to be held and no transform (see _as_text), each output row
    is written as text: its input columns rendered as the CSV writer renders them, then the
    reference's fields as the cache holds them rendered; the same bytes, without a join on
    columns. ``lines``: the body ``good`` was read from, when each record is one line of it
    that the writer would write unchanged (see process_chunk), or with its double quotes
    removed (``unquote_lines``); when the output's input columns are the header's, in its
    order, a row's text is then its line, read as it is (26 ms less for a quoted 100k-row
    chunk than rendering its columns, one thread)."""
    if enrichment is not None and reference is None:
        raise ValueError("an enrichment needs a reference table")
    extras = extras or Extras()
    api = extras.api
    for join in (enrichment, api):
        if join is not None:
            check_enrichment_columns(header, schema, join.key, join.columns, source)
    rows_in = good.height + sum(b.height for b in bad)
    absent = [c for c in schema.properties if c not in header]
    if absent:  # optional properties the file does not have: empty values
        good = good.with_columns(pl.lit(None, pl.String).alias(c) for c in absent)
    inputs = [*schema.properties, *(c for c in header if c not in schema.properties)]
    as_text = not escape_formulas and _as_text(inputs, enrichment, reference, extras)
    if as_text and lines is not None and inputs == header:
        # Quotes removed from the bytes: 9 ms for a 100k-row chunk, from the lines 18 ms.
        texts = _line_texts(lines.translate(None, b'"') if unquote_lines else lines)
        good = good.with_columns(texts) if len(texts) == good.height else good
    counts: list[str] = []
    if extras.count_column is not None:
        values = good.get_column(extras.count_column).unique().sort().head(3)
        counts = [v if v is not None else "" for v in values.to_list()]

    valid_mask = good.with_columns(schema.valid_expr().alias("\0valid")).get_column("\0valid")
    if not valid_mask.all():
        invalid = good.filter(~valid_mask)
        bad.append(invalid.with_columns(schema.reasons_expr().alias(REASON)))
        good = good.filter(valid_mask)
    user_columns = [*header, *absent]
    if extras.rules is not None and good.height:
        reasons = extras.rules.check(good.select(user_columns))
        if reasons is not None and reasons.null_count() < good.height:
            failed = reasons.is_not_null()
            bad.append(good.filter(failed).with_columns(reasons.filter(failed).alias(REASON)))
            good = good.filter(~failed)

    fields = None
    if as_text and enrichment is not None and reference is not None:
        fields = reference.fields(good.get_column(enrichment.key))
    missing = None
    if fields is not None:  # the reference is held: its fields come in the rows' order
        assert enrichment is not None
        good, missing = with_fields(good, fields, enrichment)
    elif enrichment is not None and reference is not None:
        good, missing = enrich_from_reference(good, enrichment, reference)
    elif api is not None:
        good, missing = enrich_from_api(good, api)
    if missing is not None:
        bad.append(missing)
    rejected = _rejected_frame(bad, header)
    if fields is not None:
        assert enrichment is not None
        text = pl.col(TEXT) if TEXT in good.columns else csv_fields(inputs).alias(TEXT)
        output = _write_lines(good.select(text, REFERENCE_FIELDS_COLUMN))
        output_header, rows_out = [*inputs, *enrichment.columns.values()], good.height
    else:
        columns = _output(good, schema, header, enrichment, extras)
        if escape_formulas:
            columns, rejected = _escape_formulas(columns), _escape_formulas(rejected)
        output, output_header, rows_out = _write_csv(columns), columns.columns, columns.height
    return ChunkOutput(
        output=output,
        rejected=_write_csv(rejected) if rejected.height else b"",
        output_header=output_header,
        rejected_header=["row", "line", "reason", *header, "_extra"],
        rows_in=rows_in,
        rows_out=rows_out,
        rows_rejected=rejected.height,
        counts=counts,
    )


def _output(
    good: pl.DataFrame,
    schema: RecordSchema,
    header: list[str],
    enrichment: Enrichment | None,
    extras: Extras,
) -> pl.DataFrame:
    """The output columns of the enriched rows: the schema's properties in schema order, the
    other input columns in input order, the enrichment's; then the pipeline's transforms and
    its choice of columns."""
    out_cols = [pl.col(c) for c in schema.properties]
    out_cols += [pl.col(c) for c in header if c not in schema.properties]
    if enrichment is not None:
        out_cols += [pl.col(c) for c in enrichment.columns.values()]
    elif extras.api is not None:
        out_cols += [pl.col(c) for c in extras.api.columns.values()]
    output = good.select(out_cols)
    if extras.rules is not None and extras.rules.transforms:
        output = extras.rules.transform(output)
    if extras.columns is not None:
        lacking = [c for c in extras.columns if c not in output.columns]
        if lacking:
            raise UserCodeError(
                f"output column {lacking[0]!r} is not produced by the pipeline (it has"
                f" {', '.join(map(repr, output.columns))})"
            )
        output = output.select(extras.columns)
    return output


def _as_text(
    inputs: list[str],
    enrichment: Enrichment | None,
    reference: ReferenceTable | None,
    extras: Extras,
) -> bool:
    """Whether the output can be written as text: the output's input columns (``inputs``)
    unchanged, then the fields of a reference small enough to be held, in the cache's order."""
    if enrichment is None or reference is None or not enrichment.columns:
        return False
    if extras.api is not None:
        return False
    if extras.rules is not None and extras.rules.transforms:
        return False
    output = [*inputs, *enrichment.columns.values()]
    chosen = extras.columns is None or list(extras.columns) == output
    return chosen and reference.holdable


def _line_texts(body: bytes) -> pl.Series:
    """The lines of ``body`` (a quote-free body without blank lines), without their line ends.
    Read as a CSV of one column, the separator NUL, which text never holds (half the time and
    memory of splitting a Python string)."""
    schema = {TEXT: pl.String}
    return pl.read_csv(body, has_header=False, separator="\0", quote_char=None, schema=schema)[TEXT]


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


def _write_lines(lines: pl.DataFrame) -> bytes:
    """Text columns holding CSV fields already written, joined by commas as they are."""
    buf = io.BytesIO()
    lines.write_csv(buf, include_header=False, quote_style="never", line_terminator="\n")
    return buf.getvalue()
