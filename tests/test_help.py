"""`--help` reads as help: every command's usage names its arguments (``KEY``, not ``{key}``),
types read as types (``TEXT``, ``DURATION``; never ``<bool>``, ``<str>``, ``<list[str]>``,
``<int range>``), every option and argument says what it is for, summaries fit the command list
and nothing in a help text is eaten as markup. And the dependency range keeps it so."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from mrbatch import __version__
from mrbatch.cli.app import app
from mrbatch.cli.lazy import LISTED, LazyGroup
from mrbatch.cli.main import PRIVATE_UMASK
from mrbatch.config.workspace import PRIVATE_UMASK as WORKSPACE_UMASK
from tests.helpers import mrbatch

ROOT = Path(__file__).resolve().parents[1]
# What typer 0.27 and later print (with any click) instead of help.
BROKEN = ("{", "<bool>", "<str>", "<int range>", "<list[", "<float>", "<path>", "<int>")


def _commands() -> Iterator[tuple[list[str], Any]]:
    def walk(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
        yield path, command
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            yield from walk(sub, [*path, name])

    group = typer.main.get_command(app)
    assert isinstance(group, LazyGroup)
    group.load_all()
    yield from walk(group, [])


COMMANDS = list(_commands())


def _render(path: list[str]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "mrbatch")
def test_every_help_reads_as_help(path: list[str]) -> None:
    text = _render(path)
    for token in BROKEN:
        assert token not in text, f"`mrbatch {' '.join(path)} --help` shows {token!r}:\n{text}"
    assert re.search(rf"Usage: mrbatch {' '.join(path)}\s*\S", text), text


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "mrbatch" for p, _ in COMMANDS]
)
def test_every_option_and_argument_says_what_it_is_for(path: list[str], command: Any) -> None:
    where = f"mrbatch {' '.join(path)}"
    assert (command.help or "").strip(), f"{where} has no description"
    summary = inspect.cleandoc(command.help).split("\n\n")[0]
    # The command list shows the first paragraph as it is written: one line, or it breaks.
    assert "\n" not in summary, f"{where}: make the first paragraph of its help one line"
    for param in command.params:
        name = "/".join(getattr(param, "opts", [param.name]))
        text = getattr(param, "help", None) or ""
        assert text.strip(), f"{where} {name} has no description"
        # Help is rich markup: [words] in square brackets would be eaten, not shown.
        assert "[" not in text, f"{where} {name}: no [brackets] in help"
    assert "[" not in (command.help or ""), f"{where}: no [brackets] in help"


def test_usage_and_types_read_normally() -> None:
    get = _render(["get"])
    assert "Usage: mrbatch get [OPTIONS] KEY" in get and "TEXT" in get and "PATH" in get
    wait = _render(["wait"])
    assert "--timeout" in wait and "DURATION" in wait and "[default: 300s]" in wait
    failover = " ".join(_render(["failover"]).split())
    assert "--yes -y Approve without a prompt." in failover
    assert "--json Print the plan's execution" in failover


def test_version_and_help_from_the_real_command_line(tmp_path: Path) -> None:
    shown = mrbatch(tmp_path, "--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"mrbatch {__version__}"
    assert mrbatch(tmp_path, "-V").stdout == shown.stdout
    helped = mrbatch(tmp_path, "get", "-h", env={**os.environ, "COLUMNS": "80"})
    assert helped.returncode == 0 and "Usage: mrbatch get [OPTIONS] KEY" in helped.stdout


def test_the_dependency_range_keeps_help_readable() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    typer_range = next(d for d in project["dependencies"] if d.startswith("typer"))
    assert "<0.27" in typer_range, typer_range  # typer 0.27+ prints {key}, <bool>, <str>
    installed = tuple(int(part) for part in version("typer").split(".")[:2])
    assert (0, 24) <= installed < (0, 27), f"typer {version('typer')} is outside {typer_range}"


def test_the_command_list_names_every_command_as_it_describes_itself() -> None:
    """`mrbatch --help` lists commands from a table, without importing them: the table must say
    what the commands themselves say, and name every one of them."""
    listed = {entry.name: entry.summary for entry in LISTED}
    real = {
        p[0]: inspect.cleandoc(c.help or "").split("\n\n")[0] for p, c in COMMANDS if len(p) == 1
    }
    assert listed == real
    assert PRIVATE_UMASK == WORKSPACE_UMASK


def test_help_and_version_import_no_command() -> None:
    """The quick paths stay quick: neither imports a command module, polars nor pydantic."""
    code = (
        "import sys\n"
        "from mrbatch.cli.main import run\n"
        "for argv in (['--help'], ['--version']):\n"
        "    try:\n"
        "        run(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('polars', 'pydantic')\n"
        "         or m.startswith('mrbatch.cli.') and m.rsplit('.', 1)[1] not in\n"
        "         ('app', 'main', 'lazy')]\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-2000:]


def test_help_paragraphs_are_wrapped_by_the_terminal_not_the_source() -> None:
    """Help bodies are docstrings broken at 100 columns; shown at 80 they would break
    mid-sentence ("measures throughput,|latency ..."): each paragraph reaches rich whole."""
    load = " ".join(_render(["load"]).split("\n")[5:8])
    assert "measures throughput, latency" in " ".join(load.split()), load
    for path, command in COMMANDS:
        for paragraph in (command.help or "").split("\n\n"):
            lines = paragraph.splitlines()
            listed = any(line[:1] in (" ", "-", "*", "\b") for line in lines)
            assert len(lines) <= 1 or listed, f"mrbatch {' '.join(path)}: {paragraph!r}"
