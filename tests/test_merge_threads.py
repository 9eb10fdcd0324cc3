"""Merges run on reused daemon threads: as many at once as there are merges waiting for their
chunks (none waits for a free thread), and a thread that finished one takes the next."""

from __future__ import annotations

import threading
import time

from mrbatch.engine.merge import _ReusedThreads


def test_every_job_runs_at_once_and_finished_threads_are_reused() -> None:
    threads = _ReusedThreads("test-merge")
    release = threading.Event()
    running: list[str] = []
    started = threading.Semaphore(0)

    def job() -> None:
        running.append(threading.current_thread().name)
        started.release()
        release.wait(10)

    for _ in range(5):
        threads.run(job)
    for _ in range(5):  # all five wait at once: a sixth would have no thread but a new one
        assert started.acquire(timeout=10)
    assert len(set(running)) == 5
    assert all(t.daemon for t in threading.enumerate() if t.name in running)

    release.set()
    deadline = time.monotonic() + 10
    while threads._idle < 5:  # the five finished and wait for work
        assert time.monotonic() < deadline
        time.sleep(0.01)
    done = threading.Semaphore(0)
    names: list[str] = []

    def quick() -> None:
        names.append(threading.current_thread().name)
        done.release()

    for _ in range(20):
        threads.run(quick)
        assert done.acquire(timeout=10)
    assert len(names) == 20 and set(names) <= set(running), names  # no thread started for them


def test_threads_idle_for_a_while_end_and_new_work_still_runs() -> None:
    threads = _ReusedThreads("test-idle", idle_seconds=0.05)
    done = threading.Semaphore(0)
    names: list[str] = []

    def job() -> None:
        names.append(threading.current_thread().name)
        done.release()

    for _ in range(3):
        threads.run(job)
    for _ in range(3):
        assert done.acquire(timeout=10)
    deadline = time.monotonic() + 10
    while any(t.name.startswith("test-idle") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "idle threads did not end"
        time.sleep(0.02)
    assert threads._idle == 0
    threads.run(job)  # no idle thread left: a new one takes it
    assert done.acquire(timeout=10)
