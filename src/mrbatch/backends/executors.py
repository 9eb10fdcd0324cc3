"""Executor backends: a process pool (the embedded default) and an inline executor that runs each
task at once in the caller's process (deterministic tests)."""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config.workspace import Workspace

__all__ = [
    "WORKER_MALLOC_CONF",
    "InlineExecutor",
    "ProcessPool",
    "open_inline",
    "open_process_pool",
    "use_worker_allocator_settings",
]


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """Worker initializer: the kernel kills this worker when the process that started it dies,
    however it dies (SIGKILL of its pid alone, as the OOM killer sends, included), so no worker
    outlives its region process holding memory."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the pool's own pipes still end an idle worker
    if os.getppid() != parent:
        os._exit(0)  # the parent died before the request took effect


# polars allocates with jemalloc (prefix _rjem_), which keeps freed pages resident a while:
# pages it has given back with MADV_FREE ("muzzy") still count in a worker's RSS until the
# kernel needs them. Muzzy pages released at once (muzzy_decay_ms:0) and one arena, so what
# polars' thread frees is reused by the worker's own thread rather than kept aside.
WORKER_MALLOC_CONF = "dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:1"


def use_worker_allocator_settings(settings: str) -> None:
    """Give the worker processes started from now on jemalloc ``settings``.

    polars sets ``_RJEM_MALLOC_CONF`` itself when it is imported: its own defaults, then the
    value already there. By the time a pool starts, this process has imported polars, so the
    variable is set and a ``setdefault`` never reached the workers (they ran on polars'
    defaults until 2026-12-02). Appended, they come last, and jemalloc keeps the last value
    of each option."""
    current = os.environ.get("_RJEM_MALLOC_CONF", "")
    if not current.endswith(settings):
        os.environ["_RJEM_MALLOC_CONF"] = f"{current},{settings}" if current else settings


def _warm() -> int:
    # Importing the task module loads polars once per worker, before the first real task.
    from ..engine import tasks  # noqa: F401

    return os.getpid()


class ProcessPool:
    """A pool of worker processes that replaces itself when a worker dies.

    ``concurrent.futures`` marks the whole pool broken when one worker is killed: every pending
    future fails with BrokenProcessPool. The orchestrator retries those tasks; this class makes
    sure the next ``submit`` gets a fresh pool instead of the broken one."""

    lost_worker_errors: tuple[type[BaseException], ...] = (BrokenProcessPool,)

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0
        # Each worker gets an equal share of the cores for polars' own threads.
        cores = os.cpu_count() or 1
        os.environ.setdefault("POLARS_MAX_THREADS", str(max(1, cores // self.workers)))
        use_worker_allocator_settings(WORKER_MALLOC_CONF)

    def _fresh(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        )
        for _ in range(self.workers):
            pool.submit(_warm)
        return pool

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            pool = self._pool
            if pool is None or getattr(pool, "_broken", False):
                if pool is not None:
                    self.restarts += 1
                    pool.shutdown(wait=False, cancel_futures=True)
                pool = self._pool = self._fresh()
            return pool

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        try:
            return self._current().submit(fn, *args)
        except BrokenProcessPool:
            return self._current().submit(fn, *args)

    def pids(self) -> list[int]:
        pool = self._pool
        processes = getattr(pool, "_processes", None) or {}
        return sorted(int(pid) for pid in processes)

    def shutdown(self, *, cancel: bool = True) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=not cancel, cancel_futures=cancel)
        if cancel:
            # A stop must be prompt; an interrupted chunk task is simply run again later.
            for process in processes:
                if process.is_alive():
                    process.kill()
            for process in processes:
                process.join(timeout=5)


class InlineExecutor:
    """Runs each task immediately in the calling thread."""

    lost_worker_errors: tuple[type[BaseException], ...] = ()

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # the future carries it, as a pool would
            future.set_exception(exc)
        return future

    def pids(self) -> list[int]:
        return []

    def shutdown(self, *, cancel: bool = True) -> None:
        return None


def open_process_pool(ws: Workspace) -> ProcessPool:
    return ProcessPool(ws.config.pipeline.workers or (os.cpu_count() or 1))


def open_inline(ws: Workspace) -> InlineExecutor:
    return InlineExecutor()
