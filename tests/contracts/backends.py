"""The backends each contract suite runs against: one fixture per registered backend.

A fixture takes an empty temporary directory, starts whatever the backend needs there (a
directory, a server), yields a workspace whose ``mrbatch.toml`` selects that backend in
``[backends]`` (plus any settings it needs), and stops what it started on exit. The suites open
the port from that workspace through the factory (``mrbatch.backends.open_*``), so the fault
points wrap exactly what production code gets.

How a new backend joins (S3, DynamoDB, etcd, Dask...):

1. write its module under ``src/mrbatch/backends/``;
2. add one line for it to ``REGISTRY`` in ``src/mrbatch/backends/registry.py``;
3. add one entry to its port's dict below: a context manager that starts its server on
   127.0.0.1 on a free port (``tests.conftest.free_port``), yields a workspace configured with
   ``make_workspace(root / "ws", backends={port: name}, section={...})``, and stops the server.

Every contract test then runs once more, with the backend's name in its test id, and
``test_registry.py`` fails while a registered backend has no fixture here.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import TypeVar

from mrbatch.config.workspace import Workspace
from tests.conftest import make_workspace
from tests.etcd_cluster import shared_cluster
from tests.smtp_server import SmtpServer

T = TypeVar("T")

# Given an empty temporary directory: start the backend, yield it configured, stop on exit.
BackendFixture = Callable[[Path], AbstractContextManager[T]]


def _embedded(port: str, name: str) -> BackendFixture[Workspace]:
    """A backend that keeps its data under the workspace directory: nothing to start."""

    @contextmanager
    def start(root: Path) -> Iterator[Workspace]:
        yield make_workspace(root / "ws", backends={port: name})

    return start


def _on_moto(init: dict[str, str]) -> BackendFixture[Workspace]:
    """A backend served by moto's server mode: the session's server (started on first use),
    emptied before each test; the workspace's buckets or tables are created by init."""

    @contextmanager
    def start(root: Path) -> Iterator[Workspace]:
        from tests.moto_server import shared

        server = shared()
        server.reset()
        yield make_workspace(root / "ws", init={**init, "endpoint_url": server.url})

    return start


OBJECT_STORES: dict[str, BackendFixture[Workspace]] = {
    "local": _embedded("object_store", "local"),
    "s3": _on_moto({"object_store": "s3"}),
}
STATE_TABLES: dict[str, BackendFixture[Workspace]] = {
    "sqlite": _embedded("state_table", "sqlite"),
    "dynamodb": _on_moto({"state_table": "dynamodb"}),
}


@contextmanager
def _etcd(root: Path) -> Iterator[Workspace]:
    # A healthy three-member cluster shared by the suite (started on first use, stopped with
    # the session); each workspace keeps its keys under a prefix of its own, as `init` writes.
    cluster = shared_cluster(root)
    yield make_workspace(
        root / "ws",
        init={"control_plane": "etcd", "etcd_endpoints": cluster.endpoints},
        etcd={"lease_ttl": "1s"},
    )


CONTROL_PLANES: dict[str, BackendFixture[Workspace]] = {
    "sqlite": _embedded("control_plane", "sqlite"),
    "etcd": _etcd,
}


# --------------------------------------------------------------------------- notifiers


@dataclass(frozen=True)
class NotifierSetup:
    """A workspace configured with one notifier, and handles on the destination it sends to."""

    workspace: Workspace
    # Everything the destination holds, parsed as RFC 5322, as it received it.
    delivered: Callable[[], list[Message]]
    # Whether a resend of the same Message-ID delivers nothing new. When False, every copy
    # still carries the same Message-ID so the receiving system can drop the repeat.
    deduplicates: bool
    # Make the destination answer but refuse every message from now on;
    # None when the backend has no server that could refuse.
    refuse_from_now_on: Callable[[], None] | None
    # Make the destination unreachable (its server stops listening);
    # None when the backend has no server that could be unreachable.
    make_unreachable: Callable[[], None] | None


def _read_outbox(directory: Path) -> list[Message]:
    # Every file, not only *.eml: a leftover temporary file would count as a second delivery.
    if not directory.is_dir():
        return []
    return [message_from_bytes(path.read_bytes()) for path in sorted(directory.iterdir())]


@contextmanager
def _outbox(root: Path) -> Iterator[NotifierSetup]:
    ws = make_workspace(root / "ws", backends={"notifier": "outbox"})

    def block_the_directory() -> None:
        # A file where the outbox directory should be: nothing can be written there.
        shutil.rmtree(ws.outbox_dir, ignore_errors=True)
        ws.outbox_dir.parent.mkdir(parents=True, exist_ok=True)
        ws.outbox_dir.write_text("not a directory\n")

    yield NotifierSetup(
        workspace=ws,
        delivered=lambda: _read_outbox(ws.outbox_dir),
        deduplicates=True,  # one file per message id, linked exclusively
        refuse_from_now_on=None,  # a local directory, no server to refuse
        make_unreachable=block_the_directory,
    )


def smtp_workspace(root: Path, port: int) -> Workspace:
    """A workspace that sends its mail to an SMTP server on 127.0.0.1:``port``."""
    return make_workspace(
        root / "ws",
        backends={"notifier": "smtp"},
        notify={"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_timeout": 5},
    )


@contextmanager
def _smtp(root: Path) -> Iterator[NotifierSetup]:
    with SmtpServer() as server:

        def refuse() -> None:
            server.handler.failing = True

        yield NotifierSetup(
            workspace=smtp_workspace(root, server.port),
            delivered=lambda: list(server.handler.messages),
            deduplicates=False,  # a mail server cannot tell a resend from a new message
            refuse_from_now_on=refuse,
            make_unreachable=server.stop,
        )


NOTIFIERS: dict[str, BackendFixture[NotifierSetup]] = {
    "outbox": _outbox,
    "smtp": _smtp,
}


# --------------------------------------------------------------------------- executors


@dataclass(frozen=True)
class ExecutorSetup:
    """A workspace configured with one executor, and what the suite may do to its workers."""

    workspace: Workspace
    # The error a task's future raises when the worker process running it is killed; None when
    # tasks do not run in separate worker processes (listed by ``pids()``) that can be killed.
    killed_worker_error: type[BaseException] | None


@contextmanager
def _process_pool(root: Path) -> Iterator[ExecutorSetup]:
    # Two workers: enough to show a pool, few enough for a shared two-core machine.
    ws = make_workspace(root / "ws", backends={"executor": "process-pool"}, pipeline={"workers": 2})
    yield ExecutorSetup(workspace=ws, killed_worker_error=BrokenProcessPool)


@contextmanager
def _inline(root: Path) -> Iterator[ExecutorSetup]:
    ws = make_workspace(root / "ws", backends={"executor": "inline"})
    yield ExecutorSetup(workspace=ws, killed_worker_error=None)  # runs in the caller's thread


@contextmanager
def _dask(root: Path) -> Iterator[ExecutorSetup]:
    # A LocalCluster of two worker processes, started by the executor the suite opens.
    from distributed.scheduler import KilledWorker

    ws = make_workspace(
        root / "ws", backends={"executor": "dask"}, dask={"scheduler": "local", "workers": 2}
    )
    yield ExecutorSetup(workspace=ws, killed_worker_error=KilledWorker)


EXECUTORS: dict[str, BackendFixture[ExecutorSetup]] = {
    "process-pool": _process_pool,
    "inline": _inline,
    "dask": _dask,
}
