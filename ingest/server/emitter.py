"""Events to the pages, off every other path: a bounded queue and one sender task.

With Socket.IO over Redis (several nodes), an ``emit`` publishes to Redis, and a Redis that hangs
would hold an awaiting emit for seconds: landmarks, errors and fills are queued here instead
(``put_nowait``) and sent by one task; when the queue is full the event is dropped and counted
(``camingest_emits_dropped_total``), so an ack or a landmark delivery never waits for Redis.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import socketio
from prometheus_client import Counter

log = logging.getLogger(__name__)


class Emitter:
    def __init__(self, sio: socketio.AsyncServer, max_queued: int, dropped: Counter) -> None:
        self.sio = sio
        self.dropped = dropped
        self._queue: asyncio.Queue[tuple[str, dict[str, Any], str]] = asyncio.Queue(maxsize=max_queued)
        self._task: asyncio.Task[None] | None = None

    async def emit(self, event: str, data: dict[str, Any], room: str) -> None:
        """Queue ``event`` for ``room`` (a session's pages); never waits."""
        try:
            self._queue.put_nowait((event, data, room))
        except asyncio.QueueFull:
            self.dropped.inc()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="emitter")

    async def _run(self) -> None:
        failing = 0  # events lost since the transport failed (said once, then summed up)
        while True:
            event, data, room = await self._queue.get()
            try:
                await self.sio.emit(event, data, room=room)
            except Exception as exc:  # a transport failure: this event is lost, the next ones go on
                self.dropped.inc()
                if not failing:
                    log.warning("events to the pages are lost while their transport fails (%s)", exc)
                failing += 1
                continue
            if failing:
                log.info("events to the pages go out again; %d were lost meanwhile", failing)
                failing = 0

    def waiting(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
