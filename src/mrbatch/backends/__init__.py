"""The one place that maps a backend name in ``mrbatch.toml`` to its implementation.

The core never imports a backend module: it asks this factory, which imports the module named in
the registry only when that backend is configured. Adding a backend is one registry line plus its
module; an unknown name fails when the configuration loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import BackendsConfig
    from ..ports import ControlPlane, Executor, Notifier, ObjectStore, StateTable
    from ..workspace import Workspace

__all__ = [
    "REGISTRY",
    "check_backend_names",
    "open_control_plane",
    "open_executor",
    "open_notifier",
    "open_object_store",
    "open_state_table",
]

# port -> backend name -> "module:factory". Each factory takes (workspace, region) or
# (workspace) and returns an object satisfying the port's protocol.
REGISTRY: dict[str, dict[str, str]] = {
    "object_store": {"local": "mrbatch.backends.localfs:open_store"},
    "state_table": {"sqlite": "mrbatch.backends.sqlite_state:open_table"},
    "control_plane": {"sqlite": "mrbatch.backends.sqlite_control:open_control_plane"},
    "notifier": {
        "outbox": "mrbatch.backends.mail:open_outbox",
        "smtp": "mrbatch.backends.mail:open_smtp",
    },
    "executor": {
        "process-pool": "mrbatch.backends.executors:open_process_pool",
        "inline": "mrbatch.backends.executors:open_inline",
    },
}


def check_backend_names(backends: BackendsConfig) -> None:
    for port, names in REGISTRY.items():
        chosen = getattr(backends, port)
        if chosen not in names:
            known = ", ".join(sorted(names))
            raise ValueError(f"backends.{port}: unknown backend {chosen!r} (known: {known})")


def _factory(port: str, name: str) -> Any:
    try:
        target = REGISTRY[port][name]
    except KeyError as exc:
        raise ConfigError(f"backends.{port}: unknown backend {name!r}") from exc
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def open_object_store(ws: Workspace, region: str) -> ObjectStore:
    store: ObjectStore = _factory("object_store", ws.config.backends.object_store)(ws, region)
    return store


def open_state_table(ws: Workspace, region: str) -> StateTable:
    table: StateTable = _factory("state_table", ws.config.backends.state_table)(ws, region)
    return table


def open_control_plane(ws: Workspace, caller: str | None = None) -> ControlPlane:
    """The control plane as seen from ``caller`` (a region, or None for an operator)."""
    plane: ControlPlane = _factory("control_plane", ws.config.backends.control_plane)(ws, caller)
    return plane


def open_notifier(ws: Workspace) -> Notifier:
    notifier: Notifier = _factory("notifier", ws.config.backends.notifier)(ws)
    return notifier


def open_executor(ws: Workspace) -> Executor:
    executor: Executor = _factory("executor", ws.config.backends.executor)(ws)
    return executor
