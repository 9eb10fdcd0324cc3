"""Recounting a completed run from its objects, independently of the records that describe it.

``mrbatch verify`` never trusts ``rows_in`` / ``rows_out`` / ``rows_rejected`` as recorded: it
counts the records of the input version, of the published output and of the rejected rows with
:func:`mrbatch.pipeline.count_records`, and checks ``in == out + rejected``.

Order is checked against an independent oracle, Python's ``csv`` module, rather than by running
the pipeline again (re-processing with the same code would agree with a bug in that code). The
rejected file names each rejected record by its 1-based ``row`` among the input's records, so
the input's records minus the rejected ones must be, one for one and in order, the output rows:
for every output column that is also an input column the values must be equal. When the csv
module splits the input into a different number of records than the pipeline's dialect does
(malformed quoting, which the pipeline rejects with the raw text), the order check is reported
as not done rather than guessed.

Memory: one input with its output and rejected rows at a time.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..pipeline.parse import count_records

__all__ = ["Recount", "recount"]

_BOM = b"\xef\xbb\xbf"


@dataclass
class Recount:
    """What the objects say. ``problems`` are (kind, text) with kind ``lost`` (rows missing),
    ``duplicated`` (rows more than the input has) or ``order`` (rows out of order / altered)."""

    rows_in: int
    rows_out: int
    rows_rejected: int
    order_checked: bool = False
    note: str | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)


def _records(data: bytes) -> int:
    """Records in a CSV with a header line, the header not counted."""
    return max(0, count_records(data) - 1)


def _rows(text: str) -> Iterator[list[str]]:
    return (row for row in csv.reader(io.StringIO(text, newline="")) if row)


def recount(
    input_data: bytes,
    output: bytes,
    rejected: bytes,
    *,
    input_format: str = "csv",
    quote: str = '"',
    order: bool = True,
) -> Recount:
    """Recount one run from the bytes of its input version, published output and rejected rows
    (each a CSV with its header line). Inputs other than plain CSV (JSON Lines, Parquet, another
    quote character) and pipelines that transform values are counted, not order-checked."""
    body = input_data[len(_BOM) :] if input_data.startswith(_BOM) else input_data
    if input_format == "jsonl":
        rows_in = count_records(body, "")
    elif input_format == "parquet":
        from ..pipeline.parquet import footer_length, read_footer

        rows_in = read_footer(body[-footer_length(body[-8:], "input") :], len(body), "input").rows
    else:
        rows_in = max(0, count_records(body, quote) - 1)
    result = Recount(rows_in, _records(output), _records(rejected))
    if input_format != "csv" or quote != '"' or not order:
        order = False
        result.note = "order not checked: the input is not plain CSV or the pipeline transforms"
    total = result.rows_out + result.rows_rejected
    if total < result.rows_in:
        result.problems.append(
            (
                "lost",
                f"{result.rows_in} input records but only {result.rows_out} output +"
                f" {result.rows_rejected} rejected rows: {result.rows_in - total} missing",
            )
        )
    elif total > result.rows_in:
        result.problems.append(
            (
                "duplicated",
                f"{result.rows_in} input records but {result.rows_out} output +"
                f" {result.rows_rejected} rejected rows: {total - result.rows_in} extra",
            )
        )
    counted = result.problems[0][0] if result.problems else None
    if not order:
        return result
    try:
        _check_order(body.decode("utf-8"), output.decode("utf-8"), rejected.decode("utf-8"), result)
    except (UnicodeDecodeError, csv.Error, ValueError, IndexError) as exc:
        result.order_checked = False
        result.note = f"order not checked: {type(exc).__name__}: {exc}"
    if counted is not None:
        # Rows missing or extra shift every row after them: the order problem that follows is
        # the same damage, so it gets the same kind (a doubled row is a duplicate, not a loss).
        result.problems = [
            (counted if kind == "order" else kind, text) for kind, text in result.problems
        ]
    return result


def _check_order(source: str, output: str, rejected: str, result: Recount) -> None:
    records = _rows(source)
    header = next(records, None)
    if header is None:
        result.note = "order not checked: the input has no header"
        return
    inputs = list(records)
    if len(inputs) != result.rows_in:
        result.note = (
            f"order not checked: the csv module reads {len(inputs)} records where the"
            f" pipeline's dialect counts {result.rows_in} (malformed quoting)"
        )
        return
    out_rows = _rows(output)
    out_header = next(out_rows, [])
    pairs = [(i, header.index(name)) for i, name in enumerate(out_header) if name in header]
    rej_rows = _rows(rejected)
    next(rej_rows, None)
    numbers = [int(row[0]) for row in rej_rows]
    if numbers != sorted(set(numbers)) or (numbers and not 1 <= numbers[0] <= numbers[-1]):
        result.problems.append(("order", "rejected row numbers are not strictly increasing"))
        return
    if numbers and numbers[-1] > len(inputs):
        result.problems.append(
            ("order", f"rejected row {numbers[-1]} is beyond the input's {len(inputs)} records")
        )
        return
    skipped = set(numbers)
    position = 0
    for number, record in enumerate(inputs, 1):
        if number in skipped:
            continue
        row = next(out_rows, None)
        position += 1
        if row is None:
            result.problems.append(
                ("lost", f"input record {number} is neither in the output nor rejected")
            )
            return
        for out_index, in_index in pairs:
            got = row[out_index] if out_index < len(row) else None
            want = record[in_index] if in_index < len(record) else None
            if got != want:
                result.problems.append(
                    (
                        "order",
                        f"output row {position} is not input record {number}"
                        f" ({out_header[out_index]} is {got!r}, expected {want!r})",
                    )
                )
                return
    extra = sum(1 for _ in out_rows)
    if extra:
        result.problems.append(
            ("duplicated", f"{extra} output row(s) beyond the input's valid records")
        )
        return
    result.order_checked = True
