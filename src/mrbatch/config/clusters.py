"""The sections of ``mrbatch.toml`` for backends that run on a cluster: ``[etcd]`` (the control
plane's members) and ``[dask]`` (the executor's scheduler). Read only when that backend is
chosen in ``[backends]``; the defaults are harmless otherwise."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from .values import Duration, Section

__all__ = ["DaskConfig", "EtcdConfig"]

_URL = re.compile(r"^https?://[^/\s:]+(:\d{1,5})?/?$")
_DASK_ADDRESS = re.compile(r"^(tcp|tls|ws|wss|inproc)://\S+$")


class EtcdConfig(Section):
    """The etcd cluster of ``backends.control_plane = "etcd"``."""

    # Client URLs of the members, e.g. ["http://10.0.0.1:2379", ...]; every region lists all.
    endpoints: list[str] = Field(default_factory=list)
    # Every key of this workspace lives under it: one cluster can serve several workspaces.
    prefix: str = "/mrbatch"
    # A region process's lease: without a quorum for half of it, the process stops publishing
    # and mailing; the lease ends at most this long after it lost touch (whole seconds).
    lease_ttl: Duration = 2.0
    # Longest wait for one answer from the cluster (trying every member in turn).
    timeout: Duration = 1.0

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _URL.match(value):
                raise ValueError(f"{value!r} is not a client URL such as http://127.0.0.1:2379")
        return values

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/") or len(value) < 2 or " " in value:
            raise ValueError(f"{value!r} is not a key prefix such as '/mrbatch/orders'")
        return value

    @field_validator("lease_ttl")
    @classmethod
    def _ttl(cls, value: float) -> float:
        if not 1.0 <= value <= 600.0:
            raise ValueError("the lease lasts between 1s and 600s")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("the timeout must be above zero")
        return value


class DaskConfig(Section):
    """The Dask cluster of ``backends.executor = "dask"``."""

    # "local": each region process starts a LocalCluster of its own; or a scheduler's address
    # (tcp://host:8786) whose workers can open this workspace and its object store.
    scheduler: str = "local"
    # Worker processes of a LocalCluster; 0 means pipeline.workers, or one per CPU core.
    workers: int = Field(default=0, ge=0, le=256)
    threads_per_worker: int = Field(default=1, ge=1, le=64)

    @field_validator("scheduler")
    @classmethod
    def _address(cls, value: str) -> str:
        if value != "local" and not _DASK_ADDRESS.match(value):
            raise ValueError(f"{value!r} is neither 'local' nor an address such as tcp://host:8786")
        return value
