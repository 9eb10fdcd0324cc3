"""JSON Lines inputs: one JSON object per line, split like CSV by line breaks (a JSON text never
holds a raw line break), parsed chunk by chunk into the same text columns as a CSV chunk.

The columns are the pipeline's (its schema's properties and the names it joins or counts on);
a key the schema does not declare is ignored, or rejects its record when the schema sets
``additionalProperties`` to false. Values become text exactly as written: a number keeps its
digits (``1.50`` stays ``1.50``), ``true``/``false`` stay so, a nested object or array is kept
as its JSON text, and ``null`` or an absent key is an empty value. A line that is not a JSON
object is rejected with the reason and its raw text; blank lines are not records.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from .parse import EXTRA, LINE, REASON, ROW

__all__ = ["as_text", "loads_exact", "parse_jsonl"]


class _Number(str):
    """A JSON number, kept as the text it was written as."""


def as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return str(value)
    if value is True or value is False:
        return "true" if value else "false"
    return _dump(value)


def _dump(value: Any) -> str:
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_dump(v)}"
                              for k, v in value.items()) + "}"  # fmt: skip
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def loads_exact(text: str) -> Any:
    return json.loads(text, parse_float=_Number, parse_int=_Number, parse_constant=_Number)


def parse_jsonl(
    body: bytes, columns: list[str], first_line: int, source: str, *, strict: bool = False
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(good, structural rejects) of a chunk of JSON Lines, like ``parse_general`` for CSV:
    ``ROW`` (1-based among the chunk's records), ``LINE``, one String column per name of
    ``columns``; rejects add ``EXTRA`` (the raw line) and ``REASON``. ``strict``: a key not in
    ``columns`` rejects the record."""
    lines = body.decode("utf-8").split("\n")
    records = [(n, line.removesuffix("\r")) for n, line in enumerate(lines)]
    records = [(n, text) for n, text in records if text.strip()]
    try:  # one decoder call for the whole chunk; line by line only when one is broken
        docs: list[Any] = loads_exact("[" + ",".join(text for _, text in records) + "]")
    except ValueError:
        docs = []
        for _, text in records:
            try:
                docs.append(loads_exact(text))
            except ValueError as exc:
                docs.append(exc)
    wanted = set(columns)
    good: list[list[Any]] = []
    bad: list[list[Any]] = []
    for row, ((n, text), doc) in enumerate(zip(records, docs, strict=True), start=1):
        line = first_line + n
        problem = None
        if isinstance(doc, ValueError):
            problem = f"line {line}: not valid JSON: {doc}"
        elif not isinstance(doc, dict):
            problem = f"line {line}: a JSON {type(doc).__name__}, not an object"
        elif strict and (extra := [k for k in doc if k not in wanted]):
            shown = ", ".join(repr(k) for k in extra[:5])
            problem = f"line {line}: unexpected field {shown} (additionalProperties is false)"
        if problem is not None:
            values = (
                [as_text(doc.get(c)) for c in columns]
                if isinstance(doc, dict)
                else [None] * len(columns)
            )
            bad.append([row, line, *values, json.dumps([text], ensure_ascii=False), problem])
            continue
        good.append([row, line, *(as_text(doc.get(c)) for c in columns)])
    text_cols = dict.fromkeys(columns, pl.String)
    schema: dict[str, Any] = {ROW: pl.Int64, LINE: pl.Int64, **text_cols}
    good_frame = pl.DataFrame(good, schema=schema, orient="row")
    good_frame = good_frame.with_columns(
        [pl.when(pl.col(c) != "").then(pl.col(c)).alias(c) for c in columns]
    )
    bad_frame = pl.DataFrame(
        bad, schema={**schema, EXTRA: pl.String, REASON: pl.String}, orient="row"
    )
    return good_frame, bad_frame
