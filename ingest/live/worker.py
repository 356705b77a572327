"""Worker processes: decoding and landmarks, off the server's event loop and GIL.

Each worker owns the decoders and face trackers of the sessions assigned to it (sticky: a
session's decoder state lives in exactly one process), so only compressed units (~40 KB) go in
and small landmark lists come out; decoded frames never cross a process boundary. The messages
are the dataclasses of ``ingest.live.messages``.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
import signal
from collections.abc import Callable
from typing import Any

from ingest.analysis.budget import SweepBudget, TimeBudget
from ingest.analysis.identity import PushedGallery
from ingest.analysis.process import prepare_analysis_process
from ingest.analysis.stills import faces_in_snapshot
from ingest.analysis.tracker import FaceTracker, TrackerSettings
from ingest.analysis.tryon import recolour_lips
from ingest.background import exit_with_parent
from ingest.batch.jobs import run_job
from ingest.exceptions import IngestError, UndecodableError
from ingest.live.messages import (
    AnalyseImage,
    AnalyseUnit,
    Drop,
    Exit,
    Failure,
    Flush,
    Frames,
    ImageFaces,
    JobFrames,
    Recoloured,
    RecolourImage,
    Reply,
    Request,
    RunJob,
    SetGallery,
)
from ingest.media.decode import UnitDecoder
from storage.landmarks import frame_result

log = logging.getLogger(__name__)
WORKER_NICENESS = 10


class SessionAnalyser:
    """Decoder + tracker of one session."""

    def __init__(
        self, worker: Worker, session_id: str, first_index: int = 0, skip_until: int = 0, wait_key: bool = False
    ) -> None:
        self.decoder = UnitDecoder(first_index, skip_until, wait_key)
        gallery = worker.gallery if worker.settings.identify else None
        # the session's own sweeps: those its fills and reprocessing also start their jobs on
        self.tracker = FaceTracker(worker.settings.for_session(session_id), gallery=gallery, budget=worker.budget,
                                   sweep_budget=worker.sweep_budget)  # fmt: skip

    def unit(self, unit: bytes, analyse: bool) -> list[dict[str, Any]]:
        return self._results(self.decoder.decode(unit), analyse)

    def flush(self) -> list[dict[str, Any]]:
        return self._results(self.decoder.flush(), True)

    def _results(self, frames: Any, analyse: bool) -> list[dict[str, Any]]:
        if not analyse:
            self.tracker.reset()  # tracks from before a gap would be stale
        out = []
        tracker = self.tracker
        for frame in frames:
            faces = tracker.process(frame.gray(), frame.index, rgb=frame.rgb) if analyse else None
            out.append(frame_result(frame.index, frame.pts_ms, faces, tracker.provisional))
        return out


class Worker:
    """What one worker process holds: its sessions' analysers, the gallery its server sent, the
    budgets its sessions' descriptors and sweeps share."""

    def __init__(
        self, settings: TrackerSettings, snapshot_upsample: int, waiting: Callable[[], bool] = lambda: False
    ) -> None:
        """``waiting``: whether requests wait for the worker (its pipe holds some)."""
        self.settings = settings
        self.snapshot_upsample = snapshot_upsample
        self.sessions: dict[str, SessionAnalyser] = {}
        self.gallery = PushedGallery()
        self.budget = TimeBudget(settings.identify_share)
        # sweeps due on many sessions' frames at once (a start or a scene cut together): those
        # beyond it are put off (analysis/tracker.py), not queued in front of everyone's frames
        self.sweep_budget = SweepBudget(settings.sweep_share, settings.sweep_burst_s, waiting)

    def handle(self, request: Request) -> Reply | None:
        """The one reply to ``request`` (None for Drop, SetGallery): a failure is reported, the
        worker goes on serving its other sessions."""
        sessions, settings = self.sessions, self.settings
        try:
            if isinstance(request, AnalyseUnit):
                analyser = sessions.get(request.session_id)
                if analyser is None:
                    analyser = sessions[request.session_id] = SessionAnalyser(self, request.session_id, **request.decoder)
                return Frames(request.session_id, request.seq, analyser.unit(request.unit, request.analyse))
            if isinstance(request, Flush):
                done = sessions.pop(request.session_id, None)
                return Frames(request.session_id, request.seq, done.flush() if done else [])
            if isinstance(request, Drop):
                sessions.pop(request.session_id, None)
                return None
            if isinstance(request, SetGallery):
                self.gallery.update(request.generation, request.matrix)
                return None
            if isinstance(request, RunJob):
                return JobFrames(request.job_id, run_job(request.job))
            if isinstance(request, AnalyseImage):
                with open(request.path, "rb") as f:
                    data = f.read()
                faces = faces_in_snapshot(data, self.snapshot_upsample, settings.engine, request.max_pixels,
                                          self.gallery if settings.identify else None, settings.identity_threshold,
                                          settings.descriptor_engine)  # fmt: skip
                return ImageFaces(request.request_id, faces)
            if isinstance(request, RecolourImage):
                faces, data_url = recolour_lips(request.data, request.upsample, settings.engine, request.max_pixels)
                return Recoloured(request.request_id, faces, data_url)
            raise TypeError(f"unknown request {type(request).__name__}")
        except Exception as exc:  # report, keep serving the other sessions
            if isinstance(exc, IngestError) and exc.code in ("invalid_media", "unsupported"):  # the stream's own
                failure = Failure("invalid_media", exc.message, exc.frames if isinstance(exc, UndecodableError) else None)
            elif isinstance(exc, ValueError) and isinstance(request, AnalyseImage | RecolourImage):
                failure = Failure("invalid_media", str(exc))  # the image does not decode
            else:  # a bug: its text is for the log, not for the page
                log.exception("worker failed on %s", type(request).__name__)
                failure = Failure("internal", "an internal error in the analysis worker (its log says which)")
            if isinstance(request, AnalyseUnit | Flush):
                sessions.pop(request.session_id, None)
                return Frames(request.session_id, request.seq, [], failure)
            if isinstance(request, RunJob):
                return JobFrames(request.job_id, [], failure)
            if isinstance(request, AnalyseImage | RecolourImage):
                return request.failed(failure)
            raise


def worker_main(
    conn: multiprocessing.connection.Connection, tracker_settings: TrackerSettings, snapshot_upsample: int
) -> None:
    """Entry point of a worker process."""
    # Analysis is best-effort, acks and pings are not: when the cores are busy, the server's
    # event loop must win (a skipped frame is refilled by reprocess; a late ack is not undone).
    os.nice(WORKER_NICENESS)
    # The server owns this process's lifetime: it sends None to stop it, and if the server dies
    # the pipe's EOF does. Ctrl-C in a terminal, `timeout` or systemd signal the whole process
    # group; a worker dying of that before the server has shut down would look like a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    exit_with_parent()  # also while it prepares or computes, when it reads no pipe (kill -9 of the server)
    prepare_analysis_process(tracker_settings.engine, tracker_settings.descriptor_engine)
    worker = Worker(tracker_settings, snapshot_upsample, waiting=conn.poll)
    while True:
        try:
            request: Request = conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(request, Exit):
            return
        try:
            reply = worker.handle(request)
        except (BrokenPipeError, EOFError):
            return
        if reply is not None:
            try:
                conn.send(reply)
            except (BrokenPipeError, EOFError, OSError):
                return
