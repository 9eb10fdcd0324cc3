"""The per-property rules of a record schema: parsing each property's keywords (refusing what
cannot be enforced, at load) and turning them into polars conditions that are true on failure.

Keywords per property
    ``type``: ``"string"``, ``"integer"`` or ``"number"``. Values are text and stay text: an
    integer or number property checks that the text *is* one (``-12``, ``+7``, ``1.5e3``), and
    the value is written exactly as received (``007`` stays ``007``). ``minLength``,
    ``maxLength``, ``pattern``, ``enum`` (strings); ``minimum``, ``maximum``,
    ``exclusiveMinimum``, ``exclusiveMaximum`` (numbers, draft-07 style; they need ``type``
    integer or number, and compare as 64-bit floats); ``format``: ``date`` (``YYYY-MM-DD``, a
    real calendar day), ``date-time`` (RFC 3339: ``2024-05-01T10:00:00Z``, fractions and
    offsets allowed) or ``email``; ``const`` (a string; a number for integer/number
    properties, compared as a number).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from mrbatch.errors import SchemaError

__all__ = ["PROPERTY_KEYWORDS", "PropertyRule", "parse_property", "rule_failures"]

PROPERTY_KEYWORDS = (
    "type", "minLength", "maxLength", "pattern", "enum", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "format", "const",
)  # fmt: skip
_TYPES = ("string", "integer", "number")
_FORMATS = ("date", "date-time", "email")
_ANNOTATIONS = frozenset(
    {"$schema", "$id", "title", "description", "$comment", "examples", "default", "readOnly",
     "writeOnly"}
)  # fmt: skip
# How many enum values a rejection reason spells out before abbreviating.
_ENUM_SHOWN = 8
_INTEGER = r"^[+-]?[0-9]+$"
_NUMBER = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_DATE_TIME = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_EMAIL = r"^[^@\s\x00-\x1f]+@[^@\s\x00-\x1f.]+(?:\.[^@\s\x00-\x1f.]+)+$"


@dataclass(frozen=True)
class PropertyRule:
    """The checks of one declared property. ``regex`` is ``pattern`` translated for polars."""

    name: str
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    regex: str | None = None
    enum: tuple[str, ...] | None = None
    kind: str = "string"
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    format: str | None = None
    const: str | float | None = None


def parse_property(source: str, name: Any, spec: Any) -> PropertyRule:
    if not isinstance(name, str) or name == "":
        raise _error(source, None, "properties", "contains an empty property name")
    if not isinstance(spec, Mapping):
        raise _error(source, name, None, f"must be a JSON object, got {_show(spec)}")
    for key in spec:
        if key not in _ANNOTATIONS and key not in PROPERTY_KEYWORDS:
            raise _error(
                source, name, key, f"is not supported (supported: {', '.join(PROPERTY_KEYWORDS)})"
            )
    kind = spec.get("type", "string")
    if kind not in _TYPES:
        raise _error(
            source,
            name,
            "type",
            f'must be "string", "integer" or "number" (values are read as text), got'
            f" {_show(spec['type'])}",
        )
    min_length = _length(source, name, spec, "minLength")
    max_length = _length(source, name, spec, "maxLength")
    if min_length is not None and max_length is not None and min_length > max_length:
        raise _error(
            source,
            name,
            "minLength",
            f"is {min_length}, greater than maxLength {max_length}: no value could be valid",
        )
    pattern = spec.get("pattern")
    regex = None
    if pattern is not None:
        if not isinstance(pattern, str):
            raise _error(source, name, "pattern", f"must be a string, got {_show(pattern)}")
        regex = _translate_pattern(pattern, source, name)
        _compile_check(regex, pattern, source, name)
    enum = None
    if "enum" in spec:
        values = spec["enum"]
        if not isinstance(values, list) or not values:
            raise _error(source, name, "enum", "must be a non-empty list of strings")
        if not all(isinstance(v, str) for v in values):
            bad = next(v for v in values if not isinstance(v, str))
            raise _error(
                source,
                name,
                "enum",
                f"must list strings only (values are read as text), got {_show(bad)}",
            )
        enum = tuple(dict.fromkeys(values))  # de-duplicated, first-seen order
    bounds = {k: _bound(source, name, spec, k, kind) for k in
              ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")}  # fmt: skip
    fmt = spec.get("format")
    if fmt is not None and fmt not in _FORMATS:
        raise _error(
            source,
            name,
            "format",
            f"{_show(fmt)} is not supported (supported: {', '.join(_FORMATS)})",
        )
    const = spec.get("const")
    if "const" in spec:
        numeric = (
            kind != "string" and isinstance(const, int | float) and not isinstance(const, bool)
        )
        if not (isinstance(const, str) or numeric):
            want = "a string or a number" if kind != "string" else "a string (values are text)"
            raise _error(source, name, "const", f"must be {want}, got {_show(const)}")
    return PropertyRule(
        name, min_length, max_length, pattern, regex, enum, kind,
        bounds["minimum"], bounds["maximum"], bounds["exclusiveMinimum"],
        bounds["exclusiveMaximum"], fmt, const,
    )  # fmt: skip


def _bound(source: str, name: str, spec: Mapping[str, Any], key: str, kind: str) -> float | None:
    if key not in spec:
        return None
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _error(source, name, key, f"must be a number, got {_show(value)}")
    if kind == "string":
        raise _error(
            source, name, key, 'needs "type": "integer" or "number" (values are read as text)'
        )
    return float(value)


def rule_failures(rule: PropertyRule, col: pl.Expr, present: pl.Expr) -> list[tuple[pl.Expr, str]]:
    """(condition, reason) for each keyword of ``rule``; conditions are true (or null) on
    failure, and never fail an empty value (``present`` is false or null for one)."""
    name = rule.name
    out: list[tuple[pl.Expr, str]] = []
    if rule.kind != "string":
        shape = _INTEGER if rule.kind == "integer" else _NUMBER
        out.append((present & ~col.str.contains(shape), f"{name}: not an {rule.kind}"
                    if rule.kind == "integer" else f"{name}: not a number"))  # fmt: skip
    value = col.str.strip_prefix("+").cast(pl.Float64, strict=False)
    for bound, op, word in (
        (rule.minimum, "lt", "minimum"),
        (rule.maximum, "gt", "maximum"),
        (rule.exclusive_minimum, "le", "exclusiveMinimum"),
        (rule.exclusive_maximum, "ge", "exclusiveMaximum"),
    ):
        if bound is not None:
            shown = _number(bound)
            text = {"lt": "less than", "gt": "greater than", "le": "not greater than",
                    "ge": "not less than"}[op]  # fmt: skip
            out.append((present & getattr(value, op)(bound), f"{name}: {text} {shown} ({word})"))
    if rule.min_length is not None and rule.min_length > 0:
        n = rule.min_length
        unit = "character" if n == 1 else "characters"
        out.append(
            (
                present & (col.str.len_chars() < n),
                f"{name}: shorter than {n} {unit} (minLength {n})",
            )
        )
    if rule.max_length is not None:
        n = rule.max_length
        unit = "character" if n == 1 else "characters"
        out.append((col.str.len_chars() > n, f"{name}: longer than {n} {unit} (maxLength {n})"))
    if rule.regex is not None:
        out.append(
            (
                present & ~col.str.contains(rule.regex),
                f"{name}: does not match pattern {rule.pattern}",
            )
        )
    if rule.enum is not None:
        out.append((present & ~col.is_in(list(rule.enum)), f"{name}: {_enum_text(rule)}"))
    if rule.format == "date":
        day = col.str.to_date("%Y-%m-%d", strict=False)
        bad = ~col.str.contains(_DATE) | day.is_null()
        out.append((present & bad, f"{name}: not a date (format date, YYYY-MM-DD)"))
    elif rule.format == "date-time":
        day = col.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
        clock = col.str.slice(11, 8).str.to_time("%H:%M:%S", strict=False)
        bad = ~col.str.contains(_DATE_TIME) | day.is_null() | clock.is_null()
        out.append((present & bad, f"{name}: not a date-time (format date-time, RFC 3339)"))
    elif rule.format == "email":
        out.append((present & ~col.str.contains(_EMAIL), f"{name}: not an email address (format)"))
    if rule.const is not None:
        if isinstance(rule.const, str):
            out.append((present & (col != rule.const), f"{name}: not {rule.const!r} (const)"))
        else:
            shown = _number(rule.const)
            out.append(
                (present & (value != float(rule.const)).fill_null(True),
                 f"{name}: not {shown} (const)")
            )  # fmt: skip
    return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _length(source: str, name: str, spec: Mapping[str, Any], key: str) -> int | None:
    if key not in spec:
        return None
    value = spec[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema allows 9.0 where an integer is expected
    # bool is an int subclass in Python, but `true` is not a length in JSON.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _error(source, name, key, f"must be a non-negative integer, got {_show(spec[key])}")
    return value


def _translate_pattern(pattern: str, source: str, name: str) -> str:
    """Translate an ECMA-262 pattern to the Rust regex dialect with the same meaning.

    Differences handled: ``\\d``/``\\w``/``\\b`` are ASCII-only in ECMA but Unicode-aware in
    Rust (``^\\d{9}$`` must not accept Arabic-Indic digits); ``.`` excludes all ECMA line
    terminators; inside a class ``[`` and ``&``/``~`` are literal in ECMA but start nested
    classes or set operations in Rust; ``[\\b]`` is a backspace; ``\\0`` is NUL. Syntax Rust
    lacks (look-around, back-references) is left for the compile check to refuse.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    ascii_classes = {
        "d": "[0-9]",
        "D": "[^0-9]",
        "w": "[0-9A-Za-z_]",
        "W": "[^0-9A-Za-z_]",
    }
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            i += 2
            if nxt in ascii_classes:
                out.append(ascii_classes[nxt])  # nested classes are valid inside [...] in Rust
            elif nxt == "b":
                out.append(r"\x08" if in_class else r"(?-u:\b)")
            elif nxt == "B" and not in_class:
                out.append(r"(?-u:\B)")
            elif nxt == "0" and (i >= n or not pattern[i].isdigit()):
                out.append(r"\x00")
            else:
                out.append("\\" + nxt)
            continue
        if in_class:
            if ch == "]":
                in_class = False
                out.append(ch)
            elif ch in "[&~":
                out.append("\\" + ch)
            else:
                out.append(ch)
        elif ch == "[":
            rest = pattern[i + 1 : i + 3]
            if rest.startswith("]") or rest == "^]":
                raise _error(
                    source,
                    name,
                    "pattern",
                    f"{pattern!r}: the empty classes [] and [^] are not supported",
                )
            in_class = True
            out.append(ch)
            if rest.startswith("^"):
                out.append("^")
                i += 1
        elif ch == ".":
            out.append(r"[^\n\r\x{2028}\x{2029}]")
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _compile_check(regex: str, pattern: str, source: str, name: str) -> None:
    try:
        pl.select(pl.lit("").str.contains(regex))
    except pl.exceptions.PolarsError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines()]
        detail = next(
            (ln[len("error:") :].strip() for ln in lines if ln.startswith("error:")),
            lines[0] if lines else "invalid",
        )
        raise _error(
            source,
            name,
            "pattern",
            f"{pattern!r} is not supported: {detail}",
        ) from exc


def _error(source: str, prop: str | None, keyword: str | None, text: str) -> SchemaError:
    where = [source]
    if prop is not None:
        where.append(f"property {prop!r}")
    if keyword is not None:
        where.append(f"keyword {keyword!r}")
    return SchemaError(
        f"{': '.join(where)} {text}" if keyword else f"{': '.join(where)}: {text}",
        hint="mrbatch enforces a subset of JSON Schema draft-07; adjust the schema file",
    )


def _enum_text(rule: PropertyRule) -> str:
    assert rule.enum is not None
    shown = ", ".join(repr(v) for v in rule.enum[:_ENUM_SHOWN])
    if len(rule.enum) > _ENUM_SHOWN:
        shown += f", ... ({len(rule.enum)} values)"
    return f"not one of {shown} (enum)"


def _near_miss(name: str, header: Sequence[str]) -> str:
    """``'Region'``, plus the header column it was probably meant to be, if any."""
    folded = name.strip().casefold()
    for col in header:
        if col != name and col.strip().casefold() == folded:
            return f"{name!r} (found {col!r})"
    return repr(name)


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
