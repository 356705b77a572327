"""Background tasks of the server, owned: every task is kept until done, and every failure is
logged by a done-callback (an exception in a task nobody awaits would otherwise vanish)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundTasks:
    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self, timeout: float) -> None:
        """Let the running tasks finish, ``timeout`` seconds at most."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def cancel(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def exit_with_parent(interval_s: float = 0.5) -> None:
    """In a child process (a pool's initializer): exit as soon as the parent is gone, even when
    it was killed with SIGKILL and could not stop its children (a pool's worker blocked on its
    queue never notices). A thread watching the parent's pid rather than ``PR_SET_PDEATHSIG``,
    which fires when the *thread* that started the child ends (a pool starts workers from
    whichever thread submits) and exists on Linux only."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
