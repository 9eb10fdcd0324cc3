"""The architecture stays visible: every import of the package (module level, inside functions
and under TYPE_CHECKING alike) forms a graph without cycles; the core never imports a backend
module (only the factory names them, as strings); and modules stay small enough to read."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "mrbatch"
# One cohesive thing each, longer than the rule of thumb of about 400 lines.
LONG_ALLOWED: dict[str, int] = {
    "mrbatch.proof.chaos": 430,  # one experiment's life: inject, hold, observe, restore, settle
    "mrbatch.ports": 430,  # every port and the values they exchange, read as one contract
}
MAX_LINES = 420


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from pkg import mod`` depends on the module, ``from mod import name`` on mod.
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target in known and target != name:
                yield target


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: set(_imports(name, path, known)) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if state.get(nxt) is None and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None and (found := visit(node)):
            return found
    return None


def test_no_import_cycles() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_checker_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_only_the_backend_factory_names_backend_modules() -> None:
    graph = _graph()
    backend_modules = {
        name
        for name in graph
        if name.startswith("mrbatch.backends.")
        and name not in ("mrbatch.backends.registry", "mrbatch.backends.faulty")
    }
    offenders = {
        name: sorted(graph[name] & backend_modules)
        for name in graph
        if not name.startswith("mrbatch.backends") and graph[name] & backend_modules
    }
    assert not offenders, offenders


def test_modules_fit_in_one_reading() -> None:
    too_long = {}
    for name, path in _modules().items():
        lines = len(path.read_text().splitlines())
        if lines > LONG_ALLOWED.get(name, MAX_LINES):
            too_long[name] = lines
    assert not too_long, too_long


def test_no_module_lies_loose_at_the_package_root() -> None:
    loose = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    # The foundations every part shares (durable: fsync of local files, which the access point,
    # the reference cache, backups and the embedded store all need); everything else lives in
    # the package of its part.
    assert loose == ["durable", "errors", "faults", "ports", "retry"], loose
