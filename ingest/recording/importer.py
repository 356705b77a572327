"""Import an existing video file (WebM, MKV, MP4, MOV) as a stopped session.

A WebM/Matroska file is stored as it is, through the same chunk path as a live recording (1 MiB
chunks): the same reader decides what is valid (its limits included), and index, units, counters
and raw bytes are exactly those a live session sending the file would get. Its seekable
recording is then remuxed as a live session's is at stop. Other containers (MP4, MOV) are first
remuxed without re-encoding into Matroska, which is then stored the same way and is the
recording. The frames then go through ``reprocess`` (or, for uploads, the server's fill).

A file refused anywhere leaves no session behind: the error names the user's file, never the
server's paths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av

from ingest.batch.jobs import finalize_session
from ingest.exceptions import IngestError, InvalidMediaError, TooLargeError, UnsupportedError
from ingest.media.bitstream import ACCEPTED, FFMPEG_NAMES
from ingest.media.remux import remux
from ingest.media.webm import EBML_MAGIC, WebMReader
from ingest.recording.session import LiveSession
from storage.store import SessionStore

log = logging.getLogger(__name__)
IMPORT_CHUNK_BYTES = 1024 * 1024
# what FFmpeg opens still images as (a photo would import as a one-frame "video")
STILL_IMAGE_FORMATS = ("image2", "jpeg_pipe", "png_pipe", "webp_pipe", "bmp_pipe", "gif", "tiff_pipe")
STILL_IMAGE_CODECS = ("mjpeg", "png", "webp", "bmp", "tiff", "gif")


def is_matroska(source: Path) -> bool:
    with open(source, "rb") as f:
        return f.read(4) == EBML_MAGIC


def check_video(source: Path, label: str) -> None:
    """For files that are not Matroska: ``InvalidMediaError`` naming the user's file if FFmpeg
    does not read it as a video or audio recording (text, a photo), ``UnsupportedError`` if
    its video codec is not one camingest decodes."""
    try:
        with av.open(str(source)) as container:
            streams = [s for s in container.streams if s.type in ("video", "audio")]
            if not streams:
                raise InvalidMediaError(f"{label} has no audio or video stream")
            video = next((s for s in streams if s.type == "video"), None)
            if video is None:
                return  # audio only: stored, with no frames to landmark
            codec = video.codec_context.name if video.codec_context is not None else None
            still = container.format.name.split(",")[0] in STILL_IMAGE_FORMATS or (
                codec in STILL_IMAGE_CODECS and (video.frames or 0) <= 1
            )
            if still:
                raise InvalidMediaError(f"{label} is a still image ({codec}), not a video")
            if codec not in FFMPEG_NAMES:
                what = f" ({video.codec_context.codec.long_name})" if video.codec_context is not None else ""
                raise UnsupportedError(f"{label}: its video codec{what} is not one camingest decodes; it reads {ACCEPTED}")
    except av.FFmpegError:
        raise InvalidMediaError(f"{label} is not a video camingest can read (WebM, MP4, MOV, MKV)") from None


def _labelled(exc: IngestError, label: str) -> IngestError:
    """The same error, naming the user's file."""
    if type(exc) in (InvalidMediaError, UnsupportedError, TooLargeError):
        return type(exc)(f"{label}: {exc.message}")
    return exc


def import_video(
    store: SessionStore,
    source: Path,
    max_bytes: int,
    progress: Callable[[int], None] = lambda n: None,
    name: str | None = None,
    limits: dict[str, Any] | None = None,
) -> str:
    """Store ``source`` as a stopped session; returns its id. ``name``: the file's name to record
    (an upload's own name rather than its temporary file's); ``limits``: the reader's limits of
    streams coming in (``Settings.reader_limits()``), as for live chunks."""
    label = name or source.name  # the user's own file name: never the server's paths
    size = source.stat().st_size
    if size > max_bytes:
        raise TooLargeError(f"{label} is {size} bytes, more than max_import_bytes={max_bytes}")
    matroska = is_matroska(source)
    if not matroska:
        check_video(source, label)
    with store.scratch_dir() as tmp:
        stored, remuxed = source, None
        if not matroska:  # MP4/MOV: into Matroska first (what every session is stored as)
            remuxed = stored = tmp / "import.mkv"
            try:
                remux(source, remuxed, input_format=None, label=label)
            except IngestError as exc:
                raise _labelled(exc, label) from None
        with open(stored, "rb") as f:
            doc_type = b"webm" if b"webm" in f.read(64) else b"matroska"
        mime = "video/webm" if doc_type == b"webm" else "video/x-matroska"
        row, _token = store.create(mime, {"imported_from": label, "source_bytes": size})
        reader = WebMReader(max_blocks_per_feed=None, **(limits or {}))
        session = LiveSession(store, row, reader)
        try:
            try:
                with open(stored, "rb") as f:
                    seq = 0
                    while piece := f.read(IMPORT_CHUNK_BYTES):
                        staged = session.stage_chunk(seq, piece, None)
                        store.commit_chunk(staged.record).result()
                        session.apply(staged)
                        if staged.error is not None:
                            raise staged.error
                        progress(len(piece))
                        seq += 1
            finally:
                session.close_file()
            if not reader.tracks:
                raise InvalidMediaError(f"{label} holds no Tracks (its audio and video are not described)")
            if reader.waiting_for_tracks:
                raise InvalidMediaError(f"{label}: its Clusters came without Tracks")
            if not any(store.has_blocks(r) for r in store.chunk_rows(session.id)):
                raise InvalidMediaError(f"{label} holds no audio or video frames")
            store.set_state(session.id, "stopped")
            if remuxed is not None:
                store.install_recording(session.id, remuxed)  # already remuxed with Duration and Cues
            else:
                finalize_session(store, session.id)
        except IngestError as exc:  # nothing of a refused file stays behind
            log.info("import of %s refused: %s", label, exc.message)
            store.delete(session.id)
            raise _labelled(exc, label) from None
        except BaseException:
            store.delete(session.id)
            raise
    return session.id
