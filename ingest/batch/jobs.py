"""Batch jobs: a stored stream cut into frame ranges that workers landmark on their own.

The stream is cut into jobs of frame ranges that start on sweeps (the session's own, see
``TrackerSettings.sweep_frames``). Frames are the ones a
decoder shows (counted from each block's frame headers by the reader: a hidden VP9 frame shows
none, a laced block several). Each job names only the compressed blocks from the keyframe
before its range to the block of its last frame (H.264: 16 blocks further, as a decoder may
output a frame that late after reordering), where they lie in the stored stream; the worker
reads them, decodes them with a fresh decoder and tracks the range with a fresh tracker. No
decoded frame crosses a process boundary, and because a range starts on a frame where the live
tracker also runs a full detection, the batch result equals the live one wherever live analysed
the frame. The same jobs serve the live fill (ingest/live/backfill.py), the local pool
(local.py) and Dask (cluster.py).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from ingest.analysis.identity import FixedGallery
from ingest.analysis.tracker import FaceTracker, TrackerSettings
from ingest.exceptions import UndecodableError
from ingest.media.bitstream import H264_MAX_REORDER
from ingest.media.decode import UnitDecoder
from ingest.media.remux import remux, stored_stream
from ingest.media.webm import WebMReader, build_unit
from storage.files import LocalStream
from storage.gallery import GalleryMatrix
from storage.landmarks import EncodedFrames, frame_result
from storage.store import SessionStore

READ_PIECE = 1024 * 1024
MAX_JOB_FRAMES_DEFAULT = 600  # two sweep periods: each job start decodes from the keyframe before it
REPORT_EVERY = 10  # frames between progress reports of a job (a bar moves per ~0.1 s of a worker)
Progress = Callable[[int], None]


@dataclass(frozen=True)
class VideoBlock:
    offset: int
    length: int
    cluster_timecode: int
    keyframe: bool
    frames: int = 1  # frames a decoder shows for it


@dataclass(frozen=True)
class Job:
    source: LocalStream | None  # where the stored stream is read (None: the bytes travel with it)
    init: bytes
    blocks: tuple[tuple[int, int, int], ...]  # (cluster_timecode, offset, length) from a keyframe on
    first_index: int  # index of the first block's frame
    start: int  # landmark frames [start, end)
    end: int
    settings: TrackerSettings
    # the gallery when the job was planned (faces identified against it; travels with the job)
    gallery: GalleryMatrix | None = None


def stored_reader() -> WebMReader:
    """A reader of a stored stream: it passed the limits when it came in."""
    return WebMReader(max_bytes_before_tracks=None)


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class StreamSource(Protocol):
    """What a stored stream is scanned from: a ``LocalStream`` (a file here), or the stream's
    segments in object storage read by a Dask worker (cluster.py)."""

    @property
    def length(self) -> int: ...

    def open(self) -> AbstractContextManager[Readable]: ...


def scan_video_blocks(source: StreamSource, progress: Progress | None = None) -> tuple[bytes, list[VideoBlock], str]:
    """Init segment, the video blocks of a stored stream (locations only, not the bytes) and
    the video codec ("" without video); ``progress`` hears the bytes read."""
    reader = stored_reader()
    blocks: list[VideoBlock] = []
    done = 0
    with source.open() as f:
        while piece := f.read(min(READ_PIECE, max(0, source.length - done))):
            done += len(piece)
            if progress is not None:
                progress(len(piece))
            unit = reader.feed(piece)
            video = reader.video_track
            for run in unit.clusters:
                for block in run.blocks:
                    if video is not None and block.track == video.number:
                        blocks.append(VideoBlock(block.offset, len(block.data), run.timecode, block.keyframe,
                                                 block.frames))  # fmt: skip
    codec = reader.scanner.codec if reader.scanner is not None else ""
    return bytes(reader.init), blocks, codec


def plan_jobs(
    source: LocalStream, settings: TrackerSettings, gallery: GalleryMatrix | None,
    max_frames: int = MAX_JOB_FRAMES_DEFAULT, progress: Progress | None = None,
) -> list[Job]:  # fmt: skip
    """The jobs of a stored stream; ``gallery``: who its faces are identified against (the
    gallery when planned: it travels with the jobs, so every worker uses the same);
    ``progress`` hears the bytes of the stream read."""
    init, blocks, codec = scan_video_blocks(source, progress)
    return jobs_of_blocks(source, init, blocks, codec, settings, gallery, max_frames)


def jobs_of_blocks(
    source: LocalStream | None, init: bytes, blocks: list[VideoBlock], codec: str, settings: TrackerSettings,
    gallery: GalleryMatrix | None, max_frames: int = MAX_JOB_FRAMES_DEFAULT,
) -> list[Job]:  # fmt: skip
    """``plan_jobs`` from a scan's result (``source`` None: the stream was scanned elsewhere,
    the jobs are sent as where their blocks lie)."""
    before = list(itertools.accumulate((b.frames for b in blocks), initial=0))  # frames before each block
    total = before[-1]
    # a job must start on a sweep (the tracker's reset point): its range is whole sweep periods
    step = max(settings.sweep_every, (max_frames // settings.sweep_every) * settings.sweep_every)
    extra = H264_MAX_REORDER if codec == "h264" else 0
    jobs = []
    if not total:  # no video frame (an audio-only stream): nothing to analyse
        return []
    starts = settings.sweep_frames(total, step)
    for start, end in zip(starts, [*starts[1:], total], strict=True):
        first = bisect.bisect_right(before, start) - 1  # the block showing frame `start`
        while first > 0 and before[first - 1] == before[first]:
            first -= 1  # hidden frames just before it (their block shows nothing) belong to it
        key = first
        while key > 0 and not blocks[key].keyframe:
            key -= 1
        last = bisect.bisect_left(before, end) - 1  # the block showing frame end - 1
        last = min(len(blocks) - 1, last + extra)
        span = tuple((b.cluster_timecode, b.offset, b.length) for b in blocks[key : last + 1])
        jobs.append(Job(source, init, span, before[key], start, end, settings, gallery))
    return jobs


Runs = list[tuple[int, bytes]]  # (cluster timecode, the bytes of its blocks), in stream order


def read_runs(job: Job) -> Runs:
    """The job's compressed blocks, read from its stored stream, grouped by cluster."""
    assert job.source is not None, "a job without a source carries its bytes"
    runs: Runs = []
    pieces = job.source.read_spans([(offset, length) for _, offset, length in job.blocks])
    for (timecode, _, _), data in zip(job.blocks, pieces, strict=True):
        if runs and runs[-1][0] == timecode:
            runs[-1] = (timecode, runs[-1][1] + data)
        else:
            runs.append((timecode, data))
    return runs


