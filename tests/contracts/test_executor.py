"""The executor contract, run against every executor in :mod:`tests.contracts.backends`."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from mrbatch import backends
from mrbatch.ports import Executor
from tests.contracts.backends import EXECUTORS, ExecutorSetup


def _square(x: int) -> int:
    return x * x


def _boom(message: str) -> None:
    raise ValueError(message)


def _pid() -> int:
    return os.getpid()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # the worker running this task is killed under it


def _malloc_conf() -> str:
    return os.environ.get("_RJEM_MALLOC_CONF", "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    return True


def _skip_unless_worker_processes(setup: ExecutorSetup) -> type[BaseException]:
    if setup.killed_worker_error is None:
        name = setup.workspace.config.backends.executor
        pytest.skip(f"{name} lacks capability killed_worker_error: no killable worker processes")
    return setup.killed_worker_error


def test_results_and_errors(executor: Executor) -> None:
    assert [executor.submit(_square, i).result(timeout=60) for i in range(5)] == [0, 1, 4, 9, 16]
    with pytest.raises(ValueError, match="bad chunk"):
        executor.submit(_boom, "bad chunk").result(timeout=60)


def test_shutdown_is_idempotent(executor: Executor) -> None:
    assert executor.submit(_square, 3).result(timeout=60) == 9
    executor.shutdown(cancel=True)
    executor.shutdown(cancel=True)
    executor.shutdown(cancel=False)


def test_a_killed_worker_fails_its_future_and_the_executor_recovers(
    executor: Executor, executor_setup: ExecutorSetup
) -> None:
    killed_worker_error = _skip_unless_worker_processes(executor_setup)
    assert executor.submit(_pid).result(timeout=60) in executor.pids()
    future = executor.submit(_die)
    with pytest.raises(killed_worker_error):
        future.result(timeout=60)
    assert executor.submit(_square, 7).result(timeout=60) == 49
    replacements = executor.pids()
    assert replacements and all(_alive(pid) for pid in replacements)
    executor.shutdown(cancel=True)
    assert executor.pids() == []  # the replacement workers are stopped too


def test_process_pool_counts_each_replaced_pool(tmp_path: Path) -> None:
    # Backend-specific: ``restarts`` is not part of the port; the heartbeat reports it as
    # pool_restarts, so an operator sees workers being lost.
    with EXECUTORS["process-pool"](tmp_path) as setup:
        pool = backends.open_executor(setup.workspace)
        try:
            assert pool.submit(_square, 2).result(timeout=60) == 4
            assert pool.restarts == 0  # type: ignore[attr-defined]
            with pytest.raises(BrokenProcessPool):
                pool.submit(_die).result(timeout=60)
            assert pool.submit(_square, 7).result(timeout=60) == 49
            assert pool.restarts == 1  # type: ignore[attr-defined]
        finally:
            pool.shutdown(cancel=True)


def test_process_pool_workers_get_its_allocator_settings_after_polars(tmp_path: Path) -> None:
    # A region has imported polars before it starts its pool, and polars sets the variable
    # jemalloc reads on import: the pool's settings must still be the last word in a worker.
    import polars  # noqa: F401

    from mrbatch.backends.executors import WORKER_MALLOC_CONF

    assert os.environ.get("_RJEM_MALLOC_CONF")  # set by polars itself
    with EXECUTORS["process-pool"](tmp_path) as setup:
        pool = backends.open_executor(setup.workspace)
        try:
            settings = pool.submit(_malloc_conf).result(timeout=60)
        finally:
            pool.shutdown(cancel=True)
    assert settings.endswith("," + WORKER_MALLOC_CONF)


def test_dask_replaces_a_nanny_that_gave_up(tmp_path: Path) -> None:
    # Backend-specific: a nanny restarts its worker; one that closed for good (its worker
    # kept dying while starting) is replaced, so the LocalCluster keeps its two workers.
    with EXECUTORS["dask"](tmp_path) as setup:
        dask = backends.open_executor(setup.workspace)
        try:
            assert dask.submit(_square, 3).result(timeout=60) == 9
            cluster = dask._cluster  # type: ignore[attr-defined]
            first = next(iter(cluster.workers))
            cluster.sync(cluster.workers[first].close)
            dask._healed = 0.0  # type: ignore[attr-defined]  # check at once, not in 5 s
            deadline = time.monotonic() + 60
            while len(dask.pids()) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(dask.pids()) == 2
            assert dask.submit(_square, 4).result(timeout=60) == 16
        finally:
            dask.shutdown(cancel=True)
        assert dask.pids() == []
