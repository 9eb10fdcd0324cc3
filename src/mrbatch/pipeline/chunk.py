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
from dataclasses import dataclass, field
from typing import Protocol

import polars as pl

from ..errors import InputError, UserCodeError
from .csvsplit import BOM, check_text
from .lines import parse_fast, parse_quoted_lines
from .parse import (
    CSV,
    EXTRA,
    HIT,
    LINE,
    REASON,
    ROW,
    Dialect,
    header_end,
    parse_general,
    parse_header,
)
from .reference import REFERENCE_KEY_COLUMN, Enrichment, ReferenceTable, hash_keys
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


class ApiAnswers(Protocol):
    """What a chunk needs of an HTTP enrichment: its join column, its answer fields by output
    column, and the answers for a list of keys (``key -> {field: text | None}`` or None)."""

    key: str
    columns: dict[str, str]

    def answers(self, keys: list[str]) -> dict[str, dict[str, str | None] | None]: ...


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
    if enrichment is not None and reference is None:
        raise ValueError("an enrichment needs a reference table")
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
    if good is None:
        good = parse_quoted_lines(body, header, first_line, dialect)
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
) -> ChunkOutput:
    """The rest of a chunk once its records are parsed (any input format): ``good`` holds
    ``ROW``, ``LINE`` and one text column per ``header`` name; ``bad`` the structural rejects.
    Schema, row checks, enrichment (reference data or an HTTP API), transforms, output."""
    extras = extras or Extras()
    api = extras.api
    for join in (enrichment, api):
        if join is not None:
            _check_enrichment_columns(header, schema, join.key, join.columns, source)
    rows_in = good.height + sum(b.height for b in bad)
    absent = [c for c in schema.properties if c not in header]
    if absent:  # optional properties the file does not have: empty values
        good = good.with_columns(pl.lit(None, pl.String).alias(c) for c in absent)
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

    out_cols = [pl.col(c) for c in schema.properties]
    out_cols += [pl.col(c) for c in header if c not in schema.properties]
    if enrichment is not None and reference is not None:
        good, missing = _enrich(good, enrichment, reference)
        if missing is not None:
            bad.append(missing)
        out_cols += [pl.col(c) for c in enrichment.columns.values()]
    elif api is not None:
        good, missing = _enrich_api(good, api)
        bad.append(missing)
        out_cols += [pl.col(c) for c in api.columns.values()]
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
    rejected = _rejected_frame(bad, header)
    if escape_formulas:
        output, rejected = _escape_formulas(output), _escape_formulas(rejected)
    rejected_header = ["row", "line", "reason", *header, "_extra"]
    return ChunkOutput(
        output=_write_csv(output),
        rejected=_write_csv(rejected) if rejected.height else b"",
        output_header=output.columns,
        rejected_header=rejected_header,
        rows_in=rows_in,
        rows_out=output.height,
        rows_rejected=rejected.height,
        counts=counts,
    )


def _enrich_api(good: pl.DataFrame, api: ApiAnswers) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows with the API's answers, rejects for rows it has no answer for)."""
    keys = good.get_column(api.key).drop_nulls().unique(maintain_order=True).to_list()
    answers = api.answers(keys) if keys else {}
    found = [k for k in keys if answers.get(k) is not None]
    fields = dict(api.columns)
    table = pl.DataFrame(
        {
            "\0key": found,
            **{out: [(answers[k] or {}).get(src) for k in found] for src, out in fields.items()},
            HIT: [True] * len(found),
        },
        schema={"\0key": pl.String, **dict.fromkeys(fields.values(), pl.String), HIT: pl.Boolean},
    )
    joined = good.join(
        table, left_on=api.key, right_on="\0key", how="left", maintain_order="left", coalesce=True
    )
    hit = joined.get_column(HIT).is_not_null()
    missing = joined.filter(~hit).with_columns(
        pl.format(
            "{}: no data from the API for '{}'", pl.lit(api.key), pl.col(api.key).fill_null("")
        ).alias(REASON)
    )
    return joined.filter(hit).drop(HIT), missing


def _check_enrichment_columns(
    header: Sequence[str],
    schema: RecordSchema,
    key: str,
    columns: dict[str, str],
    source: str,
) -> None:
    if key not in header:
        raise InputError(
            f"{source}: header lacks column {key!r}, the key for reference data",
            hint=f"add the column {key!r}",
        )
    taken = set(header) | set(schema.properties)
    clash = [name for name in columns.values() if name in taken]
    if clash:
        raise InputError(
            f"{source}: column {', '.join(map(repr, clash))} is also an enrichment output column",
            hint="rename the input column; enrichment adds it",
        )


def _enrich(
    good: pl.DataFrame, enrichment: Enrichment, reference: ReferenceTable
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """(matched rows with reference columns, rejects for rows without reference data, None
    when every row has some)."""
    # Queries are few on purpose: each costs ~0.25 ms however few the rows, most of a small
    # file's chunk (17 queries made a 1,000-row chunk 6 ms of one core).
    found = pl.lit(True).alias(HIT)
    ref = reference.lookup(good.get_column(enrichment.key))
    joined = _join_by_hash(good, ref, enrichment.key, found)
    if joined is None:  # two keys share a hash: join on the keys themselves
        joined = good.join(
            ref.with_columns(found),
            left_on=enrichment.key,
            right_on=REFERENCE_KEY_COLUMN,
            how="left",
            maintain_order="left",
            coalesce=True,
        )
    if joined.get_column(HIT).null_count() == 0:  # the usual case: every row has its data
        return joined, None  # (internal columns left in: the output selects its own)
    hit = joined.get_column(HIT).is_not_null()
    missing = joined.filter(~hit).with_columns(
        pl.format(
            "{}: no reference data for '{}'",
            pl.lit(enrichment.key),
            pl.col(enrichment.key).fill_null(""),
        ).alias(REASON)
    )
    return joined.filter(hit), missing


_HASH = "\0hash"  # internal, as parse's names


def _join_by_hash(
    good: pl.DataFrame, ref: pl.DataFrame, key: str, found: pl.Expr
) -> pl.DataFrame | None:
    """``good`` left-joined to ``ref`` (given the column ``found``) on the keys' 64-bit hashes,
    as a join on ``key`` gives it, or None when two different keys share a hash (about once
    in 10^9 chunks; the caller then joins on the keys). Three times cheaper than joining on
    the text keys (8 against 25 ms for 100k rows, one thread); the keys of every joined pair
    are compared afterwards."""
    joined = good.with_columns(hash_keys(pl.col(key)).alias(_HASH)).join(
        ref.with_columns(hash_keys(pl.col(REFERENCE_KEY_COLUMN)).alias(_HASH), found),
        on=_HASH,
        how="left",
        maintain_order="left",
    )
    if joined.height != good.height:
        return None
    paired = pl.col(REFERENCE_KEY_COLUMN)
    same = (paired.is_null() | (paired == pl.col(key))).fill_null(False).all()
    if not joined.select(same).item():  # one query (Series operations are one each)
        return None
    return joined  # with its internal columns: the output selects its own


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
