"""A session's thumbnail: one decoded frame, scaled down and encoded as JPEG (sessions page)."""

from __future__ import annotations

import itertools

import av
import cv2

from ingest.exceptions import InvalidMediaError
from ingest.media.remux import stored_stream

THUMBNAIL_WIDTH = 320
JPEG_QUALITY = 80


def frame_jpeg(stream: str, index: int, width: int = THUMBNAIL_WIDTH) -> bytes:
    """Frame ``index`` of the raw ``stream`` (a path; the last frame if there are fewer) as a
    JPEG ``width`` pixels wide. Decodes from the start: the caller picks an early frame
    (storage/landmarks.py ``digest`` looks in the first ~15 s)."""
    last = None
    try:
        with stored_stream(stream) as readable, av.open(readable, mode="r", format="matroska") as src:
            if not src.streams.video:
                raise InvalidMediaError("the session has no video")
            for frame in itertools.islice(src.decode(src.streams.video[0]), index + 1):
                last = frame
            if last is None:
                raise InvalidMediaError("the session's stream holds no frame that decodes")
            bgr = last.to_ndarray(format="bgr24")
    except av.FFmpegError as exc:
        raise InvalidMediaError(f"the stored stream does not decode ({exc.strerror or 'FFmpeg error'})") from exc
    height = max(1, round(bgr.shape[0] * width / bgr.shape[1]))
    small = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise InvalidMediaError("the thumbnail could not be encoded")
    return encoded.tobytes()
