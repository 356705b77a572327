"""Import an existing video file (WebM, MP4, MOV, MKV) as a stopped session.

The file is remuxed without re-encoding into Matroska/WebM (the form every session is stored
in), then stored through the same chunk path as a live recording, in 1 MiB chunks, so index,
units and counters are exactly those of a recorded session. Its frames then go through
``reprocess``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av

from ingest.exceptions import IngestError, InvalidMediaError, TooLargeError
from ingest.media.remux import remux
from ingest.media.webm import WebMReader
from ingest.recording.session import LiveSession
from storage.store import SessionStore

IMPORT_CHUNK_BYTES = 1024 * 1024
# what FFmpeg opens still images as (a photo would import as a one-frame "video")
STILL_IMAGE_FORMATS = ("image2", "jpeg_pipe", "png_pipe", "webp_pipe", "bmp_pipe", "gif", "tiff_pipe")
STILL_IMAGE_CODECS = ("mjpeg", "png", "webp", "bmp", "tiff", "gif")


def check_video(source: Path, label: str) -> None:
    """``InvalidMediaError`` naming the user's file if it is not a video (text, a photo)."""
    try:
        with av.open(str(source)) as container:
            video = next((s for s in container.streams if s.type == "video"), None)
            if video is None:
                raise InvalidMediaError(f"{label} has no video stream")
            still = container.format.name.split(",")[0] in STILL_IMAGE_FORMATS or (
                video.codec_context.name in STILL_IMAGE_CODECS and (video.frames or 0) <= 1
            )
            if still:
                raise InvalidMediaError(f"{label} is a still image ({video.codec_context.name}), not a video")
    except av.FFmpegError:
        raise InvalidMediaError(f"{label} is not a video camingest can read (WebM, MP4, MOV, MKV)") from None


def import_video(
    store: SessionStore,
    source: Path,
    max_bytes: int,
    progress: Callable[[int], None] = lambda n: None,
    name: str | None = None,
) -> str:
    """Store ``source`` as a stopped session; returns its id. ``name``: the file's name to record
    (an upload's own name rather than its temporary file's)."""
    label = name or source.name  # the user's own file name: never the server's paths
    size = source.stat().st_size
    if size > max_bytes:
        raise TooLargeError(f"{label} is {size} bytes, more than max_import_bytes={max_bytes}")
    check_video(source, label)
    with store.scratch_dir() as tmp:
        remuxed = tmp / "import.mkv"
        try:
            remux(source, remuxed, input_format=None)
        except av.FFmpegError as exc:
            raise InvalidMediaError(f"{label} cannot be imported: {exc.strerror or 'FFmpeg refused it'}") from None
        with open(remuxed, "rb") as f:
            doc_type = b"webm" if b"webm" in f.read(64) else b"matroska"
        mime = "video/webm" if doc_type == b"webm" else "video/x-matroska"
        row, _token = store.create(mime, {"imported_from": label, "source_bytes": size})
        session = LiveSession(store, row, WebMReader())
        try:
            with open(remuxed, "rb") as f:
                seq = 0
                while piece := f.read(IMPORT_CHUNK_BYTES):
                    staged = session.stage_chunk(seq, piece, None)
                    store.commit_chunk(staged.record).result()
                    session.apply(staged)
                    if staged.error is not None:
                        raise staged.error
                    progress(len(piece))
                    seq += 1
        except IngestError as exc:
            store.set_state(session.id, "failed", exc.message)
            raise
        finally:
            session.close_file()
        store.set_state(session.id, "stopped")
        store.install_recording(session.id, remuxed)  # already remuxed with Duration and Cues
    return session.id
