"""Remux a stream, without re-encoding, into a seekable file (a session's finalize; imports).

MediaRecorder's WebM has unknown sizes, no Duration and no Cues; FFmpeg's muxer writing to a
real file adds all three. The raw stream is never touched; the caller gives the path to write
(the store's ``recording_target``, which makes it the recording atomically).

Every frame is kept: only the demuxer's empty end-of-stream packets are skipped. Packets with a
pts but no dts (H.264 with B-frames in Matroska: FFmpeg leaves the first ones without) are muxed
as they are, and laced frames that have no timestamp at all (no BlockDuration or DefaultDuration)
get the one before plus 1 ms, as the decoder gives them (``ingest.media.decode``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import av

from ingest.exceptions import InvalidMediaError
from ingest.media.webm import WebMReader, normalized

log = logging.getLogger(__name__)
WEBM_CODECS = frozenset({"vp8", "vp9", "av1", "libdav1d", "opus", "vorbis", "libvpx", "libvpx-vp9", "libopus"})


class PieceReader(io.RawIOBase):
    """A readable, non-seekable file over byte pieces (a stream rebuilt as it is read)."""

    def __init__(self, pieces: Iterable[bytes], name: str = "stream") -> None:
        self._pieces: Iterator[bytes] = iter(pieces)
        self._buf = memoryview(b"")
        self.name = name

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)  # a generator holding a file open
        if close is not None:
            close()
        super().close()

    def readinto(self, buffer: Any) -> int:
        while not self._buf:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._buf = memoryview(piece)
        out = memoryview(buffer).cast("B")
        n = min(len(out), len(self._buf))
        out[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def stored_stream(path: str, length: int | None = None, piece: int = 1024 * 1024) -> PieceReader:
    """A stored raw stream (its first ``length`` bytes) as FFmpeg reads it whatever its layout:
    rebuilt from the reader's units (Tracks first, no stale SeekHead). Close it when done."""

    def pieces() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while data := f.read(piece if length is None else min(piece, max(0, length - f.tell()))):
                yield data

    return PieceReader(normalized(pieces(), WebMReader(max_bytes_before_tracks=None)), Path(path).name)


def _copy_stream(dst: av.container.OutputContainer, template: av.stream.Stream) -> av.stream.Stream:
    """An output stream with ``template``'s parameters, for remuxing. PyAV looks up an encoder
    named like the template's decoder; AV1 is decoded by libdav1d, which encodes nothing, so
    such a stream is copied opaquely (parameters only: a remux needs no codec)."""
    try:
        return dst.add_stream_from_template(template)
    except (av.codec.codec.UnknownCodecError, ValueError):
        return dst.add_stream_from_template(template, opaque=True)


def remux(
    source: str | Path | BinaryIO | io.RawIOBase, out: Path, input_format: str | None = "matroska",
    label: str | None = None,
) -> dict[str, float | int]:
    """Write ``out`` from ``source`` (a path or a readable file); returns the packets written and
    the duration in ms. ``input_format=None`` lets FFmpeg detect the input (imports of MP4/MOV).
    ``label``: what the log calls the source. Messages name neither it nor a path: callers say
    whose file it is."""
    packets = 0
    name = label or Path(str(getattr(source, "name", source))).name
    try:
        with av.open(source if not isinstance(source, Path) else str(source), mode="r", format=input_format) as src:
            # a stream FFmpeg has no codec for cannot be described to a muxer: left out (the raw
            # stream keeps it)
            streams = [s for s in src.streams if s.type in ("video", "audio") and s.codec_context is not None]
            if not streams:
                raise InvalidMediaError("it holds no audio or video stream FFmpeg can copy")
            # WebM allows only VP8/VP9/AV1 + Opus/Vorbis; H.264 from Chrome stays Matroska
            webm = all(s.codec_context.name in WEBM_CODECS for s in streams)
            with av.open(str(out), "w", format="webm" if webm else "matroska") as dst:
                mapping = {s.index: _copy_stream(dst, s) for s in streams}
                # 1 ms in each input stream's time base: the step of a laced frame without a time
                steps = {s.index: max(1, round(Fraction(1, 1000) / (s.time_base or Fraction(1, 1000)))) for s in streams}
                last: dict[int, int] = {}  # the latest pts of each stream
                dts: dict[int, int] = {}  # the dts given to its packet before
                for packet in src.demux(*streams):
                    if packet.size == 0:
                        continue  # the demuxer's end-of-stream marker (and nothing else is empty)
                    index = packet.stream.index
                    if packet.pts is None and packet.dts is None:
                        packet.pts = last.get(index, -steps[index]) + steps[index]
                    pts = packet.pts if packet.pts is not None else packet.dts
                    assert pts is not None
                    last[index] = max(last.get(index, pts), pts)
                    # Matroska stores no dts, but the muxer wants them not decreasing and never
                    # above the pts: FFmpeg leaves the first B-frame packets (and laced ones)
                    # without, then gives real ones that may be smaller than those it derived
                    before = dts.get(index)
                    if packet.dts is None:
                        packet.dts = pts if before is None else max(before, min(pts, before + 1))
                    elif before is not None and packet.dts < before:
                        packet.dts = before
                    dts[index] = packet.dts
                    packet.stream = mapping[index]
                    dst.mux(packet)
                    packets += 1
        if not packets:
            raise InvalidMediaError("it holds no frames to copy")
        with av.open(str(out)) as check:
            duration_ms = (check.duration or 0) / 1000
    except av.FFmpegError as exc:  # its text (errno, paths) is for the operator
        log.warning("remuxing %s into %s failed: %r", name, out, exc)
        raise InvalidMediaError("its audio and video cannot be copied into a seekable file") from None
    return {"packets": packets, "duration_ms": duration_ms}
