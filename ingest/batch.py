"""Batch re-processing: landmarks for every frame of stored sessions, on all cores.

The stream is cut into jobs of ``sweep_every``-aligned frame ranges. Each job carries only the
compressed blocks from the keyframe before its range to its end; the worker decodes them with a
fresh decoder and tracks the range with a fresh tracker. No decoded frame crosses a process
boundary, and because a range starts on a frame where the live tracker also runs a full
detection, the batch result equals the live one wherever live analysed the frame.

Results are written in index order to a temporary file that replaces landmarks.jsonl only when
complete: an interrupted run leaves the previous landmarks as they were.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.exceptions import InvalidMediaError, SessionClosedError
from ingest.landmarks import TrackerSettings
from ingest.webm import WebMReader, build_unit
from storage.gallery import Gallery, GalleryMatrix
from storage.landmarks import LandmarkCounts, LandmarkRewrite, frame_result
from storage.store import SessionStore, utc_now

READ_PIECE = 1024 * 1024
MAX_JOB_FRAMES_DEFAULT = 300


@dataclass(frozen=True)
class VideoBlock:
    offset: int
    length: int
    cluster_timecode: int
    keyframe: bool


@dataclass(frozen=True)
class Job:
    path: str
    init: bytes
    blocks: tuple[tuple[int, int, int], ...]  # (cluster_timecode, offset, length) from a keyframe on
    first_index: int  # index of the first block's frame
    start: int  # landmark frames [start, end)
    end: int
    settings: TrackerSettings
    # the gallery when the job was planned (faces identified against it; travels with the job)
    gallery: GalleryMatrix | None = None


def scan_video_blocks(path: Path) -> tuple[bytes, list[VideoBlock]]:
    """Init segment and the video blocks of a stored stream (locations only, not the bytes)."""
    reader = WebMReader()
    blocks: list[VideoBlock] = []
    with open(path, "rb") as f:
        while piece := f.read(READ_PIECE):
            unit = reader.feed(piece)
            video = reader.video_track
            for run in unit.clusters:
                for block in run.blocks:
                    if video is not None and block.track == video.number:
                        blocks.append(VideoBlock(block.offset, len(block.data), run.timecode, block.keyframe))
    return bytes(reader.init), blocks


def plan_jobs(path: Path, settings: TrackerSettings, max_frames: int = MAX_JOB_FRAMES_DEFAULT) -> list[Job]:
    init, blocks = scan_video_blocks(path)
    gallery = Gallery(Path(settings.gallery_data_dir)).matrix() if settings.gallery_data_dir else None
    # a job must start on a sweep (the tracker's reset point): its range is whole sweep periods
    step = max(settings.sweep_every, (max_frames // settings.sweep_every) * settings.sweep_every)
    jobs = []
    for start in range(0, len(blocks), step):
        end = min(start + step, len(blocks))
        key = start
        while key > 0 and not blocks[key].keyframe:
            key -= 1
        span = tuple((b.cluster_timecode, b.offset, b.length) for b in blocks[key:end])
        jobs.append(Job(str(path), init, span, key, start, end, settings, gallery))
    return jobs


Runs = list[tuple[int, bytes]]  # (cluster timecode, the bytes of its blocks), in stream order


def read_runs(job: Job) -> Runs:
    """The job's compressed blocks, read from its stream file, grouped by cluster."""
    runs: Runs = []
    with open(job.path, "rb") as f:
        for timecode, offset, length in job.blocks:
            f.seek(offset)
            data = f.read(length)
            if runs and runs[-1][0] == timecode:
                runs[-1] = (timecode, runs[-1][1] + data)
            else:
                runs.append((timecode, data))
    return runs


def run_job(job: Job) -> list[dict[str, Any]]:
    """In a worker: decode the job's blocks, landmark frames [start, end)."""
    return landmark_runs(job, read_runs(job))


