"""MJPEG preview of annotated frames (``GET /api/sessions/{id}/preview.mjpg``).

A stopped session is replayed at its own pace; a recording one is followed live: decoding starts
at its last stored keyframe and continues as chunks arrive, each frame drawn with the landmarks
stored for it so far. Frames are decoded in the server process here (a viewer costs about one
decode, ~1-2 ms per frame), in a small dedicated thread pool whose size bounds the viewers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import cv2

from ingest.decode import UnitDecoder
from ingest.overlay import draw
from ingest.webm import build_unit
from storage.landmarks import LandmarkTail
from storage.store import SessionStore

BOUNDARY = "frame"
WAIT = None  # yielded when a followed recording has nothing new yet


def annotated_frames(store: SessionStore, session_id: str, overlay: str) -> Iterator[tuple[float, bytes] | None]:
    """(pts_ms, JPEG) per frame; ``WAIT`` while a recording session has no new chunk."""
    rows = store.chunk_rows(session_id)
    recording = store.get_row(session_id)["state"] == "recording"
    start = 0
    if recording:
        keyed = [i for i, r in enumerate(rows) if r["keyframe"] is not None]
        start = keyed[-1] if keyed else 0
    first_index = rows[start]["frames_before"] if rows else 0
    decoder = UnitDecoder(first_index=first_index, wait_for_keyframe=recording)
    landmarks = LandmarkTail(store.paths(session_id).landmarks)
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
                if row["units"] == "[]":
                    continue
                landmarks.refresh()
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
