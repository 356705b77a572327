"""MJPEG preview of annotated frames (``GET /api/sessions/{id}/preview.mjpg``).

A stopped session is replayed at its own pace; a recording one is followed live: decoding starts
at its last stored keyframe and continues as chunks arrive, each frame drawn with the landmarks
stored for it so far. Frames are decoded in the server process here (a viewer costs about one
decode, ~1-2 ms per frame), in a small dedicated thread pool whose size bounds the viewers.

A followed recording that receives nothing for ``idle_s`` (``preview_idle_s``) ends its preview:
a viewer of an idle session does not hold a slot for ever.

``Preview`` is an async iterator of MJPEG parts (``async for part in preview``, then
``await preview.aclose()``): the decoding generator runs in the pool, the pacing on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from concurrent.futures import Executor
from typing import Any

import cv2

from ingest.media.decode import UnitDecoder
from ingest.media.overlay import draw
from ingest.media.webm import build_unit
from storage.store import SessionStore

BOUNDARY = "frame"
CONTENT_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
WAIT = None  # yielded when a followed recording has nothing new yet
POLL_S = 0.1  # how often a followed recording is looked at while it has nothing new
_END = (-1.0, b"")  # what next() gives once the frames are exhausted


def annotated_frames(
    store: SessionStore, session_id: str, overlay: str
) -> Generator[tuple[float, bytes] | None, None, None]:
    """(pts_ms, JPEG) per frame; ``WAIT`` while a recording session has no new chunk."""
    rows = store.chunk_rows(session_id)
    recording = store.get_row(session_id)["state"] == "recording"
    start = 0
    if recording:
        keyed = [i for i, r in enumerate(rows) if r["keyframe"] is not None]
        start = keyed[-1] if keyed else 0
    first_index = rows[start]["frames_before"] if rows else 0
    decoder = UnitDecoder(first_index=first_index, wait_for_keyframe=recording)
    landmarks = store.landmark_tail(session_id)
    init = store.init_segment(session_id)
    next_seq = rows[start]["seq"] if rows else 0

    def render(frame: Any) -> tuple[float, bytes]:
        bgr = frame.frame.to_ndarray(format="bgr24")
        draw(bgr, landmarks.faces.get(frame.index, []), overlay)
        ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            raise RuntimeError(f"JPEG encoding of frame {frame.index} failed")
        return frame.pts_ms, jpeg.tobytes()

    while True:
        init = init or store.init_segment(session_id)
        pending = store.chunk_rows(session_id, next_seq) if init is not None else []
        if pending:
            for row in pending:  # one chunk at a time: memory stays at one chunk's frames
                next_seq = row["seq"] + 1
                if not store.has_blocks(row):
                    continue
                landmarks.refresh()
                assert init is not None  # rows are only read once the init segment is complete
                for frame in decoder.decode(build_unit(init, store.chunk_runs(session_id, row))):
                    yield render(frame)
            continue
        if store.get_row(session_id)["state"] != "recording":
            landmarks.refresh()
            for frame in decoder.flush():
                yield render(frame)
            return
        yield WAIT


def part(jpeg: bytes) -> bytes:
    return f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n"


class Preview:
    """The MJPEG parts of a session's annotated frames, paced like the recording."""

    def __init__(self, store: SessionStore, session_id: str, overlay: str, pool: Executor,
                 idle_s: float = 30.0) -> None:  # fmt: skip
        self._frames = annotated_frames(store, session_id, overlay)
        self._pool = pool
        self._idle_s = idle_s
        self._waiting_since: float | None = None  # a followed recording with nothing new since
        self._started: float | None = None
        self._first_pts: float | None = None

    def __aiter__(self) -> Preview:
        return self

    async def __anext__(self) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            item = await loop.run_in_executor(self._pool, next, self._frames, _END)
            if item is _END:
                raise StopAsyncIteration
            if item is WAIT:
                if self._waiting_since is None:
                    self._waiting_since = loop.time()
                elif loop.time() - self._waiting_since > self._idle_s:
                    raise StopAsyncIteration  # the session receives nothing: its preview ends
                await asyncio.sleep(POLL_S)
                continue
            self._waiting_since = None
            pts_ms, jpeg = item
            if self._started is None or self._first_pts is None:
                self._started, self._first_pts = loop.time(), pts_ms
            delay = self._started + (pts_ms - self._first_pts) / 1000 - loop.time()
            if delay > 0:  # replay at the recording's own pace
                await asyncio.sleep(delay)
            return part(jpeg)

    async def aclose(self) -> None:
        """Stop decoding (the generator is closed in the pool thread that runs it)."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self._frames.close)
