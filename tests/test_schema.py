"""RecordSchema: loading (what is refused, and how it is said), header checks, vectorised rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from mrbatch.errors import InputError, SchemaError
from mrbatch.pipeline.schema import RecordSchema

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "mrbatch" / "config" / "samples"
ORDER_COLUMNS = (
    "uuid", "Country", "Item Type", "Sales Channel", "Order Priority", "Order Date", "Region",
    "Ship Date",
)  # fmt: skip


def schema(properties: dict[str, Any], **top: Any) -> RecordSchema:
    return RecordSchema.from_dict(
        {"type": "object", "properties": properties, **top}, source="s.json"
    )


def reasons(sch: RecordSchema, rows: dict[str, list[str | None]]) -> list[str | None]:
    df = pl.DataFrame(rows, schema=dict.fromkeys(rows, pl.String))
    out = df.select(sch.reasons_expr().alias("r"), sch.valid_expr().alias("v"))
    # valid_expr and reasons_expr must always agree.
    assert out.get_column("v").to_list() == out.get_column("r").is_null().to_list()
    return out.get_column("r").to_list()


# ---------------------------------------------------------------------- loading
def test_sample_schema_loads_with_order_and_required() -> None:
    sch = RecordSchema.from_file(SAMPLES / "orders.schema.json")
    assert sch.properties == ORDER_COLUMNS
    assert sch.required == ORDER_COLUMNS
    assert sch.additional_properties is True
    assert sch.source == "orders.schema.json"


def test_unsupported_property_keyword_names_file_property_and_keyword() -> None:
    with pytest.raises(SchemaError) as err:
        schema({"uuid": {"type": "string", "multipleOf": 3}})
    assert str(err.value) == (
        "s.json: property 'uuid': keyword 'multipleOf' is not supported "
        "(supported: type, minLength, maxLength, pattern, enum, minimum, maximum,"
        " exclusiveMinimum, exclusiveMaximum, format, const)"
    )
    with pytest.raises(SchemaError, match="'format' \"uuid\" is not supported"):
        schema({"uuid": {"type": "string", "format": "uuid"}})


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"patternProperties": {}}, "s.json: keyword 'patternProperties' is not supported"),
        ({"type": "array"}, "s.json: keyword 'type' must be \"object\""),
        ({"properties": {"a": {"type": "boolean"}}}, "property 'a': keyword 'type' must be"),
        ({"properties": {"a": {"maxLength": "9"}}}, "property 'a': keyword 'maxLength' must be a"),
        ({"properties": {"a": {"maxLength": True}}}, "property 'a': keyword 'maxLength'"),
        ({"properties": {"a": {"minLength": -1}}}, "property 'a': keyword 'minLength'"),
        ({"properties": {"a": {"maxLength": 9.5}}}, "property 'a': keyword 'maxLength'"),
        (
            {"properties": {"a": {"minLength": 5, "maxLength": 3}}},
            "property 'a': keyword 'minLength' is 5, greater than maxLength 3",
        ),
        ({"properties": {"a": {"enum": ["x", 1]}}}, "property 'a': keyword 'enum' must list"),
        ({"properties": {"a": {"enum": []}}}, "property 'a': keyword 'enum' must be a non-empty"),
        ({"properties": {"a": {"pattern": 5}}}, "property 'a': keyword 'pattern' must be a str"),
        ({"properties": {"a": {"pattern": "^(?=x)"}}}, "property 'a': keyword 'pattern' '^(?=x)'"),
        ({"properties": {"a": {"pattern": r"(a)\1"}}}, "property 'a': keyword 'pattern'"),
        ({"properties": {"a": {"pattern": "[]"}}}, "property 'a': keyword 'pattern'"),
        ({"properties": {"a": "string"}}, "property 'a': must be a JSON object"),
        ({"properties": []}, "keyword 'properties' must be an object"),
        ({"required": "a"}, "keyword 'required' must be a list"),
        ({"required": ["a", "a"]}, "keyword 'required' lists 'a' more than once"),
        ({"additionalProperties": {"type": "string"}}, "keyword 'additionalProperties' must be"),
        (
            {"required": ["x"], "additionalProperties": False},
            "keyword 'required' names 'x' which is not in 'properties'",
        ),
        ([1, 2], "s.json: the schema must be a JSON object"),
    ],
)
def test_unsupported_schemas_are_refused(doc: Any, expected: str) -> None:
    with pytest.raises(SchemaError) as err:
        RecordSchema.from_dict(doc, source="s.json")
    assert expected in str(err.value)
    assert str(err.value).startswith("s.json")
    assert err.value.hint


def test_annotations_are_ignored_and_integral_floats_accepted() -> None:
    sch = RecordSchema.from_dict(
        {
            "$schema": "http://json-schema.org/draft-07/schema",
            "$id": "x", "title": "t", "description": "d", "$comment": "c",
            "properties": {"a": {"type": "string", "maxLength": 3.0, "title": "A",
                                 "description": "d", "examples": ["x"], "default": "y"}},
        },
        source="s.json",
    )  # fmt: skip
    assert sch.properties == ("a",)
    assert sch.rules[0].max_length == 3
    assert sch.required == ()


def test_required_name_without_property_is_still_required() -> None:
    sch = schema({"a": {}}, required=["a", "b"])
    assert sch.properties == ("a",)
    assert sch.required == ("a", "b")
    with pytest.raises(InputError, match="lacks required column 'b'"):
        sch.check_header(["a"], source="in.csv")
    assert reasons(sch, {"a": ["x", "x"], "b": ["y", ""]}) == [None, "b: missing required value"]


def test_from_file_reports_bad_json_with_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.schema.json"
    path.write_text('{"properties": {"a": {}},\n}', encoding="utf-8")
    with pytest.raises(SchemaError, match=r"^broken.schema.json: not valid JSON: .* line 2"):
        RecordSchema.from_file(path)
    with pytest.raises(SchemaError, match=r"^missing\.json: cannot read the schema file"):
        RecordSchema.from_file(tmp_path / "missing.json")


# ---------------------------------------------------------------------- header
def test_header_missing_columns_are_all_named() -> None:
    sch = RecordSchema.from_file(SAMPLES / "orders.schema.json")
    sch.check_header(list(ORDER_COLUMNS), source="input/x.csv")
    with pytest.raises(InputError) as err:
        sch.check_header([c for c in ORDER_COLUMNS if c != "Region"], source="input/x.csv")
    assert str(err.value) == "input/x.csv: header lacks required column 'Region'"
    with pytest.raises(InputError) as err:
        sch.check_header(["uuid", "Country", "Item Type"], source="input/x.csv")
    assert str(err.value) == (
        "input/x.csv: header lacks required columns 'Sales Channel', 'Order Priority', "
        "'Order Date', 'Region', 'Ship Date'"
    )


def test_header_near_miss_is_pointed_out() -> None:
    sch = schema({"Region": {}}, required=["Region"])
    with pytest.raises(InputError, match=r"lacks required column 'Region' \(found 'region '\)"):
        sch.check_header(["region "], source="x.csv")


def test_header_duplicates_empty_names_and_extras() -> None:
    sch = schema({"a": {}, "b": {}}, required=["a"])
    sch.check_header(["a", "b", "extra"], source="x.csv")  # additional properties allowed
    with pytest.raises(InputError, match="header repeats column 'a'"):
        sch.check_header(["a", "b", "a"], source="x.csv")
    with pytest.raises(InputError, match="header column 2 has no name"):
        sch.check_header(["a", "", "b"], source="x.csv")
    strict = schema({"a": {}, "b": {}}, required=["a"], additionalProperties=False)
    strict.check_header(["b", "a"], source="x.csv")
    strict.check_header(["a"], source="x.csv")  # an optional property may be absent
    with pytest.raises(InputError) as err:
        strict.check_header(["a", "b", "x", "y"], source="x.csv")
    assert str(err.value) == (
        "x.csv: header has unexpected columns 'x', 'y' "
        "(the schema sets additionalProperties to false)"
    )


# ---------------------------------------------------------------------- rules
def test_sample_rules_name_field_and_rule() -> None:
    sch = RecordSchema.from_file(SAMPLES / "orders.schema.json")
    values = ["535113847", "Azerbaijan", "Snacks", "Online", "C", "10/8/14", "Middle East",
              "10/23/14"]  # fmt: skip
    good = dict(zip(ORDER_COLUMNS, values, strict=True))
    rows: dict[str, list[str | None]] = {c: [v] * 4 for c, v in good.items()}
    rows["uuid"] = ["535113847", "12345678", "000000123", None]
    rows["Country"] = ["Azerbaijan", "", "Azerbaijan", "Azerbaijan"]
    rows["Sales Channel"] = ["Online", "Online", "Online-Only", "Online"]
    assert reasons(sch, rows) == [
        None,
        "uuid: does not match pattern ^[0-9]{9}$; Country: missing required value",
        "Sales Channel: longer than 10 characters (maxLength 10)",
        "uuid: missing required value",
    ]


def test_lengths_count_characters_not_bytes() -> None:
    sch = schema({"a": {"minLength": 2, "maxLength": 3}})
    # "ééé" is 6 bytes but 3 characters; "😀😀😀😀" is 4 characters.
    assert reasons(sch, {"a": ["ééé", "é", "😀😀😀😀", "abc"]}) == [
        None,
        "a: shorter than 2 characters (minLength 2)",
        "a: longer than 3 characters (maxLength 3)",
        None,
    ]


def test_optional_empty_value_skips_other_checks() -> None:
    sch = schema({"a": {"minLength": 2, "pattern": "^x", "enum": ["xx"]}})
    assert reasons(sch, {"a": ["", None, "xx", "y"]}) == [
        None,
        None,
        None,
        "a: shorter than 2 characters (minLength 2); a: does not match pattern ^x; "
        "a: not one of 'xx' (enum)",
    ]


def test_pattern_is_an_unanchored_search_with_ecma_classes() -> None:
    sch = schema({"a": {"pattern": r"\d{3}"}, "b": {"pattern": "^a.c$"}, "c": {"pattern": r"\bx"}})
    rows: dict[str, list[str | None]] = {
        "a": ["ab123cd", "١٢٣", "12"],  # Arabic-Indic digits are not \d in ECMA-262
        "b": ["abc", "a\rc", "aéc"],  # "." matches no line terminator
        "c": ["a x", "éx", "ax"],  # \b is an ASCII word boundary
    }
    assert reasons(sch, rows) == [
        None,
        r"a: does not match pattern \d{3}; b: does not match pattern ^a.c$",
        r"a: does not match pattern \d{3}; c: does not match pattern \bx",
    ]


def test_enum_reason_lists_allowed_values() -> None:
    many = [f"v{i}" for i in range(12)]
    sch = schema({"p": {"enum": ["C", "H", "L", "M"]}, "q": {"enum": many}})
    assert reasons(sch, {"p": ["C", "c"], "q": ["v11", "x"]}) == [
        None,
        "p: not one of 'C', 'H', 'L', 'M' (enum); q: not one of 'v0', 'v1', 'v2', 'v3', 'v4', "
        "'v5', 'v6', 'v7', ... (12 values) (enum)",
    ]


def test_values_are_never_trimmed() -> None:
    sch = schema({"a": {"maxLength": 3, "enum": ["abc"]}}, required=["a"])
    assert reasons(sch, {"a": [" ab", "abc ", " "]}) == [
        "a: not one of 'abc' (enum)",
        "a: longer than 3 characters (maxLength 3); a: not one of 'abc' (enum)",
        "a: not one of 'abc' (enum)",
    ]


def test_schema_without_rules_accepts_everything() -> None:
    sch = schema({"a": {}})
    assert reasons(sch, {"a": ["", "x"]}) == [None, None]


def test_sample_schema_file_is_the_one_described() -> None:
    doc = json.loads((SAMPLES / "orders.schema.json").read_text(encoding="utf-8"))
    sch = RecordSchema.from_dict(doc, source="orders.schema.json")
    limits = {rule.name: rule.max_length for rule in sch.rules}
    assert limits == {
        "uuid": 9, "Country": 50, "Item Type": 30, "Sales Channel": 10, "Order Priority": 5,
        "Order Date": 10, "Region": 100, "Ship Date": 10,
    }  # fmt: skip
