"""Where a workspace's configuration is: what the relayed commands (cli/main.py) need to find
the command server before they import pydantic, typer or the configuration model."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

__all__ = ["CONFIG_NAME", "DEFAULT_DATA_DIR", "find_config"]

CONFIG_NAME = "mrbatch.toml"
DEFAULT_DATA_DIR = ".mrbatch"  # the default of `data_dir`, relative to mrbatch.toml


def find_config(start: Path | None = None) -> Path:
    """The nearest ``mrbatch.toml`` in ``start`` or a parent directory."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no {CONFIG_NAME} in {here} or any parent directory",
        hint="run `mrbatch init` here, change into a workspace, or pass --config PATH",
    )
