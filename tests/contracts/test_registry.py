"""Every backend a user can configure runs the contracts: the fixtures in
:mod:`tests.contracts.backends` name exactly the backends of
``src/mrbatch/backends/registry.py``."""

from __future__ import annotations

from mrbatch.backends.registry import REGISTRY
from tests.contracts import backends as fixtures


def test_every_registered_backend_has_a_contract_fixture() -> None:
    fixture_names = {
        "object_store": set(fixtures.OBJECT_STORES),
        "state_table": set(fixtures.STATE_TABLES),
        "control_plane": set(fixtures.CONTROL_PLANES),
        "notifier": set(fixtures.NOTIFIERS),
        "executor": set(fixtures.EXECUTORS),
    }
    assert fixture_names == {port: set(names) for port, names in REGISTRY.items()}
