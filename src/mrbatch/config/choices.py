"""``[backends]``: which backend serves each port, and the check, once the whole configuration
is read, that the sections the chosen backends read fit the choice (``[s3]``, ``[dynamodb]``,
``[etcd]``)."""

from __future__ import annotations

from typing import Any, Literal

from ..backends.registry import check_backend_names
from .aws import check_names
from .values import Section

__all__ = ["BackendsConfig", "check_backends"]


class BackendsConfig(Section):
    """Which backend serves each port; names are looked up in ``mrbatch.backends.registry``."""

    object_store: str = "local"
    state_table: str = "sqlite"
    control_plane: str = "sqlite"
    notifier: str = "outbox"
    executor: str = "process-pool"
    # Who copies objects and records between regions: mrbatch's replicators ("builtin"), or
    # the provider (S3 Cross-Region Replication, DynamoDB global tables: "native"), which
    # mrbatch then only watches to measure backlog and lag.
    replication: Literal["builtin", "native"] = "builtin"


def check_backends(config: Any) -> None:
    """Raise ValueError naming the key when a chosen backend is not registered, or a section
    it reads does not fit: bucket and table names, native replication, etcd's members.
    ``config`` is the whole :class:`~mrbatch.config.settings.Config` (which imports this)."""
    check_backend_names(config.backends.model_dump(exclude={"replication"}))
    check_names(config)
    if config.backends.control_plane == "etcd" and not config.etcd.endpoints:
        raise ValueError(
            "backends.control_plane is 'etcd' but etcd.endpoints is empty; list the"
            ' client URLs of the members, e.g. ["http://127.0.0.1:2379"]'
        )
