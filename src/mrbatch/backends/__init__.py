"""The factory: the one place that turns a backend name in ``mrbatch.toml`` into an open port.

The core never imports a backend module: it calls ``open_*`` here, which looks the configured
name up in :mod:`mrbatch.backends.registry`, imports that module only then, and wraps the
object store, state table and control plane in the fault points of
:mod:`mrbatch.backends.faulty`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, cast

from ..errors import ConfigError
from ..faults import FaultPoints
from .faulty import Guarded
from .registry import BACKUP_TARGETS, REGISTRY, WEBHOOK

if TYPE_CHECKING:
    from ..config.workspace import Workspace
    from ..ports import ControlPlane, Executor, Notifier, ObjectStore, StateTable, WebhookSender

__all__ = [
    "REGISTRY",
    "open_backup_target",
    "open_control_plane",
    "open_executor",
    "open_notifier",
    "open_object_store",
    "open_state_table",
    "open_webhook",
    "provision",
]


def _factory(port: str, name: str) -> Any:
    try:
        target = REGISTRY[port][name]
    except KeyError as exc:
        raise ConfigError(f"backends.{port}: unknown backend {name!r}") from exc
    module_name, _, attr = target.partition(":")
    return getattr(_module(port, name, module_name), attr)


def _module(port: str, name: str, module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.startswith("mrbatch"):
            raise
        raise ConfigError(
            f"backends.{port}: {name!r} needs the package {exc.name!r}, which is not installed",
            hint=_EXTRAS.get(exc.name.partition(".")[0]),
        ) from exc


# The optional extra that installs a backend's third-party package.
_EXTRAS = {
    "boto3": "pip install 'mrbatch[aws]'",
    "botocore": "pip install 'mrbatch[aws]'",
    "etcd3gw": "pip install 'mrbatch[etcd]'",
    "dask": "pip install 'mrbatch[dask]'",
    "distributed": "pip install 'mrbatch[dask]'",
}


def _faults(ws: Workspace) -> FaultPoints:
    return FaultPoints(ws.faults_path)


def open_object_store(ws: Workspace, region: str) -> ObjectStore:
    store = _factory("object_store", ws.config.backends.object_store)(ws, region)
    return cast("ObjectStore", Guarded(store, _faults(ws), "storage", region))


def open_state_table(ws: Workspace, region: str) -> StateTable:
    table = _factory("state_table", ws.config.backends.state_table)(ws, region)
    return cast("StateTable", Guarded(table, _faults(ws), "state", region))


def open_control_plane(ws: Workspace, caller: str | None = None) -> ControlPlane:
    """The control plane as seen from ``caller`` (a region, or None for an operator)."""
    plane = _factory("control_plane", ws.config.backends.control_plane)(ws, caller)
    return cast("ControlPlane", Guarded(plane, _faults(ws), "control", caller))


def open_notifier(ws: Workspace) -> Notifier:
    notifier: Notifier = _factory("notifier", ws.config.backends.notifier)(ws)
    return notifier


def open_executor(ws: Workspace) -> Executor:
    executor: Executor = _factory("executor", ws.config.backends.executor)(ws)
    return executor


def provision(ws: Workspace) -> list[str]:
    """Create what the configured object store and state table need in every region when it
    is missing (a bucket with versioning, a table); idempotent. Embedded backends need
    nothing. Returns one line per thing checked or made."""
    done: list[str] = []
    for port in ("object_store", "state_table"):
        name = getattr(ws.config.backends, port)
        module = _module(port, name, REGISTRY[port][name].partition(":")[0])
        hook = getattr(module, "provision", None)
        if hook is not None:
            done.extend(f"{region}: {hook(ws, region)}" for region in ws.regions)
    return done


def open_webhook(ws: Workspace) -> WebhookSender:
    """The sender of pipelines' webhooks."""
    module_name, _, attr = WEBHOOK.partition(":")
    sender: WebhookSender = getattr(importlib.import_module(module_name), attr)(ws)
    return sender


def open_backup_target(url: str, ws: Workspace | None, *, create: bool) -> Any:
    """The backup target (``mrbatch.maintain.target.BackupTarget``) a URL names
    (``s3://bucket/prefix``), or None for a scheme no backend serves. Its module (and boto3)
    is imported only now."""
    scheme = url.partition("://")[0]
    target = BACKUP_TARGETS.get(scheme)
    if target is None:
        return None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.startswith("mrbatch"):
            raise
        raise ConfigError(
            f"backup target {url}: {scheme}:// needs the package {exc.name!r}, which is not"
            " installed",
            hint=_EXTRAS.get(exc.name.partition(".")[0]),
        ) from exc
    return getattr(module, attr)(url, ws, create)
