"""Worker processes: decoding and landmarks, off the server's event loop and GIL.

Each worker owns the decoders and face trackers of the sessions assigned to it (sticky: a
session's decoder state lives in exactly one process), so only compressed units (~40 KB) go in
and small landmark lists come out; decoded frames never cross a process boundary.

Messages (pickled over a ``multiprocessing`` pipe):

    in:  ("unit", session_id, seq, unit_bytes, analyse, decoder_opts)
         ("flush", session_id, seq)      end of stream: drain the decoder, forget the session
         ("drop", session_id)            forget the session (failed/deleted)
         ("image", request_id, path, max_pixels)  full detection on a snapshot (downscaled to max_pixels)
         ("job", job_id, batch.Job)      landmarks of a frame range of a stored stream (filling)
         None                            exit
    out: ("frames", session_id, seq, [frame, ...], error_message | None)
         ("image", request_id, [face, ...], error_message | None)
         ("job", job_id, [frame, ...], error_message | None)
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
import signal
from typing import Any

from ingest.exceptions import InvalidMediaError

log = logging.getLogger(__name__)
WORKER_NICENESS = 10
WORKER_CRASHED = "the analysis worker crashed"  # the error of requests a dead worker had in hand


def frame_result(index: int, pts_ms: float, faces: list[dict[str, Any]] | None) -> dict[str, Any]:
    if faces is None:
        return {"index": index, "pts_ms": round(pts_ms, 3), "skipped": True}
    return {"index": index, "pts_ms": round(pts_ms, 3), "faces": faces}


class SessionAnalyser:
    """Decoder + tracker of one session."""

    def __init__(
        self, tracker_settings: Any, first_index: int = 0, skip_until: int = 0, wait_key: bool = False
    ) -> None:
        from ingest.decode import UnitDecoder
        from ingest.landmarks import FaceTracker

        self.decoder = UnitDecoder(first_index, skip_until, wait_key)
        self.tracker = FaceTracker(tracker_settings)

    def unit(self, unit: bytes, analyse: bool) -> list[dict[str, Any]]:
        return self._results(self.decoder.decode(unit), analyse)

    def flush(self) -> list[dict[str, Any]]:
        return self._results(self.decoder.flush(), True)

    def _results(self, frames: Any, analyse: bool) -> list[dict[str, Any]]:
        if not analyse:
            self.tracker.reset()  # tracks from before a gap would be stale
        out = []
        for frame in frames:
            faces = self.tracker.process(frame.gray(), frame.index) if analyse else None
            out.append(frame_result(frame.index, frame.pts_ms, faces))
        return out


def worker_main(conn: multiprocessing.connection.Connection, tracker_settings: Any, snapshot_upsample: int) -> None:
    """Entry point of a worker process."""
    import cv2

    cv2.setNumThreads(1)  # one core per worker; OpenCV's pool would fight dlib for it
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Analysis is best-effort, acks and pings are not: when the cores are busy, the server's
    # event loop must win (a skipped frame is refilled by reprocess; a late ack is not undone).
    os.nice(WORKER_NICENESS)
    # The server owns this process's lifetime: it sends None to stop it, and if the server dies
    # the pipe's EOF does. Ctrl-C in a terminal, `timeout` or systemd signal the whole process
    # group; a worker dying of that before the server has shut down would look like a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from ingest.landmarks import detect_faces_in_file
    from ingest.predictor import predictor

    # load the model and compile (or load) the kernel once, before the first frame arrives
    predictor(tracker_settings.engine)
    sessions: dict[str, SessionAnalyser] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        kind = message[0]
        try:
            if kind == "unit":
                _, session_id, seq, unit, analyse, opts = message
                analyser = sessions.get(session_id)
                if analyser is None:
                    analyser = sessions[session_id] = SessionAnalyser(tracker_settings, **opts)
                try:
                    conn.send(("frames", session_id, seq, analyser.unit(unit, analyse), None))
                except InvalidMediaError as exc:
                    sessions.pop(session_id, None)
                    conn.send(("frames", session_id, seq, [], exc.message))
            elif kind == "flush":
                _, session_id, seq = message
                analyser = sessions.pop(session_id, None)
                try:
                    frames = analyser.flush() if analyser else []
                    conn.send(("frames", session_id, seq, frames, None))
                except InvalidMediaError as exc:
                    conn.send(("frames", session_id, seq, [], exc.message))
            elif kind == "drop":
                sessions.pop(message[1], None)
            elif kind == "job":
                from ingest.batch import run_job

                try:
                    conn.send(("job", message[1], run_job(message[2]), None))
                except InvalidMediaError as exc:
                    conn.send(("job", message[1], [], exc.message))
            elif kind == "image":
                _, request_id, path, max_pixels = message
                try:
                    faces = detect_faces_in_file(path, snapshot_upsample, tracker_settings.engine, max_pixels)
                except ValueError as exc:
                    conn.send(("image", request_id, [], str(exc)))
                else:
                    conn.send(("image", request_id, faces, None))
        except (BrokenPipeError, EOFError):
            return
        except Exception as exc:  # report, keep serving the other sessions
            log.exception("worker failed on %s", kind)
            if kind in ("unit", "flush"):
                sessions.pop(message[1], None)
                conn.send(("frames", message[1], message[2], [], f"internal error: {exc}"))
            elif kind in ("image", "job"):
                conn.send((kind, message[1], [], f"internal error: {exc}"))
