"""One persistent video decoder per session, fed the standalone units of ``ingest.media.webm``.

Each unit is demuxed on its own (``av.open(BytesIO(unit), format="webm")``) but its packets go to
a single long-lived ``CodecContext``: a blob's frames are nearly always inter frames that need
the decoder state of everything before, and each frame is decoded exactly once.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from ingest.exceptions import InvalidMediaError

# Planar YUV formats whose first plane is the luma image at full size: the gray image for dlib,
# free of charge (frame.to_ndarray(format="gray") goes through swscale and costs more than decoding).
_LUMA_FIRST = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "yuva420p"})


@dataclass
class DecodedFrame:
    index: int  # counts decoded video frames of the session from 0
    pts_ms: float
    frame: av.VideoFrame

    @property
    def width(self) -> int:
        return self.frame.width

    @property
    def height(self) -> int:
        return self.frame.height

    def rgb(self) -> np.ndarray:
        """The frame in colour, (height, width, 3) uint8 (a conversion: only for the faces
        being identified)."""
        return self.frame.to_ndarray(format="rgb24")

    def gray(self) -> np.ndarray:
        """The luma plane as a (height, width) uint8 array (a view, no copy, when planar)."""
        frame = self.frame
        if frame.format.name in _LUMA_FIRST:
            plane = frame.planes[0]
            rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
            return rows[: frame.height, : frame.width]
        return frame.to_ndarray(format="gray")


class UnitDecoder:
    """Decode the video frames of consecutive units with one persistent decoder.

    ``skip_until`` lets a decoder rebuilt from an earlier keyframe (after a restart) decode the
    frames it needs for state without yielding them again."""

    def __init__(self, first_index: int = 0, skip_until: int = 0, wait_for_keyframe: bool = False) -> None:
        self._ctx: av.video.codeccontext.VideoCodecContext | None = None
        # A decoder started mid-stream (after a restart) must see a keyframe first: inter frames
        # fed to a fresh decoder give errors or garbage.
        self._wait_for_keyframe = wait_for_keyframe
        self._time_base: Fraction | None = None
        self.index = first_index
        self.skip_until = skip_until
        self.codec = ""
        self.width = 0
        self.height = 0

    def decode(self, unit: bytes) -> Iterator[DecodedFrame]:
        try:
            container = av.open(io.BytesIO(unit), mode="r", format="webm")
        except av.FFmpegError as exc:
            raise InvalidMediaError(f"unit does not demux: {exc}") from exc
        with container:
            video = container.streams.video[0] if container.streams.video else None
            if video is None:
                return  # audio-only session: nothing to decode
            if self._ctx is None:
                self._open(video)
            try:
                for packet in container.demux(video):
                    if packet.size == 0:
                        continue  # demuxer's end-of-stream marker, not a frame
                    if self._wait_for_keyframe:
                        if not packet.is_keyframe:
                            self.index += 1  # its frame exists in the stream: keep indices true
                            continue
                        self._wait_for_keyframe = False
                    assert self._ctx is not None
                    yield from self._frames(self._ctx.decode(packet))
            except av.FFmpegError as exc:
                raise InvalidMediaError(f"video does not decode: {exc}") from exc

    def flush(self) -> Iterator[DecodedFrame]:
        if self._ctx is not None:
            try:
                yield from self._frames(self._ctx.decode(None))
            except av.FFmpegError as exc:
                raise InvalidMediaError(f"video does not decode: {exc}") from exc

    def _open(self, video: av.video.stream.VideoStream) -> None:
        params = video.codec_context
        ctx = av.CodecContext.create(params.name, "r")
        assert isinstance(ctx, av.video.codeccontext.VideoCodecContext)
        if params.extradata:
            ctx.extradata = params.extradata  # H.264 needs its SPS/PPS (CodecPrivate)
        ctx.width, ctx.height = params.width, params.height
        ctx.thread_type = "NONE"  # one frame in, one frame out: no frame-thread latency
        self._ctx = ctx
        self._time_base = video.time_base or Fraction(1, 1000)
        self.codec, self.width, self.height = params.name, params.width, params.height

    def _frames(self, frames: list[av.VideoFrame]) -> Iterator[DecodedFrame]:
        assert self._time_base is not None
        for frame in frames:
            index = self.index
            self.index += 1
            if index < self.skip_until:
                continue
            pts_ms = float(frame.pts * self._time_base * 1000) if frame.pts is not None else float("nan")
            yield DecodedFrame(index, pts_ms, frame)
