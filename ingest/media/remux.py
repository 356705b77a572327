"""Remux a stream, without re-encoding, into a seekable file (a session's finalize; imports).

MediaRecorder's WebM has unknown sizes, no Duration and no Cues; FFmpeg's muxer writing to a
real file adds all three. The raw stream is never touched; the caller gives the path to write
(the store's ``recording_target``, which makes it the recording atomically).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import av

from ingest.exceptions import InvalidMediaError

WEBM_CODECS = frozenset({"vp8", "vp9", "av1", "opus", "vorbis"})


def _copy_stream(dst: av.container.OutputContainer, template: av.stream.Stream) -> av.stream.Stream:
    """An output stream with ``template``'s parameters, for remuxing. PyAV looks up an encoder
    named like the template's decoder; AV1 is decoded by libdav1d, which encodes nothing, so
    such a stream is copied opaquely (parameters only: a remux needs no codec)."""
    try:
        return dst.add_stream_from_template(template)
    except (av.codec.codec.UnknownCodecError, ValueError):
        return dst.add_stream_from_template(template, opaque=True)


def remux(source: str | Path | BinaryIO, out: Path, input_format: str | None = "matroska") -> dict[str, float | int]:
    """Write ``out`` from ``source`` (a path or a readable file); returns the packets written and
    the duration in ms. ``input_format=None`` lets FFmpeg detect the input (imports of MP4/MOV)."""
    packets = 0
    name = getattr(source, "name", source)
    try:
        with av.open(source if not isinstance(source, Path) else str(source), mode="r", format=input_format) as src:
            streams = [s for s in src.streams if s.type in ("video", "audio")]
            if not streams:
                raise InvalidMediaError("nothing to finalize: no audio or video stream")
            # WebM allows only VP8/VP9/AV1 + Opus/Vorbis; H.264 from Chrome stays Matroska
            webm = all(s.codec_context.name in WEBM_CODECS for s in streams)
            with av.open(str(out), "w", format="webm" if webm else "matroska") as dst:
                mapping = {s.index: _copy_stream(dst, s) for s in streams}
                for packet in src.demux(*streams):
                    if packet.dts is None:
                        continue  # the demuxer's end-of-stream marker
                    packet.stream = mapping[packet.stream.index]
                    dst.mux(packet)
                    packets += 1
        with av.open(str(out)) as check:
            duration_ms = (check.duration or 0) / 1000
    except av.FFmpegError as exc:
        raise InvalidMediaError(f"cannot finalize {Path(str(name)).name}: {exc}") from exc
    return {"packets": packets, "duration_ms": duration_ms}