def landmark_runs(job: Job, runs: Runs) -> list[dict[str, Any]]:
    """Decode ``runs`` (the job's blocks, from the keyframe before its range) with a fresh
    decoder and track frames [start, end) with a fresh tracker; no file is read here."""
    from ingest.decode import UnitDecoder
    from ingest.identity import FixedGallery
    from ingest.landmarks import FaceTracker

    decoder = UnitDecoder(first_index=job.first_index)
    tracker = FaceTracker(job.settings, gallery=FixedGallery(job.gallery) if job.gallery is not None else None)
    out = []
    # frames are consumed as they are decoded: a long run from a distant keyframe holds one
    for frame in itertools.chain(decoder.decode(build_unit(job.init, runs)), decoder.flush()):
        if job.start <= frame.index < job.end:
            faces = tracker.process(frame.gray(), frame.index, rgb=frame.rgb)
            out.append(frame_result(frame.index, frame.pts_ms, faces))
    if len(out) != job.end - job.start:
        raise InvalidMediaError(f"frames {job.start}-{job.end}: decoded {len(out)} of {job.end - job.start}")
    return out


def _init_worker(engine: str) -> None:
    import cv2

    from ingest.predictor import predictor

    cv2.setNumThreads(1)
    predictor(engine)  # model loaded and kernel compiled once per process, before the first job


class Reprocessor:
    """Re-landmark sessions with a pool of ``workers`` processes (kept across sessions)."""

    def __init__(self, store: SessionStore, settings: TrackerSettings, workers: int) -> None:
        self.store = store
        self.settings = settings
        self.workers = workers
        self._pool: Any = None

    def __enter__(self) -> Reprocessor:
        ctx = multiprocessing.get_context("spawn")
        self._pool = ctx.Pool(self.workers, initializer=_init_worker, initargs=(self.settings.engine,))
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self._pool.close()
        else:
            self._pool.terminate()
        self._pool.join()

    def jobs(self, session_id: str) -> list[Job]:
        row = self.store.get_row(session_id)
        if row["state"] == "recording":
            raise SessionClosedError(f"session {session_id} is still recording; stop it first")
        return plan_jobs(self.store.paths(session_id).stream, self.settings)

    def run(self, session_id: str, jobs: list[Job], progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
        ((_, result),) = self.run_many([(session_id, jobs)], progress)
        return result

    def run_many(
        self, plan: list[tuple[str, list[Job]]], progress: Callable[[int], None] = lambda n: None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Re-landmark several sessions in one pass over the pool: jobs of the next session start
        while the last ones of this session finish, so no worker waits at session boundaries
        (a short session is one or two jobs of unequal length). Yields (session id, result) as
        each session is committed, in plan order."""
        jobs = [job for _, session_jobs in plan for job in session_jobs]
        results = self._results(jobs)  # in job order
        try:
            for session_id, session_jobs in plan:
                paths = self.store.paths(session_id)
                failure: BaseException | None = None
                with LandmarkRewrite(paths.landmarks) as rewrite:
                    for job in session_jobs:
                        batch = next(results)
                        if isinstance(batch, BaseException):  # this session only: the others go on
                            failure = failure or batch
                            progress(job.end - job.start)
                            continue
                        if failure is None:
                            rewrite.write(batch)
                        progress(len(batch))
                    if failure is None:
                        counts = rewrite.commit()
                if failure is not None:  # never committed: the previous landmarks stay
                    yield session_id, {"error": str(failure)}
                    continue
                yield session_id, self._finish(session_id, counts)
        finally:  # an interrupted run stops the executor's work now, not when collected
            close = getattr(results, "close", None)
            if close is not None:
                close()

    def _results(self, jobs: list[Job]) -> Iterator[list[dict[str, Any]] | BaseException]:
        """Each job's frames, in job order (an exception in place of a job whose input could not
        be read, where the executor can tell). Local worker processes here."""
        return self._pool.imap(run_job, jobs)

    def describe(self) -> dict[str, Any]:
        return {"workers": self.workers}

    def _finish(self, session_id: str, counts: LandmarkCounts) -> dict[str, Any]:
        paths = self.store.paths(session_id)
        meta = {"mode": "batch", **self.describe(), "finished_at": utc_now(), **self.settings.describe()}
        (paths.root / "landmarks.meta.json").write_text(json.dumps(meta))
        self.store.reset_landmark_counts(session_id, counts)
        if not paths.recording.exists() and self.store.get_row(session_id)["state"] == "stopped":
            from ingest.finalize import finalize

            finalize(paths.stream, paths.recording)
        return {"frames": counts.frames, "frames_with_faces": counts.with_faces}
