"""Request bodies read within bounds: at a pace, and counted as they arrive.

A request that holds a slot while its body comes (an enrolment, an upload) must keep pace: the
whole read may take ``idle_s`` plus one second per ``min_rate`` bytes received so far, else it is
cut off with 408 ``timeout`` and frees its slot (a trickle of one byte every few seconds would
pass any per-read timeout). Multipart fields are read in pieces and counted against the
request's total, so no field (nor one the handler ignores) is held whole before it is checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import BodyPartReader

from ingest.exceptions import TooLargeError, UploadTooSlowError

T = TypeVar("T")
PIECE = 256 * 1024


class Pace:
    """The deadline of one body: ``idle_s`` + ``received`` / ``min_rate`` seconds from the start."""

    def __init__(self, idle_s: float, min_rate: int, total: int, what: str) -> None:
        self.idle_s = idle_s
        self.min_rate = min_rate
        self.total = total  # bytes the body may bring, all parts together
        self.what = what  # its setting, for the message
        self.received = 0

    def count(self, size: int) -> None:
        self.received += size
        if self.received > self.total:
            raise TooLargeError(f"the request's body is more than {self.total} bytes (setting {self.what})")

    async def run(self, reading: Awaitable[T]) -> T:
        """Await ``reading`` (the body's read), cut off once it falls behind the pace."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        task = asyncio.ensure_future(reading)
        try:
            while True:
                remaining = started + self.idle_s + self.received / self.min_rate - loop.time()
                if remaining <= 0:
                    raise UploadTooSlowError(
                        f"the request's body came too slowly ({self.received} bytes in {loop.time() - started:.0f} s; "
                        f"upload_idle_s={self.idle_s:g}, upload_min_bytes_per_s={self.min_rate}); send it again"
                    )
                done, _ = await asyncio.wait({task}, timeout=remaining)
                if done:
                    return task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def field(self, part: BodyPartReader, limit: int) -> bytes:
        """A form field's first ``limit`` bytes; the rest is read and dropped (counted)."""
        kept = bytearray()
        while piece := await part.read_chunk(PIECE):
            self.count(len(piece))
            if len(kept) < limit:
                kept += piece[: limit - len(kept)]
        return bytes(kept)

    async def file(self, part: BodyPartReader, limit: int, too_large: str) -> bytes:
        """A file field whole, at most ``limit`` bytes (``too_large`` says so beyond)."""
        data = bytearray()
        while piece := await part.read_chunk(PIECE):
            self.count(len(piece))
            data += piece
            if len(data) > limit:
                raise TooLargeError(too_large)
        return bytes(data)
