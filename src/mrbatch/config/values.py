"""Value types of the configuration: durations (``"500ms"``, ``"60s"``, ``"15m"``), sizes
(``"500MB"``, ``"10GiB"``), and the base of every section (unknown keys refused, frozen)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

__all__ = ["ByteSize", "Duration", "Section", "parse_duration", "parse_size"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a text such as ``"500ms"``, ``"60s"``, ``"15m"``, ``"1h"``,
    ``"7d"``."""
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
    raise ValueError(f"{value!r} is not a duration; use e.g. 60, '60s', '15m', '2h' or '7d'")


Duration = Annotated[float, BeforeValidator(parse_duration)]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_size(value: Any) -> int:
    """Bytes from a number or a text such as ``"500MB"``, ``"10GiB"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 1048576, '500MB' or '10GiB'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return int(value)
    if isinstance(value, str) and (match := _SIZE.match(value)):
        return int(float(match.group(1)) * _UNIT_BYTES[(match.group(2) or "b").lower()])
    raise ValueError(f"{value!r} is not a size; use e.g. 1048576, '500MB' or '10GiB'")


ByteSize = Annotated[int, BeforeValidator(parse_size)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
