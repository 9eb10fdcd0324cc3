"""Which backends exist for each port: names as written in ``[backends]`` of ``mrbatch.toml``,
mapped to the ``module:factory`` that opens one. Plain data: the configuration checks names
against it when it loads, and the factory (:mod:`mrbatch.backends`) imports a module only when
that backend is configured. Adding a backend is its module plus one line here.
"""

from __future__ import annotations

__all__ = ["BACKUP_TARGETS", "REGISTRY", "WEBHOOK", "check_backend_names"]

# port -> backend name -> "module:factory". Each factory takes (workspace, region) for the
# object store and state table, (workspace, caller) for the control plane and (workspace)
# for the notifier and the executor, and returns an object satisfying the port's protocol.
REGISTRY: dict[str, dict[str, str]] = {
    "object_store": {
        "local": "mrbatch.backends.localfs:open_store",
        "s3": "mrbatch.backends.s3:open_store",
    },
    "state_table": {
        "sqlite": "mrbatch.backends.sqlite_state:open_table",
        "dynamodb": "mrbatch.backends.dynamodb:open_table",
    },
    "control_plane": {
        "sqlite": "mrbatch.backends.sqlite_control:open_control_plane",
        "etcd": "mrbatch.backends.etcd_control:open_control_plane",
    },
    "notifier": {
        "outbox": "mrbatch.backends.mail:open_outbox",
        "smtp": "mrbatch.backends.mail:open_smtp",
    },
    "executor": {
        "process-pool": "mrbatch.backends.executors:open_process_pool",
        "inline": "mrbatch.backends.executors:open_inline",
        "dask": "mrbatch.backends.dask_executor:open_dask",
    },
}


# Not a port chosen in [backends]: pipelines that declare a webhook use this sender.
WEBHOOK = "mrbatch.backends.webhook:open_webhook"

# Not a port either: backup targets by URL scheme (a plain path is a directory, built into
# mrbatch.maintain.target). Each factory takes (url, workspace or None, create).
BACKUP_TARGETS = {"s3": "mrbatch.backends.s3backup:open_target"}


def check_backend_names(chosen: dict[str, str]) -> None:
    """Raise ValueError naming the key when a port's chosen backend is not registered."""
    for port, names in REGISTRY.items():
        name = chosen.get(port)
        if name not in names:
            known = ", ".join(sorted(names))
            raise ValueError(f"backends.{port}: unknown backend {name!r} (known: {known})")
