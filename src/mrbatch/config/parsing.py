"""Reading ``mrbatch.toml`` and turning what is wrong with it into one line naming the file and
the key (or the line and column of a syntax error), with a hint: the nearest known key for an
unknown one."""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError

__all__ = ["dotted", "read_toml", "validate"]

_M = TypeVar("_M", bound=BaseModel)


def dotted(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: no such configuration file",
            hint="run `mrbatch init` to create a workspace, or pass --config PATH",
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, hint = _toml_error(path, text, exc)
        raise ConfigError(message, hint=hint) from exc


_AT = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")


def _toml_error(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> tuple[str, str]:
    """Message and hint naming the line and column of a TOML syntax error, and that line."""
    message = str(exc)
    match = _AT.search(message)
    if match is None:
        return f"{path}: not valid TOML: {message}", "fix the syntax of the file"
    what = message[: match.start()].strip()
    if match.group(1) is None:
        lines = text.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
    else:
        line, column = int(match.group(1)), int(match.group(2))
    source = text.splitlines()[line - 1] if 0 < line <= len(text.splitlines()) else ""
    return (
        f"{path}:{line}:{column}: not valid TOML at line {line}, column {column}: {what}",
        f"line {line} reads: {source.strip()!r}" if source.strip() else "fix the syntax there",
    )


def _fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys a TOML table at ``loc`` (a location in ``model``) may have."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if not isinstance(part, str) or current is None:
            return []
        field = current.model_fields.get(part) or next(
            (f for f in current.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    if current is None:
        return []
    return [f.alias or name for name, f in current.model_fields.items()]


def validate(model: type[_M], raw: dict[str, Any], path: Path) -> _M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        key = dotted(loc)
        message = first["msg"].removeprefix("Value error, ")
        hint = "fix the key in the file; `mrbatch init` writes a commented example"
        prefix = f"{key}: " if key else ""
        if not key:
            # A rule across sections names its keys itself ("backends.x: ..." or "backends.x
            # is ... but notify.y ..."): never "(top level)" before it.
            named = re.match(r"^([a-z_]+(?:\.[a-z_]+)+): (.*)$", message, re.DOTALL)
            if named:
                prefix, message = f"{named.group(1)}: ", named.group(2)
            elif not re.match(r"^[a-z_]+\.[a-z_]+", message):
                prefix = "(top level): "
        if first["type"] == "extra_forbidden":
            message = "unknown key"
            known = _fields(model, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            if close:
                where = ".".join(str(p) for p in loc[:-1])
                message += f"; did you mean {(where + '.') if where else ''}{close[0]}?"
            elif known:
                hint = f"known keys here: {', '.join(sorted(known))}"
        elif first["type"] == "missing":
            message = "required key is missing"
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise ConfigError(f"{path}: {prefix}{message}{more}", hint=hint) from exc
