"""Tables every command prints, readable in an 80-column terminal and stable when piped.

In a terminal a table is drawn with rich and fitted to the width: what a user must copy (run
ids, keys, states) is never cut; columns marked ``drop`` are left out, the most expendable
first, and the caption says which; long free text (reasons, values) wraps. When even the kept
columns do not fit, or the output is not a terminal (``mrbatch runs | cat``), the table is
plain text instead: a header row and one line per row, columns aligned with spaces, nothing
cut or wrapped, no box drawing, no colour.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .app import console as default_console

__all__ = ["Col", "ago", "clock", "emit", "render", "seconds"]

Cell = str | Text
# What a rich table adds around each column (padding on both sides, one border), and once.
_PER_COLUMN = 3
_EDGE = 1
# A wrapping column is given at least this many cells before columns are dropped for it.
_MIN_WRAP = 16


@dataclass(frozen=True)
class Col:
    name: str
    # Higher numbers are dropped first when a terminal is too narrow; 0: never dropped.
    drop: int = 0
    # Long free text that may wrap in a terminal (reasons, values). Everything else is kept
    # on one line, whole.
    wrap: bool = False
    justify: str = "left"


def _plain(cell: Cell) -> str:
    text = cell.plain if isinstance(cell, Text) else str(cell)
    return " ".join(text.split()) if ("\n" in text or "\t" in text) else text


def emit(
    columns: Sequence[Col],
    rows: Sequence[Sequence[Cell]],
    *,
    title: str | Text | None = None,
    caption: str | None = None,
    out: Console | None = None,
) -> None:
    """Print ``rows`` under ``columns`` on ``out`` (the command's stdout by default)."""
    out = out or default_console
    shown = render(
        columns, rows, title=title, caption=caption, terminal=out.is_terminal, width=out.width
    )
    if isinstance(shown, Text):
        # Written as it is: no markup, no highlighting, no wrapping at the terminal width.
        out.print(shown, soft_wrap=True, crop=False)
    else:
        out.print(shown, soft_wrap=False)


def render(
    columns: Sequence[Col],
    rows: Sequence[Sequence[Cell]],
    *,
    title: str | Text | None = None,
    caption: str | None = None,
    terminal: bool,
    width: int,
) -> Table | Text:
    """A rich table fitted to ``width`` for a terminal, else (or when even the columns that
    are never dropped do not fit) the plain text table."""
    widths = [
        max([cell_len(c.name), *(cell_len(_plain(row[i])) for row in rows)])
        for i, c in enumerate(columns)
    ]
    if terminal:
        shown = _fit(columns, widths, width)
        if shown is not None:
            return _rich(columns, rows, widths, shown, title, caption)
    return _text(columns, rows, widths, title, caption)


def _needed(columns: Sequence[Col], widths: Sequence[int], shown: Sequence[int]) -> int:
    cells = sum(min(widths[i], _MIN_WRAP) if columns[i].wrap else widths[i] for i in shown)
    return cells + _PER_COLUMN * len(shown) + _EDGE


def _fit(columns: Sequence[Col], widths: Sequence[int], width: int) -> list[int] | None:
    """The indexes of the columns that fit in ``width`` (the droppable ones left out, most
    expendable first); None when even the columns that are never dropped do not fit."""
    shown = list(range(len(columns)))
    expendable = sorted(
        (i for i, c in enumerate(columns) if c.drop), key=lambda i: -columns[i].drop
    )
    while _needed(columns, widths, shown) > width:
        if not expendable:
            return None
        shown.remove(expendable.pop(0))
    return shown


def _rich(
    columns: Sequence[Col],
    rows: Sequence[Sequence[Cell]],
    widths: Sequence[int],
    shown: Sequence[int],
    title: str | Text | None,
    caption: str | None,
) -> Table:
    hidden = [columns[i].name for i in range(len(columns)) if i not in shown]
    notes = [caption] if caption else []
    if hidden:
        notes.append(f"too narrow for: {', '.join(hidden)} (widen the terminal, or --json)")
    table = Table(
        title=title,
        title_justify="left",
        caption="\n".join(notes) or None,
        caption_justify="left",
    )
    for i in shown:
        column = columns[i]
        if column.wrap:
            table.add_column(column.name, justify=column.justify, overflow="fold")  # type: ignore[arg-type]
        else:
            table.add_column(
                column.name,
                justify=column.justify,  # type: ignore[arg-type]
                no_wrap=True,
                min_width=widths[i],
            )
    for row in rows:
        table.add_row(*(row[i] for i in shown))
    return table


def _text(
    columns: Sequence[Col],
    rows: Sequence[Sequence[Cell]],
    widths: Sequence[int],
    title: str | Text | None,
    caption: str | None,
) -> Text:
    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, text in enumerate(cells):
            pad = widths[i] - cell_len(text)
            last = i == len(cells) - 1
            if columns[i].justify == "right":
                parts.append(" " * pad + text)
            else:
                parts.append(text if last else text + " " * pad)
        return "  ".join(parts).rstrip()

    lines = []
    if title is not None:
        lines.append(_plain(title))
    lines.append(line([c.name for c in columns]))
    lines.extend(line([_plain(cell) for cell in row]) for row in rows)
    if caption:
        lines.append(caption)
    return Text("\n".join(lines))


def clock(at: float | None, now: float | None = None) -> str:
    """A wall-clock time, as short as it can be: ``14:03:27`` today, ``05-02 14:03`` this
    year, ``2024-05-02 14:03`` before."""
    if not at:
        return "-"
    now = time.time() if now is None else now
    local, today = time.localtime(at), time.localtime(now)
    if local[:3] == today[:3]:
        return time.strftime("%H:%M:%S", local)
    if local.tm_year == today.tm_year:
        return time.strftime("%m-%d %H:%M", local)
    return time.strftime("%Y-%m-%d %H:%M", local)


def seconds(value: float | None) -> str:
    """A duration for people: ``0.35s``, ``12.3s``, ``4m05s``, ``2h03m``, ``3d04h``."""
    if value is None:
        return "-"
    value = max(0.0, value)
    if value < 10:
        return f"{value:.2f}s"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    if value < 86400:
        return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"
    return f"{int(value // 86400)}d{int(value % 86400 // 3600):02d}h"


def ago(value: float | None) -> str:
    """An age: ``0.3s ago``, ``4m05s ago``; ``never`` for None."""
    if value is None:
        return "never"
    return f"{max(0.0, value):.1f}s ago" if value < 60 else f"{seconds(value)} ago"
