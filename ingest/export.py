"""Export a session as a re-encoded video with the overlay drawn on every frame."""

from __future__ import annotations

import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av

from ingest.exceptions import BadRequestError, InvalidMediaError
from ingest.overlay import OVERLAYS, draw
from storage.landmarks import LandmarkTail

ENCODERS = {".mp4": ("libx264", "mp4"), ".webm": ("libvpx", "webm")}


def check_args(out: Path, overlay: str) -> None:
    if overlay not in OVERLAYS:
        raise BadRequestError(f"overlay must be one of {', '.join(OVERLAYS)}")
    if out.suffix.lower() not in ENCODERS:
        raise BadRequestError(f"--out must end in {' or '.join(ENCODERS)}")
    if not out.parent.is_dir():  # before any work: not after encoding half of it
        raise BadRequestError(f"the folder {out.parent} does not exist; create it or choose another --out")


def export(
    stream: Path, landmarks: Path, out: Path, overlay: str, progress: Callable[[int], None] = lambda n: None
) -> int:
    """Write ``out`` (.mp4 H.264 or .webm VP8); returns the number of frames written."""
    check_args(out, overlay)
    codec, container_format = ENCODERS[out.suffix.lower()]
    faces = LandmarkTail(landmarks).refresh().faces if overlay != "none" else {}
    tmp = out.with_name(out.name + ".tmp")
    written = 0
    try:
        with av.open(str(stream), format="matroska") as src:
            if not src.streams.video:
                raise InvalidMediaError("the session has no video to export")
            source = src.streams.video[0]
            with av.open(str(tmp), "w", format=container_format) as dst:
                target = dst.add_stream(codec, rate=30)
                target.width, target.height = source.codec_context.width, source.codec_context.height
                target.pix_fmt = "yuv420p"
                target.time_base = Fraction(1, 1000)  # keep MediaRecorder's own timestamps (VFR)
                target.codec_context.time_base = Fraction(1, 1000)
                last_pts = -1
                for index, frame in enumerate(src.decode(source)):
                    bgr = frame.to_ndarray(format="bgr24")
                    draw(bgr, faces.get(index, []), overlay)
                    picture = av.VideoFrame.from_ndarray(bgr, format="bgr24")
                    pts_ms = int(frame.pts * source.time_base * 1000) if frame.pts is not None else last_pts + 33
                    picture.pts = max(pts_ms, last_pts + 1)  # strictly increasing for the encoder
                    picture.time_base = Fraction(1, 1000)
                    last_pts = picture.pts
                    for packet in target.encode(picture):
                        dst.mux(packet)
                    written += 1
                    progress(1)
                for packet in target.encode(None):
                    dst.mux(packet)
        os.replace(tmp, out)
    except av.FFmpegError as exc:
        raise InvalidMediaError(f"export failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return written
