"""The try-on pages' lane to the analysis workers: latest wins, answers in order, live first.

Each connection (``key``) has at most one image in hand (in a worker, then being answered and
stored by the server) and one waiting. A newer image replaces the waiting one, which is dropped
(``on_drop``: counted in /metrics) and answered with nothing: a page that sends faster than its
images are analysed sees its latest frame next, never a backlog. Connections with an image
waiting take turns (FIFO); an image goes only to a worker with nothing in hand, one without
live sessions first, so a live session's next unit waits for at most one image (~20 ms at
640x480) and snapshots and fills keep their own lanes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from ingest.live.handle import WorkerHandle
from ingest.live.messages import Recoloured, RecolourImage


@dataclass
class _Slot:
    current: int | None = None  # the request in hand: in a worker, or being answered
    waiting: tuple[int, bytes, asyncio.Future[Recoloured | None]] | None = None


class TryOnLane:
    def __init__(
        self, workers: Sequence[WorkerHandle], upsample: int, max_pixels: int, on_drop: Callable[[], None]
    ) -> None:
        self.workers = workers  # the pipeline's list: replaced workers are seen here too
        self.upsample = upsample
        self.max_pixels = max_pixels
        self.on_drop = on_drop
        self._slots: dict[str, _Slot] = {}
        self._ready: collections.deque[str] = collections.deque()  # keys with an image waiting, none in hand
        self._futures: dict[int, asyncio.Future[Recoloured | None]] = {}  # in a worker
        self._ids = itertools.count()

    @contextlib.asynccontextmanager
    async def frame(self, key: str, data: bytes) -> AsyncIterator[Recoloured | None]:
        """The image recoloured (``None``: dropped for a newer one, or its connection is gone);
        the connection's next image waits until this block is left. A worker's failure raises
        its error (``InvalidMediaError``: the image does not decode)."""
        request_id = next(self._ids)
        future: asyncio.Future[Recoloured | None] = asyncio.get_running_loop().create_future()
        slot = self._slots.setdefault(key, _Slot())
        if slot.waiting is not None:
            slot.waiting[2].set_result(None)
            self.on_drop()
        elif slot.current is None:
            self._ready.append(key)
        slot.waiting = (request_id, data, future)
        self.dispatch()
        try:
            reply = await future
            if reply is not None and reply.failure is not None:
                raise reply.failure.error()
            yield reply
        finally:
            self._release(key, request_id)

    def dispatch(self) -> None:
        """Hand waiting images to idle workers (called whenever one may be free)."""
        while self._ready:
            idle = [w for w in self.workers if w.idle]
            if not idle:
                return
            worker = min(idle, key=lambda w: w.sessions)
            slot = self._slots.get(self._ready.popleft())
            if slot is None or slot.waiting is None or slot.current is not None:
                continue
            request_id, data, future = slot.waiting
            slot.waiting, slot.current = None, request_id
            self._futures[request_id] = future
            worker.send(RecolourImage(request_id, data, self.upsample, self.max_pixels))

    def on_reply(self, reply: Recoloured) -> None:
        future = self._futures.pop(reply.request_id, None)
        if future is not None and not future.done():
            future.set_result(reply)

    def _release(self, key: str, request_id: int) -> None:
        slot = self._slots.get(key)
        if slot is None:
            return
        if slot.current == request_id:
            slot.current = None
            if slot.waiting is not None:
                self._ready.append(key)
                self.dispatch()
        if slot.current is None and slot.waiting is None:
            del self._slots[key]

    def forget(self, key: str) -> None:
        """The connection is gone: its images are answered with nothing (a reply still to come
        from a worker is ignored)."""
        slot = self._slots.pop(key, None)
        if slot is None:
            return
        if slot.waiting is not None:
            slot.waiting[2].set_result(None)
        future = self._futures.pop(slot.current, None) if slot.current is not None else None
        if future is not None and not future.done():
            future.set_result(None)

    def waiting(self) -> int:
        """Images waiting for a worker, all connections."""
        return sum(1 for slot in self._slots.values() if slot.waiting is not None)

    def close(self) -> None:
        for key in list(self._slots):
            self.forget(key)
