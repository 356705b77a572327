"""Render a session as a re-encoded video with the overlay drawn on every frame (exports)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from ingest.exceptions import BadRequestError, InvalidMediaError
from ingest.media.overlay import check_overlay, draw
from ingest.media.remux import stored_stream

# format -> (encoder, container)
ENCODERS = {"mp4": ("libx264", "mp4"), "webm": ("libvpx", "webm")}
FORMATS = tuple(ENCODERS)


def check_format(fmt: str) -> str:
    if fmt not in ENCODERS:
        raise BadRequestError(f"format {fmt[:40]!r} is not one of {', '.join(FORMATS)}")
    return fmt


def output_format(out: Path) -> str:
    """The format of an output file named by the user (``--out``), checked before any work."""
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ENCODERS:
        raise BadRequestError(f"--out must end in {' or '.join('.' + f for f in FORMATS)}")
    if not out.parent.is_dir():  # before any work: not after encoding half of it
        raise BadRequestError(f"the folder {out.parent} does not exist; create it or choose another --out")
    return fmt


def render(
    stream: str,
    out: Path,
    fmt: str,
    overlay: str,
    faces: Mapping[int, list[dict[str, Any]]],
    progress: Callable[[int], None] = lambda n: None,
) -> int:
    """Write ``out`` in ``fmt`` (mp4: H.264, webm: VP8) from the raw ``stream`` (a path) with
    ``faces`` (by frame index) drawn as ``overlay``; returns the number of frames written."""
    check_overlay(overlay)
    codec, container_format = ENCODERS[check_format(fmt)]
    written = 0
    try:
        with stored_stream(stream) as readable, av.open(readable, mode="r", format="matroska") as src:
            if not src.streams.video:
                raise InvalidMediaError("the session has no video to export")
            source = src.streams.video[0]
            time_base = source.time_base or Fraction(1, 1000)
            with av.open(str(out), "w", format=container_format) as dst:
                target = dst.add_stream(codec, rate=30)
                assert isinstance(target, av.video.stream.VideoStream)
                target.width, target.height = source.codec_context.width, source.codec_context.height
                target.pix_fmt = "yuv420p"
                target.time_base = Fraction(1, 1000)  # keep MediaRecorder's own timestamps (VFR)
                target.codec_context.time_base = Fraction(1, 1000)
                last_pts = -1
                for index, frame in enumerate(src.decode(source)):
                    bgr = frame.to_ndarray(format="bgr24")
                    draw(bgr, faces.get(index, []), overlay)
                    picture = av.VideoFrame.from_ndarray(bgr, format="bgr24")
                    pts_ms = int(frame.pts * time_base * 1000) if frame.pts is not None else last_pts + 33
                    picture.pts = max(pts_ms, last_pts + 1)  # strictly increasing for the encoder
                    picture.time_base = Fraction(1, 1000)
                    last_pts = picture.pts
                    for packet in target.encode(picture):
                        dst.mux(packet)
                    written += 1
                    progress(1)
                for packet in target.encode(None):
                    dst.mux(packet)
    except av.FFmpegError as exc:  # FFmpeg's reason, not its errno or the server's path
        raise InvalidMediaError(f"export failed: the stored stream does not decode ({exc.strerror or 'FFmpeg error'})") from exc
    return written
