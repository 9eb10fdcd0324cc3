"""The field types every section of ``mrbatch.toml`` is built from: durations written as seconds
or text, and the base of a section (unknown keys refused, values frozen)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

__all__ = ["Duration", "Section", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a text such as ``"500ms"``, ``"60s"``, ``"15m"``, ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 60, '60s', '15m' or '500ms'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration; use e.g. 60, '60s', '15m' or '500ms'")


Duration = Annotated[float, BeforeValidator(parse_duration)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