def run_job(job: Job) -> list[dict[str, Any]]:
    """In a worker: decode the job's blocks, landmark frames [start, end)."""
    return landmark_runs(job, read_runs(job))


def landmark_runs(job: Job, runs: Runs, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Decode ``runs`` (the job's blocks, from the keyframe before its range) with a fresh
    decoder and track frames [start, end) with a fresh tracker; no file is read here.
    ``progress`` hears the frames landmarked, every ``REPORT_EVERY``."""
    return list(_landmarked(job, runs, progress))


def landmark_runs_encoded(job: Job, runs: Runs, progress: Progress | None = None) -> EncodedFrames:
    """``landmark_runs``'s frames as their landmarks.jsonl lines, each encoded as it is
    landmarked: what goes back to the process that writes the file (bytes, not nested lists)."""
    return EncodedFrames.encode(_landmarked(job, runs, progress))


def _landmarked(job: Job, runs: Runs, progress: Progress | None) -> Iterator[dict[str, Any]]:
    decoder = UnitDecoder(first_index=job.first_index)
    tracker = FaceTracker(job.settings, gallery=FixedGallery(job.gallery) if job.gallery is not None else None)
    done = 0
    # frames are consumed as they are decoded: a long run from a distant keyframe holds one
    for frame in itertools.chain(decoder.decode(build_unit(job.init, runs)), decoder.flush()):
        if job.start <= frame.index < job.end:
            faces = tracker.process(frame.gray(), frame.index, rgb=frame.rgb)
            yield frame_result(frame.index, frame.pts_ms, faces)
            done += 1
            if progress is not None and done % REPORT_EVERY == 0:
                progress(REPORT_EVERY)
    if done != job.end - job.start:
        raise UndecodableError(
            f"the video does not decode as its frame headers say: frames {job.start}-{job.end - 1} "
            f"gave {done} of {job.end - job.start}",
            min(decoder.index, job.start + done),
        )


def session_jobs(
    store: SessionStore, session_id: str, settings: TrackerSettings, progress: Progress | None = None,
    max_frames: int = MAX_JOB_FRAMES_DEFAULT,
) -> list[Job]:  # fmt: skip
    """The jobs of a stored session (its own sweep offset: the frames live analysis swept on),
    identified against the gallery as it is now; ``progress`` hears the bytes of its stream
    read while planning."""
    gallery = store.gallery.matrix() if settings.identify else None
    return plan_jobs(store.stream_source(session_id), settings.for_session(session_id), gallery, max_frames, progress)


def finalize_session(store: SessionStore, session_id: str) -> dict[str, float | int]:
    """Remux a stopped session's raw stream into its seekable recording (atomically), from the
    stream as the reader rebuilds it: whatever its layout, FFmpeg reads that one."""
    source = store.stream_source(session_id)
    with store.recording_target(session_id) as target, stored_stream(source.path, source.length) as stream:
        return remux(stream, target, label=session_id)
