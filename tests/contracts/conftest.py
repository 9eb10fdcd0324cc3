"""Backends each contract suite runs against. A new backend adds one entry here and must pass
the same assertions as the embedded one."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from mrbatch import backends
from mrbatch.config.workspace import Workspace
from mrbatch.ports import ControlPlane, ObjectStore, StateTable

OBJECT_STORES = ["local"]
STATE_TABLES = ["sqlite"]
CONTROL_PLANES = ["sqlite"]


@pytest.fixture(params=OBJECT_STORES)
def store_factory(
    request: pytest.FixtureRequest, workspace: Workspace
) -> Iterator[Callable[[str], ObjectStore]]:
    assert workspace.config.backends.object_store == request.param
    yield lambda region: backends.open_object_store(workspace, region)


@pytest.fixture
def store(store_factory: Callable[[str], ObjectStore], workspace: Workspace) -> ObjectStore:
    return store_factory(workspace.regions[0])


@pytest.fixture(params=STATE_TABLES)
def table_factory(
    request: pytest.FixtureRequest, workspace: Workspace
) -> Iterator[Callable[[str], StateTable]]:
    assert workspace.config.backends.state_table == request.param
    yield lambda region: backends.open_state_table(workspace, region)


@pytest.fixture
def table(table_factory: Callable[[str], StateTable], workspace: Workspace) -> StateTable:
    return table_factory(workspace.regions[0])


@pytest.fixture(params=CONTROL_PLANES)
def control(request: pytest.FixtureRequest, workspace: Workspace) -> ControlPlane:
    assert workspace.config.backends.control_plane == request.param
    return backends.open_control_plane(workspace)
