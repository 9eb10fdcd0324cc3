"""Settings for practising and auditing recovery: approvals that wait for a person, the RPO
gate's loss budget, recovery reports, scheduled drills and their windows, and traces.

Each is a section of ``mrbatch.toml`` (``[approval]``, ``[rpo]``, ``[reports]``, ``[drill]``,
``[tracing]``); every default keeps mrbatch as it was without them: no wait for an approval
without ``--yes`` or a terminal, no budget (the gate lists, never refuses), no drill, no trace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from pydantic import Field, field_validator

from .values import ByteSize, Duration, Section

__all__ = [
    "ApprovalConfig",
    "DrillConfig",
    "ReportsConfig",
    "RpoConfig",
    "TracingConfig",
    "Window",
    "parse_window",
]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"^\s*(?:(?P<first>[a-z]{3})(?:-(?P<last>[a-z]{3}))?\s+)?"
    r"(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$"
)


@dataclass(frozen=True)
class Window:
    """Days of the week (0 = Monday) and a span of the day in minutes, in UTC; a span whose end
    is before its start runs past midnight (``22:00-02:00``)."""

    days: frozenset[int]
    start: int
    end: int

    def contains(self, when: datetime) -> bool:
        minute = when.hour * 60 + when.minute
        day = when.weekday()
        if self.start <= self.end:
            return day in self.days and self.start <= minute < self.end
        # past midnight: the part after midnight belongs to the day the window opened
        return (day in self.days and minute >= self.start) or (
            (day - 1) % 7 in self.days and minute < self.end
        )


def _minutes(text: str) -> int:
    hours, minutes = (int(p) for p in text.split(":"))
    if hours > 24 or minutes > 59 or hours * 60 + minutes > 24 * 60:
        raise ValueError(f"{text!r} is not a time of day")
    return hours * 60 + minutes


def parse_window(text: str) -> Window:
    """``"sat 02:00-04:00"``, ``"mon-fri 13:00-14:00"`` or ``"01:00-02:00"`` (every day), UTC."""
    match = _WINDOW.match(text.lower())
    if not match:
        raise ValueError(
            f"{text!r} is not a window such as 'sat 02:00-04:00' or 'mon-fri 13:00-14:00' (UTC)"
        )
    first, last = match["first"], match["last"]
    for name in (first, last):
        if name is not None and name not in _DAYS:
            raise ValueError(f"{text!r}: {name!r} is not a day ({', '.join(_DAYS)})")
    if first is None:
        days = frozenset(range(7))
    else:
        a = _DAYS.index(first)
        b = _DAYS.index(last) if last else a
        days = frozenset((a + i) % 7 for i in range((b - a) % 7 + 1))
    start, end = _minutes(match["start"]), _minutes(match["end"])
    if start == end:
        raise ValueError(f"{text!r}: the window is empty")
    return Window(days, start, end)


class ApprovalConfig(Section):
    """A plan waiting at its approval step (no ``--yes``, no terminal to prompt at) waits this
    long for ``mrbatch plan approve|deny`` or the gateway's ``POST /api/plans/ID/approve``;
    0 refuses at once. The RPO gate waits as long for per-key approvals."""

    timeout: Duration = 0.0
    poll: Duration = Field(default=0.5, gt=0)


class RpoConfig(Section):
    """The loss budget of the ``rpo-gate`` step: the switch is refused when more inputs (or
    more bytes) than this would be left behind without a per-key approval. Unset: the gate
    lists what the target lacks and never refuses."""

    max_files: int | None = Field(default=None, ge=0)
    max_bytes: ByteSize | None = None


class ReportsConfig(Section):
    """Recovery reports, one per plan execution and drill, chained by hash."""

    # After a plan ends, wait this long at most for the runs that were in flight at the fence
    # to finish, so the report can say when the last one did.
    settle: Duration = 30.0


class DrillConfig(Section):
    """``mrbatch drill`` and the drills ``mrbatch watch`` schedules."""

    # Run a drill from `watch` this often (unset: never); only inside a window when any are set.
    every: Duration | None = None
    windows: list[str] = Field(default_factory=list)
    # A drill does not start while any of these say so.
    freeze: bool = False
    max_backlog: int = Field(default=100, ge=0)
    max_runs_in_flight: int = Field(default=10, ge=0)
    # The load a drill puts on the deployment, and its budgets: each switch's RTO (default:
    # failover.desired_rto) and the whole drill.
    files: int = Field(default=6, ge=0)
    rows: int = Field(default=500, ge=1)
    mode: str = "graceful"
    rto_budget: Duration | None = None
    timeout: Duration = 600.0

    @field_validator("windows")
    @classmethod
    def _windows(cls, values: list[str]) -> list[str]:
        for value in values:
            parse_window(value)
        return values

    @field_validator("mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        if value not in ("graceful", "ungraceful"):
            raise ValueError(f"{value!r} is not a mode (graceful, ungraceful)")
        return value

    def parsed_windows(self) -> list[Window]:
        return [parse_window(w) for w in self.windows]


class TracingConfig(Section):
    """OpenTelemetry traces (the optional ``otel`` extra): one trace per run and one per plan
    execution, exported over OTLP/HTTP to ``otlp_endpoint`` (``http://host:4318``). Unset:
    nothing is traced and opentelemetry is never imported."""

    otlp_endpoint: str | None = None
    service_name: str = "mrbatch"
    export_timeout: Duration = 5.0

    @field_validator("otlp_endpoint")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value.rstrip("/") if value else value
