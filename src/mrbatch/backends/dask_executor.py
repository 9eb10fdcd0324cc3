"""The Dask executor: chunk tasks on Dask workers, a LocalCluster of this process or a scheduler's.

Tasks are the engine's module-level functions of picklable arguments; each reads its byte range
from the object store and writes its outputs there itself, so only small arguments and results
cross the scheduler. Dask's own re-run of a task whose worker died is switched off
(``distributed.scheduler.allowed-failures`` 0, every submit ``pure=False``): the task's future
fails with ``KilledWorker`` and the orchestrator retries the chunk as it does for a broken
process pool, without using up an attempt (``lost_worker_errors``).

``dask.scheduler = "local"`` starts a LocalCluster in the region process on its first task:
worker processes (each under a nanny that restarts it when it dies) on 127.0.0.1, children of
this process, ended with it (distributed's workers exit when the pipe to the process that
started them closes; they also ask the kernel for SIGKILL when the thread that started them
ends, which it does when this process dies). ``pids()`` lists them,
so `mrbatch chaos kill-worker` works as with the process pool. With a scheduler's address the
workers are elsewhere: ``pids()`` is empty, and they must reach this workspace's object store.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING, Any

import dask
from distributed import Client, LocalCluster, WorkerPlugin
from distributed import Future as DaskFuture
from distributed.scheduler import KilledWorker

from .executors import _die_with_parent, use_worker_allocator_settings

if TYPE_CHECKING:
    from ..config.workspace import Workspace

__all__ = ["DaskExecutor", "open_dask"]

log = logging.getLogger("mrbatch.dask")
HEAL_EVERY = 5.0  # seconds between two checks for nannies that gave up


class _Prepare(WorkerPlugin):
    """Run in every worker when it starts (a restarted one too): die with the region process
    that started it (LocalCluster only), and import the task module once, before any task."""

    name = "mrbatch-prepare"

    def __init__(self, parent: int | None) -> None:
        self.parent = parent

    def setup(self, worker: Any) -> None:
        if self.parent is not None:
            _die_with_parent(self.parent)
        from ..engine import tasks  # noqa: F401  polars loads now, not in the first chunk


def _allowed_failures(dask_scheduler: Any) -> int:
    return int(dask_scheduler.allowed_failures)


async def _replace(cluster: LocalCluster, names: list[Any]) -> None:
    """In the cluster's event loop: forget the given nannies and let the cluster start new
    ones to match its spec."""
    for name in names:
        cluster.workers.pop(name, None)
    await cluster._correct_state()


class DaskExecutor:
    lost_worker_errors: tuple[type[BaseException], ...] = (KilledWorker,)

    def __init__(self, scheduler: str, *, workers: int, threads_per_worker: int = 1) -> None:
        self.scheduler = scheduler
        self.workers = max(1, workers)
        self.threads_per_worker = threads_per_worker
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._cluster: LocalCluster | None = None
        self._pending: dict[int, tuple[Future[Any], DaskFuture]] = {}
        # Workers lost and replaced (seen alive by ``pids()``, then gone): the heartbeat
        # reports it as pool_restarts, like the process pool's.
        self.restarts = 0
        self._seen: set[int] = set()
        self._healed = 0.0

    # ------------------------------------------------------------------ the cluster
    def _current(self) -> Client:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> Client:
        # The scheduler must not re-run a task whose worker died: the orchestrator decides.
        dask.config.set({"distributed.scheduler.allowed-failures": 0})
        if self.scheduler != "local":
            client = Client(self.scheduler, set_as_default=False, timeout="10s")
            allowed = client.run_on_scheduler(_allowed_failures)
            if allowed:
                log.warning(
                    "the Dask scheduler at %s re-runs a task whose worker died up to %d"
                    " time(s); start it with DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0"
                    " so mrbatch alone decides when a chunk runs again",
                    self.scheduler,
                    allowed,
                )
            client.register_plugin(_Prepare(None))
            return client
        # distributed reports every worker start and stop at INFO; the region's log keeps its
        # warnings (a worker killed, restarted) and errors.
        logging.getLogger("distributed").setLevel(logging.WARNING)
        cores = os.cpu_count() or 1
        os.environ.setdefault("POLARS_MAX_THREADS", str(max(1, cores // self.workers)))
        use_worker_allocator_settings("dirty_decay_ms:1000,muzzy_decay_ms:0")
        cluster = LocalCluster(
            n_workers=self.workers,
            threads_per_worker=self.threads_per_worker,
            processes=True,
            host="127.0.0.1",
            scheduler_port=0,
            # No dashboard; the scheduler's small HTTP endpoint stays on loopback, any port.
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": False},
            memory_limit=0,  # as the process pool: no nanny memory monitor killing workers
            silence_logs=logging.ERROR,
        )
        self._cluster = cluster
        client = Client(cluster, set_as_default=False)
        client.register_plugin(_Prepare(os.getpid()))
        return client

    # ------------------------------------------------------------------ the port
    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        client = self._current()
        outer: Future[Any] = Future()
        inner = client.submit(fn, *args, pure=False)
        token = id(outer)
        # Only this table refers to the Dask future: once it is settled the scheduler may
        # forget the task and its result (a result kept on a worker that dies later would be
        # recomputed by Dask, silently).
        self._pending[token] = (outer, inner)

        def finished(done: DaskFuture) -> None:
            self._pending.pop(token, None)
            try:
                value = done.result()
            except BaseException as exc:
                _settle(outer, exception=exc)
            else:
                _settle(outer, value=value)

        def cancelled(future: Future[Any]) -> None:
            held = self._pending.pop(token, None)
            if future.cancelled() and held is not None:
                held[1].cancel()

        outer.add_done_callback(cancelled)
        inner.add_done_callback(finished)
        return outer

    def pids(self) -> list[int]:
        cluster = self._cluster
        if cluster is None:
            return []
        found = []
        for nanny in list(getattr(cluster, "workers", {}).values()):
            process = getattr(getattr(nanny, "process", None), "process", None)
            pid = getattr(process, "pid", None)
            if process is not None and pid is not None and process.is_alive():
                found.append(int(pid))
        if cluster is self._cluster:
            # A worker seen before and gone now was lost (and its nanny starts another).
            self.restarts += len(self._seen - set(found))
            self._seen = set(found)
            self._heal(cluster)
        return sorted(found)

    def _heal(self, cluster: LocalCluster) -> None:
        """A nanny restarts its worker when it dies; if a nanny itself gave up (its worker kept
        dying while starting), put a new one in its place, so the cluster keeps its size.
        Checked at most every few seconds (the region's heartbeat calls ``pids()``)."""
        now = time.monotonic()
        if now - self._healed < HEAL_EVERY:
            return
        self._healed = now
        gone = [
            name
            for name, nanny in list(cluster.workers.items())
            if str(getattr(nanny, "status", "")) in ("Status.closed", "Status.failed")
        ]
        if not gone:
            return
        log.warning("Dask worker(s) %s stopped for good; starting replacements", gone)
        try:
            cluster.sync(_replace, cluster, gone)
        except Exception as exc:
            log.warning("replacing Dask workers %s failed: %s", gone, exc)

    def shutdown(self, *, cancel: bool = True) -> None:
        with self._lock:
            client, cluster = self._client, self._cluster
            self._client = self._cluster = None
        if client is None:
            return
        pids = self._pids_of(cluster)
        pending = list(self._pending.values())
        self._pending.clear()
        if cancel:
            for outer, inner in pending:
                outer.cancel()
                inner.cancel()
        else:
            for outer, _ in pending:
                try:
                    outer.result()
                except BaseException:
                    pass  # the task's own outcome; we only wait for it
        try:
            client.close(timeout=10)
            if cluster is not None:
                cluster.close(timeout=10)
        except Exception as exc:  # closing must not fail a stop; the workers are killed below
            log.warning("closing the Dask cluster: %s", exc)
        for pid in pids:  # nothing of ours outlives the stop, however the close went
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _pids_of(self, cluster: LocalCluster | None) -> list[int]:
        if cluster is None:
            return []
        saved, self._cluster = self._cluster, cluster
        try:
            return self.pids()
        finally:
            self._cluster = saved
            self._seen = set()


def _settle(
    future: Future[Any], *, value: Any = None, exception: BaseException | None = None
) -> None:
    if future.done():
        return  # cancelled meanwhile
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(value)
    except InvalidStateError:
        pass  # cancelled between the check and the call


def open_dask(ws: Workspace) -> DaskExecutor:
    settings = ws.config.dask
    workers = settings.workers or ws.config.pipeline.workers or (os.cpu_count() or 1)
    return DaskExecutor(
        settings.scheduler, workers=workers, threads_per_worker=settings.threads_per_worker
    )
