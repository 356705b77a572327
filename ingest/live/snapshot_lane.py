"""Snapshots' own lane to the analysis workers, beside the live sessions' units.

Snapshots wait in a bounded queue and go to a worker only when it has nothing in hand and serves
no live session; to one that serves live sessions only once the oldest has waited
``patience_s`` (it then runs between two units). So a flood of snapshots never delays live
frames, and a full queue answers ``busy`` (the snapshot is stored all the same).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Sequence
from typing import Any

from ingest.exceptions import CapacityError
from ingest.live.handle import WorkerHandle
from ingest.live.messages import AnalyseImage, ImageFaces

PATIENCE_S = 2.0  # how long snapshots wait for a worker without live sessions


class SnapshotLane:
    def __init__(self, workers: Sequence[WorkerHandle], max_queue: int, max_pixels: int) -> None:
        self.workers = workers  # the pipeline's list: replaced workers are seen here too
        self.max_queue = max_queue
        self.max_pixels = max_pixels
        self._futures: dict[int, asyncio.Future[list[dict[str, Any]]]] = {}
        self._queue: collections.deque[tuple[int, str, float]] = collections.deque()  # id, path, queued at
        self._timer: asyncio.TimerHandle | None = None
        self._ids = itertools.count()

    async def analyse(self, path: str) -> list[dict[str, Any]]:
        """Faces of the stored image at ``path``; ``busy`` when ``max_queue`` wait already."""
        if len(self._queue) >= self.max_queue:
            raise CapacityError(
                f"{len(self._queue)} snapshots wait for analysis (max_snapshot_queue); this one is stored, not analysed"
            )
        request_id = next(self._ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[dict[str, Any]]] = loop.create_future()
        self._futures[request_id] = future
        self._queue.append((request_id, path, loop.time()))
        self.dispatch()
        try:
            return await future
        finally:
            self._futures.pop(request_id, None)

    def dispatch(self) -> None:
        """Hand waiting snapshots to workers that may take them (called whenever one may be free)."""
        loop = asyncio.get_running_loop()
        while self._queue:
            idle = [w for w in self.workers if w.idle]
            worker = next((w for w in idle if w.sessions == 0), None)
            waited = loop.time() - self._queue[0][2]
            if worker is None and idle and waited >= PATIENCE_S:
                worker = idle[0]
            if worker is None:  # again when a worker answers, or when patience ends
                if idle and self._timer is None:
                    self._timer = loop.call_later(PATIENCE_S - waited, self._patience_over)
                return
            request_id, path, _ = self._queue.popleft()
            worker.send(AnalyseImage(request_id, path, self.max_pixels))

    def on_reply(self, reply: ImageFaces) -> None:
        future = self._futures.get(reply.request_id)
        if future is not None and not future.done():
            if reply.failure is not None:
                future.set_exception(reply.failure.error())
            else:
                future.set_result(reply.faces)

    def waiting(self) -> int:
        """Snapshots queued, not yet in a worker."""
        return len(self._queue)

    def _patience_over(self) -> None:
        self._timer = None
        self.dispatch()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for future in self._futures.values():
            future.cancel()
