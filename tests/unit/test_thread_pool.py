"""The worker's Celery threads pool starts all its threads with the worker."""

from __future__ import annotations

import threading

from worker.transport.thread_pool import StartedThreadPool


def _pool_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("ThreadPoolExecutor"))


def test_every_thread_of_the_pool_runs_before_any_task_arrives() -> None:
    # Given no executor threads in this process
    before = _pool_threads()
    pool = StartedThreadPool(limit=5)
    try:
        # When the pool starts
        pool.start()
        # Then its 5 threads run, though no task was given to it
        assert _pool_threads() - before == 5
    finally:
        pool.stop()
        pool.executor.shutdown(wait=True)


def test_the_started_pool_runs_tasks_on_those_threads() -> None:
    # Given a started pool of 3 threads
    pool = StartedThreadPool(limit=3)
    pool.start()
    started = _pool_threads()
    ran = threading.Event()
    try:
        # When a task is applied
        pool.apply_async(ran.set)
        # Then it runs, and no thread was added for it
        assert ran.wait(5)
        assert _pool_threads() == started
    finally:
        pool.stop()
        pool.executor.shutdown(wait=True)
