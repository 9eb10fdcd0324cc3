"""Fixtures that run every contract test once per backend registered in
:mod:`tests.contracts.backends`, with the backend's name as the test id (``[local]``,
``[process-pool]``...). Ports are always opened through the factory, from the workspace the
backend's fixture configured, never by constructing a backend class."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mrbatch import backends
from mrbatch.config.workspace import Workspace
from mrbatch.ports import ControlPlane, Executor, Notifier, ObjectStore, StateTable
from tests.contracts.backends import (
    CONTROL_PLANES,
    EXECUTORS,
    NOTIFIERS,
    OBJECT_STORES,
    STATE_TABLES,
    ExecutorSetup,
    NotifierSetup,
)


@pytest.fixture
def workspace() -> Workspace:
    # The shared default workspace would run a contract against the default backend only.
    pytest.fail(
        "contract tests take their port's workspace (store_workspace, table_workspace,"
        " control_workspace, notifier_setup, executor_setup) so they run for every backend",
        pytrace=False,
    )


def _configured(ws: Workspace, port: str, name: str) -> Workspace:
    # A fixture that forgot its [backends] line would silently test the default backend.
    chosen = getattr(ws.config.backends, port)
    assert chosen == name, f"the {name!r} fixture configured backends.{port} = {chosen!r}"
    return ws


# --------------------------------------------------------------------------- object store


@pytest.fixture(params=list(OBJECT_STORES))
def store_workspace(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workspace]:
    with OBJECT_STORES[request.param](tmp_path) as ws:
        yield _configured(ws, "object_store", request.param)


@pytest.fixture
def store_factory(store_workspace: Workspace) -> Callable[[str], ObjectStore]:
    return lambda region: backends.open_object_store(store_workspace, region)


@pytest.fixture
def store(store_factory: Callable[[str], ObjectStore], store_workspace: Workspace) -> ObjectStore:
    return store_factory(store_workspace.regions[0])


# --------------------------------------------------------------------------- state table


@pytest.fixture(params=list(STATE_TABLES))
def table_workspace(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workspace]:
    with STATE_TABLES[request.param](tmp_path) as ws:
        yield _configured(ws, "state_table", request.param)


@pytest.fixture
def table_factory(table_workspace: Workspace) -> Callable[[str], StateTable]:
    return lambda region: backends.open_state_table(table_workspace, region)


@pytest.fixture
def table(table_factory: Callable[[str], StateTable], table_workspace: Workspace) -> StateTable:
    return table_factory(table_workspace.regions[0])


# --------------------------------------------------------------------------- control plane


@pytest.fixture(params=list(CONTROL_PLANES))
def control_workspace(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workspace]:
    with CONTROL_PLANES[request.param](tmp_path) as ws:
        yield _configured(ws, "control_plane", request.param)


@pytest.fixture
def control(control_workspace: Workspace) -> ControlPlane:
    return backends.open_control_plane(control_workspace)


# --------------------------------------------------------------------------- notifier


@pytest.fixture(params=list(NOTIFIERS))
def notifier_setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifierSetup]:
    with NOTIFIERS[request.param](tmp_path) as setup:
        _configured(setup.workspace, "notifier", request.param)
        yield setup


@pytest.fixture
def notifier(notifier_setup: NotifierSetup) -> Notifier:
    return backends.open_notifier(notifier_setup.workspace)


# --------------------------------------------------------------------------- executor


@pytest.fixture(params=list(EXECUTORS))
def executor_setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExecutorSetup]:
    with EXECUTORS[request.param](tmp_path) as setup:
        _configured(setup.workspace, "executor", request.param)
        yield setup


@pytest.fixture
def executor(executor_setup: ExecutorSetup) -> Iterator[Executor]:
    opened = backends.open_executor(executor_setup.workspace)
    yield opened
    opened.shutdown(cancel=True)  # no worker outlives its test
