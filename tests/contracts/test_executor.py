"""The executor contract: the process pool and the inline executor."""

from __future__ import annotations

import os
import signal
from concurrent.futures.process import BrokenProcessPool

import pytest

from mrbatch.backends.executors import InlineExecutor, ProcessPool


def _square(x: int) -> int:
    return x * x


def _boom(message: str) -> None:
    raise ValueError(message)


def _pid() -> int:
    return os.getpid()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # the worker running this task is killed under it


@pytest.fixture(params=["process-pool", "inline"])
def executor(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    ex = ProcessPool(2) if request.param == "process-pool" else InlineExecutor()
    yield ex
    ex.shutdown(cancel=True)


def test_results_and_errors(executor) -> None:  # type: ignore[no-untyped-def]
    assert [executor.submit(_square, i).result(timeout=60) for i in range(5)] == [0, 1, 4, 9, 16]
    with pytest.raises(ValueError, match="bad chunk"):
        executor.submit(_boom, "bad chunk").result(timeout=60)


def test_a_killed_worker_fails_its_future_and_the_pool_recovers() -> None:
    pool = ProcessPool(2)
    try:
        assert pool.submit(_pid).result(timeout=60) in pool.pids()
        future = pool.submit(_die)
        with pytest.raises(BrokenProcessPool):
            future.result(timeout=60)
        assert pool.submit(_square, 7).result(timeout=60) == 49
        assert pool.restarts == 1
    finally:
        pool.shutdown(cancel=True)
    assert pool.pids() == []
