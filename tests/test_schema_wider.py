"""The wider schema: integer and number checked on the text (values stay as received), bounds,
formats (date, date-time, email) and const; anything still unsupported refused at load."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from mrbatch.errors import SchemaError
from mrbatch.pipeline.schema import RecordSchema


def schema(properties: dict[str, Any]) -> RecordSchema:
    return RecordSchema.from_dict({"type": "object", "properties": properties}, source="w.json")


def reasons(sch: RecordSchema, column: str, values: list[str | None]) -> list[str | None]:
    df = pl.DataFrame({column: values}, schema={column: pl.String})
    out = df.select(sch.reasons_expr().alias("r"), sch.valid_expr().alias("v"))
    assert out.get_column("v").to_list() == out.get_column("r").is_null().to_list()
    return out.get_column("r").to_list()


def test_integer_and_number_are_checked_on_the_text() -> None:
    values = ["12", "-3", "+7", "007", "1.5", "1e3", "abc", "", None]
    assert reasons(schema({"n": {"type": "integer"}}), "n", values) == [
        None, None, None, None, "n: not an integer", "n: not an integer", "n: not an integer",
        None, None,
    ]  # fmt: skip
    values = ["1.5", "-.5", "2.", "1e-3", "+4E+2", "1,5", "NaN", "inf", "."]
    got = reasons(schema({"x": {"type": "number"}}), "x", values)
    assert got == [None] * 5 + ["x: not a number"] * 4


def test_bounds_compare_numbers_and_name_the_keyword() -> None:
    sch = schema({"n": {"type": "integer", "minimum": 0, "maximum": 10}})
    assert reasons(sch, "n", ["0", "10", "-1", "11", "x", ""]) == [
        None, None, "n: less than 0 (minimum)", "n: greater than 10 (maximum)",
        "n: not an integer", None,
    ]  # fmt: skip
    sch = schema({"x": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1.5}})
    assert reasons(sch, "x", ["0", "0.1", "1.5", "1.49"]) == [
        "x: not greater than 0 (exclusiveMinimum)", None,
        "x: not less than 1.5 (exclusiveMaximum)", None,
    ]  # fmt: skip


def test_formats() -> None:
    sch = schema({"d": {"format": "date"}})
    assert reasons(sch, "d", ["2024-02-29", "2023-02-29", "2024-13-01", "24-01-01", ""]) == [
        None,
        *["d: not a date (format date, YYYY-MM-DD)"] * 3,
        None,
    ]
    sch = schema({"t": {"format": "date-time"}})
    good = ["2024-05-01T10:00:00Z", "2024-05-01t10:00:00.123+02:00", "2024-05-01T23:59:59-05:30"]
    bad = ["2024-05-01 10:00:00Z", "2024-05-01T25:00:00Z", "2024-05-01T10:00:00", "2024-05-01"]
    assert (
        reasons(sch, "t", good + bad)
        == [None] * 3 + ["t: not a date-time (format date-time, RFC 3339)"] * 4
    )
    sch = schema({"e": {"format": "email"}})
    assert reasons(sch, "e", ["a@b.co", "a.b+c@x.example.org", "a@b", "a b@c.d", "@b.c"]) == [
        None, None, *["e: not an email address (format)"] * 3,
    ]  # fmt: skip


def test_const() -> None:
    assert reasons(schema({"c": {"const": "EUR"}}), "c", ["EUR", "eur", ""]) == [
        None, "c: not 'EUR' (const)", None,
    ]  # fmt: skip
    sch = schema({"c": {"type": "number", "const": 2}})
    assert reasons(sch, "c", ["2", "2.0", "+2", "3", "two"]) == [
        None, None, None, "c: not 2 (const)", "c: not a number; c: not 2 (const)",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"minimum": 1}, '\'minimum\' needs "type": "integer" or "number"'),
        ({"type": "integer", "maximum": "9"}, "'maximum' must be a number"),
        ({"format": "uuid"}, "'format' \"uuid\" is not supported"),
        ({"const": 5}, "'const' must be a string"),
        ({"type": ["string", "null"]}, "'type' must be"),
        ({"multipleOf": 2}, "'multipleOf' is not supported"),
    ],
)
def test_still_unsupported_is_refused_at_load(spec: dict[str, Any], words: str) -> None:
    with pytest.raises(SchemaError, match=words.replace("(", r"\(")):
        schema({"p": spec})
