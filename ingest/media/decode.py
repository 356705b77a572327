"""One persistent video decoder per session, fed the standalone units of ``ingest.media.webm``.

Each unit is demuxed on its own (``av.open(BytesIO(unit), format="webm")``) but its packets go to
a single long-lived ``CodecContext``: a blob's frames are nearly always inter frames that need
the decoder state of everything before, and each frame is decoded exactly once.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from ingest.exceptions import InvalidMediaError, UndecodableError, UnsupportedError
from ingest.media.bitstream import VideoScanner

log = logging.getLogger(__name__)

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
        self._scanner: VideoScanner | None = None  # counts the frames of packets skipped so
        self._time_base: Fraction | None = None
        self._last_pts: int | None = None
        self.index = first_index
        self.skip_until = skip_until
        self.codec = ""
        self.width = 0
        self.height = 0

    def decode(self, unit: bytes) -> Iterator[DecodedFrame]:
        try:
            container = av.open(io.BytesIO(unit), mode="r", format="webm")
        except av.FFmpegError as exc:
            log.warning("a unit of %d bytes does not demux: %r", len(unit), exc)
            raise InvalidMediaError("the stream's frames cannot be read back (FFmpeg does not demux them)") from None
        with container:
            video = container.streams.video[0] if container.streams.video else None
            if video is None:
                return  # audio-only session: nothing to decode
            if self._ctx is None:
                self._open(video)
            packet = None
            try:
                for packet in container.demux(video):
                    if packet.size == 0:
                        continue  # demuxer's end-of-stream marker, not a frame
                    if self._wait_for_keyframe:
                        if not packet.is_keyframe:
                            # its frames exist in the stream: keep indices true
                            self.index += self._shown(bytes(packet))
                            continue
                        self._wait_for_keyframe = False
                    assert self._ctx is not None
                    yield from self._frames(self._ctx.decode(packet))
            except av.FFmpegError as exc:
                raise self._error(exc, packet) from None

    def flush(self) -> Iterator[DecodedFrame]:
        if self._ctx is not None:
            try:
                yield from self._frames(self._ctx.decode(None))
            except av.FFmpegError as exc:
                raise self._error(exc, None) from None

    def _error(self, exc: av.FFmpegError, packet: av.Packet | None) -> UndecodableError:
        """The user's words for a decoder's refusal; FFmpeg's own go to the log."""
        at = ""
        if packet is not None and packet.pts is not None and self._time_base is not None:
            at = f" at {float(packet.pts * self._time_base):.3f} s"
        log.warning("%s decoder failed after %d frames%s: %r", self.codec, self.index, at, exc)
        return UndecodableError(f"the video does not decode: frame {self.index}{at} is damaged ({self.codec})", self.index)

    def _shown(self, data: bytes) -> int:
        if self._scanner is None:
            return 1
        try:
            return self._scanner.scan([data], 0)[0]
        except InvalidMediaError:
            return 1

    def _open(self, video: av.video.stream.VideoStream) -> None:
        params = video.codec_context
        if params is None:  # FFmpeg has no decoder for it (the reader refuses such streams first)
            raise UnsupportedError("the video's codec is not one camingest decodes")
        ctx = av.CodecContext.create(params.name, "r")
        assert isinstance(ctx, av.video.codeccontext.VideoCodecContext)
        if params.extradata:
            ctx.extradata = params.extradata  # H.264 needs its SPS/PPS (CodecPrivate)
        ctx.width, ctx.height = params.width, params.height
        ctx.thread_type = "NONE"  # one frame in, one frame out: no frame-thread latency
        self._ctx = ctx
        self._time_base = video.time_base or Fraction(1, 1000)
        self._scanner = VideoScanner.for_decoder(params.name, params.extradata)
        self.codec, self.width, self.height = params.name, params.width, params.height

    def _frames(self, frames: list[av.VideoFrame]) -> Iterator[DecodedFrame]:
        assert self._time_base is not None
        for frame in frames:
            index = self.index
            self.index += 1
            pts = frame.pts
            if pts is None:  # a laced frame without a duration: the one before, plus 1 ms
                pts = (self._last_pts or 0) + max(1, round(Fraction(1, 1000) / self._time_base))
            self._last_pts = pts
            if index < self.skip_until:
                continue
            yield DecodedFrame(index, float(pts * self._time_base * 1000), frame)
