"""Celery's threads pool, with all its threads started when the worker starts."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait

from celery.concurrency.thread import TaskPool


class StartedThreadPool(TaskPool):
    """`concurrency` threads from the start. Celery's pool (a ThreadPoolExecutor) starts a
    thread only when a task finds none idle, so a process's thread count climbed with each
    new peak of load (the benchmark's soak saw it grow after 20 minutes): a count that moves
    hides a leak instead of showing one."""

    executor: ThreadPoolExecutor  # Celery's, made in its __init__ (its stubs omit it)

    def on_start(self) -> None:
        # Each task submitted while the others are held finds no idle thread: one more starts.
        release = threading.Event()
        held = [self.executor.submit(release.wait) for _ in range(self.limit)]
        release.set()
        wait(held)
