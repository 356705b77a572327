"""Live analysis: committed chunks -> worker processes -> landmarks back to the page and to disk.

Per session, units wait in a queue of at most ``live_queue_units``; one unit per session is in
flight at a time, so sessions share the workers fairly (a worker serves its sessions in arrival
order). When a session's queue is over the limit, the unit sent next is decoded but not
landmarked: its frames come back ``skipped`` at once instead of lag and memory growing; the fill
after stop (backfill.py) landmarks them. Decoding never skips: every frame is needed for the next.

After a restart, a session's decoder is rebuilt from the last keyframe at or before the first
frame without landmarks, from the stored stream; frames already landmarked are decoded for state
but not sent again. A worker that dies is replaced the same way: a new process takes its slot
and its sessions are re-primed from the store, so no frame is lost or landmarked twice.

What it needs from the server is passed in at construction: ``emit`` (an event to a session's
room) and ``on_failed`` (a stream that does not decode: later chunks are refused).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ingest.analysis.tracker import TrackerSettings
from ingest.background import BackgroundTasks
from ingest.config import Settings
from ingest.exceptions import IngestError, InvalidMediaError
from ingest.live.backfill import Filler
from ingest.live.handle import WorkerHandle
from ingest.live.messages import (
    CRASHED,
    AnalyseUnit,
    Drop,
    Failure,
    Flush,
    Frames,
    ImageFaces,
    JobFrames,
    Recoloured,
    Reply,
    SetGallery,
)
from ingest.live.snapshot_lane import SnapshotLane
from ingest.live.tryon_lane import TryOnLane
from ingest.media.webm import build_unit
from ingest.metrics import Metrics
from storage.landmarks import LandmarkCounts
from storage.store import SessionStore

log = logging.getLogger(__name__)
# a session is re-primed on a new worker this many times; after that its analysis stops (the
# recording itself goes on: chunks are stored and acked as always)
MAX_CRASHES_PER_SESSION = 2
# how often the index's gallery generation is read (a small query in a thread): enrolments on any
# node reach this node's workers within this long
GALLERY_POLL_S = 0.25

Emit = Callable[[str, dict[str, Any], str], Awaitable[None]]


@dataclass
class SessionPipe:
    session_id: str
    worker: WorkerHandle
    decoder_opts: dict[str, Any]
    pending: collections.deque[tuple[int, bytes]] = field(default_factory=collections.deque)
    acked_at: dict[int, float] = field(default_factory=dict)  # seq -> when it was acked (pending + in flight)
    in_flight: bool = False
    started: bool = False
    finishing: bool = False
    skipped: int = 0
    crashes: int = 0  # workers that died while analysing this session
    primed_through: int = -1  # units up to this seq came from the store, not from submit_chunk
    delivering: asyncio.Task[None] | None = None


class LivePipeline:
    """The worker processes and what they are given: the one owner of their lifetime."""

    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        metrics: Metrics,
        emit: Emit,
        on_failed: Callable[[str, str], None],
        refill_at_start: bool = True,
    ) -> None:
        """``refill_at_start``: fill the stopped sessions a restart left unfilled (a single node;
        several take such work by lease, ingest/recording/lifecycle.py)."""
        self.settings = settings
        self.tracker_settings = TrackerSettings.from_settings(settings)
        self.metrics = metrics
        self.store = store
        self.emit = emit
        self.on_failed = on_failed
        self._gallery: SetGallery | None = None  # the last one sent: a new worker gets it too
        self._gallery_lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        self.workers = [self._start_worker(i, loop) for i in range(settings.worker_count)]
        self.pipes: dict[str, SessionPipe] = {}
        self._failing: set[str] = set()  # sessions whose video stopped decoding, until the index says so
        self._opening: dict[str, asyncio.Lock] = {}
        self.snapshots = SnapshotLane(self.workers, settings.max_snapshot_queue, settings.max_snapshot_analysis_pixels)
        self.tryon = TryOnLane(self.workers, settings.classic_image_upsample, settings.max_snapshot_analysis_pixels,
                               metrics.classic_frames_dropped.inc)  # fmt: skip
        self._tasks = BackgroundTasks(log)
        self.filler = Filler(store, self.tracker_settings, self.workers, self._filled)
        self.filler.start()
        if refill_at_start:
            self._tasks.spawn(self._refill_after_restart(), "refill after restart")
        self._tasks.spawn(self._watch_gallery(), "gallery watch")

    def _start_worker(self, index: int, loop: asyncio.AbstractEventLoop) -> WorkerHandle:
        worker = WorkerHandle(index, self.tracker_settings, loop, self._on_message, self._worker_exited)
        if self._gallery is not None:
            worker.send(self._gallery)
        return worker

    async def gallery_changed(self) -> None:
        """The gallery changed here (an enrolment): the workers get it before anything else."""
        async with self._gallery_lock:
            await self._send_gallery()

    async def _send_gallery(self) -> None:
        current = await asyncio.to_thread(self.store.gallery.generation)
        if self._gallery is None or current != self._gallery.generation:
            matrix = await asyncio.to_thread(self.store.gallery.matrix)
            self._gallery = SetGallery(current, matrix)
            for worker in self.workers:
                worker.send(self._gallery)

    async def _watch_gallery(self) -> None:
        """Send the gallery to the workers whenever its generation in the index changes (on any
        node, or by ``camingest gallery``)."""
        failing = False
        while True:
            try:
                async with self._gallery_lock:
                    await self._send_gallery()
                failing = False
            except (IngestError, OSError) as exc:  # the index away: the workers keep what they have
                if not failing:
                    log.warning("the gallery cannot be read (%s); workers keep the one they have", exc)
                failing = True
            await asyncio.sleep(GALLERY_POLL_S)

    def _worker_exited(self, dead: WorkerHandle) -> None:
        """A worker died (killed, out of memory, a crash in native code): start another in its
        place and move its sessions there, each re-primed from its last stored keyframe as after
        a restart; snapshots and fill jobs it had in hand fail with a clear error."""
        log.error(
            "analysis worker %d (pid %s) exited with %s; starting a new one",
            dead.index, dead.process.pid, dead.process.exitcode,
        )  # fmt: skip
        self.workers[self.workers.index(dead)] = self._start_worker(dead.index, asyncio.get_running_loop())
        self.metrics.worker_restarts.inc()
        for request in list(dead.awaiting.values()):
            self._on_message(dead, request.failed(CRASHED))
        for pipe in [p for p in self.pipes.values() if p.worker is dead]:
            self._close_pipe(pipe)  # unregistered: it dispatches nothing more
            self._tasks.spawn(self._reopen(pipe), f"re-prime {pipe.session_id}")

    async def _reopen(self, old: SessionPipe) -> None:
        if old.delivering is not None:  # results received before the crash are written first
            await asyncio.gather(old.delivering, return_exceptions=True)
        if old.crashes + 1 > MAX_CRASHES_PER_SESSION:  # the stream itself may be what kills them
            log.error("stopped analysing %s: %d workers died on it", old.session_id, old.crashes + 1)
            await self._emit_error(old.session_id, IngestError(f"{CRASHED.message} on this stream; analysis stopped"))
            return
        pipe = await self._open(old.session_id, None, 1)
        if pipe is None:
            return
        pipe.finishing = pipe.finishing or old.finishing
        pipe.skipped += old.skipped
        pipe.crashes = old.crashes + 1
        self._dispatch(pipe)

    # -- chunks ----------------------------------------------------------------------------------
    async def submit_chunk(self, session_id: str, seq: int, frames_before: int, unit: bytes) -> None:
        """A committed chunk's standalone unit (the blocks it completed), to be analysed."""
        if session_id in self._failing:
            return
        pipe = self.pipes.get(session_id) or await self._open(session_id, seq, frames_before)
        if pipe is None:
            return  # its video stopped decoding: it is failed
        if seq <= pipe.primed_through:
            return  # already queued from the store (a pipe re-opened after a worker crash)
        pipe.pending.append((seq, unit))
        pipe.acked_at[seq] = time.monotonic()  # acked right after this: the lag's start
        self._dispatch(pipe)

    async def _open(self, session_id: str, seq: int | None, frames_before: int) -> SessionPipe | None:
        lock = self._opening.setdefault(session_id, asyncio.Lock())
        async with lock:
            pipe = self.pipes.get(session_id)
            if pipe is None:
                pipe = await asyncio.to_thread(self._prepare, session_id, seq, frames_before)
                if pipe is not None:
                    pipe.worker.sessions += 1
                    self.pipes[session_id] = pipe
        self._opening.pop(session_id, None)
        return pipe

    def _prepare(self, session_id: str, seq: int | None, frames_before: int) -> SessionPipe | None:
        """A pipe for a session this process has not analysed yet: fresh, or resumed after a
        restart or a worker crash (then primed with the stored units before ``seq``, all of
        them if None, from a keyframe on). None for a session failed already (its video does
        not decode: a chunk acked just before it was found must not decode it again)."""
        if self.store.get_row(session_id)["state"] == "failed":
            return None
        self.store.start_landmarks_meta(session_id, {"mode": "live", **self.tracker_settings.for_session(session_id).describe()})
        done = self.store.stored_landmark_frames(session_id)
        worker = min(self.workers, key=lambda w: w.sessions)
        pipe = SessionPipe(session_id, worker, {})
        if frames_before == 0:
            return pipe
        rows = [r for r in self.store.chunk_rows(session_id) if seq is None or r["seq"] < seq]
        if not rows:
            return pipe
        pipe.primed_through = rows[-1]["seq"]
        keyed = [r for r in rows if r["keyframe"] is not None and r["keyframe"] <= done]
        start = keyed[-1] if keyed else rows[0]
        init = self.store.init_segment(session_id) or b""
        for row in rows[rows.index(start) :]:
            if self.store.has_blocks(row):
                pipe.pending.append((row["seq"], build_unit(init, self.store.chunk_runs(session_id, row))))
        pipe.decoder_opts = {"first_index": start["frames_before"], "skip_until": done, "wait_key": True}
        return pipe

    def _dispatch(self, pipe: SessionPipe) -> None:
        if pipe.in_flight or self.pipes.get(pipe.session_id) is not pipe:
            return
        if not pipe.pending:
            if pipe.finishing:
                pipe.in_flight = True
                pipe.worker.send(Flush(pipe.session_id))
            return
        seq, unit = pipe.pending.popleft()
        analyse = len(pipe.pending) < self.settings.live_queue_units
        opts = {} if pipe.started else pipe.decoder_opts
        pipe.started = True
        pipe.in_flight = True
        pipe.worker.send(AnalyseUnit(pipe.session_id, seq, unit, analyse, opts))

    def _on_message(self, worker: WorkerHandle, reply: Reply) -> None:
        worker.outstanding -= 1
        self.snapshots.dispatch()  # snapshots first: they were waiting for an idle worker already
        self.tryon.dispatch()  # then the try-on pages' images (real time), then fills (background)
        self.filler.poke()
        if isinstance(reply, Frames):
            if (pipe := self.pipes.get(reply.session_id)) is not None:
                pipe.delivering = self._tasks.spawn(self._deliver(pipe, reply), f"deliver {reply.session_id}")
        elif isinstance(reply, JobFrames):
            worker.awaiting.pop(reply.key, None)
            self.filler.on_result(reply)
        elif isinstance(reply, ImageFaces):
            worker.awaiting.pop(reply.key, None)
            self.snapshots.on_reply(reply)
        elif isinstance(reply, Recoloured):
            worker.awaiting.pop(reply.key, None)
            self.tryon.on_reply(reply)

    async def _deliver(self, pipe: SessionPipe, reply: Frames) -> None:
        session_id, seq, frames = pipe.session_id, reply.seq, reply.frames
        if reply.failure is not None:
            await self._fail_decoding(pipe, reply.failure)
            return
        if frames:
            try:
                counts = await asyncio.to_thread(self.store.append_landmarks, session_id, frames)
            except OSError as exc:  # disk full: the page still gets them; stored by the fill after stop
                log.warning("landmarks of %d frames of %s not stored: %s", len(frames), session_id, exc)
                pipe.skipped += len(frames)
            else:
                pipe.skipped += counts.skipped
                self.metrics.frames_analysed.inc(counts.frames - counts.skipped)
                self.metrics.frames_skipped.inc(counts.skipped)
            # a tuple: JSON's array all the same, but python-socketio's search for binary data in
            # what it sends stops there instead of visiting every coordinate (~0.15 ms a frame)
            await self.emit("landmarks", {"session_id": session_id, "frames": tuple(frames)}, session_id)
        acked = pipe.acked_at.pop(seq, None)
        if acked is not None:
            self.metrics.landmark_lag.observe(time.monotonic() - acked)
        pipe.in_flight = False
        if seq == -1:  # flushed: the session is complete
            await asyncio.to_thread(self.store.landmarks_finished, session_id)  # (may wait for room to commit)
            # (a pipe already closed was replaced after a worker crash: its successor finishes)
            if self._close_pipe(pipe) and pipe.skipped:
                self.filler.request(session_id)
            return
        self._dispatch(pipe)

    async def _fail_decoding(self, pipe: SessionPipe, failure: Failure) -> None:
        message = failure.message if failure.kind == "invalid_media" else f"the video cannot be decoded: {failure.message}"
        error = InvalidMediaError(message)
        session_id = pipe.session_id
        logging.getLogger("camingest.sessions").warning("session %s failed: %s", session_id, error.message)
        # until the index says failed, chunks still coming open no new pipe (it would decode the
        # stream again from its keyframe and fail twice), and a `stop` starts no fill
        self._failing.add(session_id)
        try:
            self._close_pipe(pipe)
            self.on_failed(session_id, error.message)
            # failed with the frames that decoded: the session's count from now on
            await asyncio.to_thread(self.store.set_state, session_id, "failed", error.message, failure.frames)
        finally:
            self._failing.discard(session_id)
        await self._emit_error(session_id, error)

    async def _emit_error(self, session_id: str, error: IngestError) -> None:
        await self.emit("session_error", {"session_id": session_id, **error.to_dict()}, session_id)

    def _close_pipe(self, pipe: SessionPipe) -> bool:
        """Unregister the pipe; False if it was not (already closed, or replaced)."""
        if self.pipes.get(pipe.session_id) is not pipe:
            return False
        del self.pipes[pipe.session_id]
        pipe.worker.sessions -= 1
        self.filler.poke()
        return True

    async def finish(self, session_id: str) -> None:
        if session_id in self._failing:  # its video does not decode: nothing to flush or fill
            return
        pipe = self.pipes.get(session_id)
        if pipe is not None:  # the pipe flushes, then asks for a fill if it skipped frames
            pipe.finishing = True
            self._dispatch(pipe)
        else:  # never analysed here (resumed after a restart, or ended while its client was gone)
            self.filler.request(session_id)

    def forget(self, session_id: str) -> None:
        pipe = self.pipes.get(session_id)
        if pipe is not None:
            self._close_pipe(pipe)
            pipe.worker.send(Drop(session_id))
        self.filler.discard(session_id)

    async def fail(self, session_id: str, error: IngestError) -> None:
        pipe = self.pipes.get(session_id)
        if pipe is not None:
            self._close_pipe(pipe)
            pipe.worker.send(Drop(session_id))
        await self._emit_error(session_id, error)

    # -- snapshots -------------------------------------------------------------------------------
    async def analyse_image(self, path: str) -> list[dict[str, Any]]:
        """Faces of a stored snapshot, through the snapshots' own lane (snapshot_lane.py)."""
        return await self.snapshots.analyse(path)

    def _join_workers(self) -> None:
        for worker in self.workers:
            worker.close()

    # -- filling -------------------------------------------------------------------------------
    def fill(self, session_id: str) -> None:
        """Landmark a stopped session's frames that have none (skipped live, or imported)."""
        self.filler.request(session_id)

    def fill_status(self, session_id: str) -> dict[str, Any] | None:
        return self.filler.status(session_id)

    async def _refill_after_restart(self) -> None:
        for session_id in await asyncio.to_thread(self.store.sessions_to_fill):
            self.filler.request(session_id, analysed_only=True)

    async def _filled(self, session_id: str, counts: LandmarkCounts) -> None:
        await self.emit("landmarks_filled", {"session_id": session_id, **counts.to_dict()}, session_id)

    async def close(self) -> None:
        for worker in self.workers:
            worker.closing = True  # from here on, a worker's exit is not a crash
        await self.filler.close()
        await self._tasks.cancel()
        for worker in self.workers:  # all told first: they exit side by side, not one after another
            worker.request_exit()
        await asyncio.to_thread(self._join_workers)
        self.snapshots.close()
        self.tryon.close()
