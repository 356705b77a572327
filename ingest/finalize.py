"""Finalize: remux the stored stream, without re-encoding, into a seekable file.

MediaRecorder's WebM has unknown sizes, no Duration and no Cues; FFmpeg's muxer writing to a
real file adds all three. ``raw.webm`` (stream.webm) is never touched; the result replaces
``recording.webm`` atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

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


def finalize(stream: Path, out: Path, input_format: str | None = "matroska") -> dict[str, float | int]:
    """Write ``out`` from ``stream``; returns the packets written and the duration in ms.
    ``input_format=None`` lets FFmpeg detect the input (imports of MP4/MOV)."""
    tmp = out.with_name(out.name + ".tmp")
    packets = 0
    try:
        with av.open(str(stream), format=input_format) as src:
            streams = [s for s in src.streams if s.type in ("video", "audio")]
            if not streams:
                raise InvalidMediaError("nothing to finalize: no audio or video stream")
            # WebM allows only VP8/VP9/AV1 + Opus/Vorbis; H.264 from Chrome stays Matroska
            webm = all(s.codec_context.name in WEBM_CODECS for s in streams)
            with av.open(str(tmp), "w", format="webm" if webm else "matroska") as dst:
                mapping = {s.index: _copy_stream(dst, s) for s in streams}
                for packet in src.demux(*streams):
                    if packet.dts is None:
                        continue  # the demuxer's end-of-stream marker
                    packet.stream = mapping[packet.stream.index]
                    dst.mux(packet)
                    packets += 1
        with av.open(str(tmp)) as check:
            duration_ms = (check.duration or 0) / 1000
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except av.FFmpegError as exc:
        raise InvalidMediaError(f"cannot finalize {stream.name}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return {"packets": packets, "duration_ms": duration_ms}
