"""Live analysis: committed chunks -> worker processes -> landmarks back to the page and to disk.

Per session, units wait in a queue; one unit per session is in flight at a time, so sessions
share the workers fairly (a worker serves its sessions in arrival order). While more than
``live_queue_units`` wait, the unit sent next is decoded but not landmarked: its frames come back
``skipped`` at once instead of lag growing; the fill after stop (backfill.py) landmarks them.

Decoding costs too, so memory and lag are bounded in bytes as well: once a session has more than
``live_backlog_units`` units or ``live_backlog_bytes`` waiting (or all sessions together
``max_live_backlog_bytes``), its waiting units are let go (they are stored already) and their
frames are sent ``skipped`` at once, written by the server itself (their times from the chunks'
timestamps), without decoding them. The worker's decoder of the session gives its last frames and
is dropped; decoding starts again at the next keyframe (the frames before it are ``skipped``
too), and the fill after stop landmarks the whole range. Every frame gets exactly one result, in
index order, whatever the load.

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
from storage.landmarks import LandmarkCounts, frame_result
from storage.leases import Lease, LeaseLostError
from storage.records import ChunkRecord
from storage.store import SessionStore

log = logging.getLogger(__name__)
# a session is re-primed on a new worker this many times; after that its analysis stops (the
# recording itself goes on: chunks are stored and acked as always)
MAX_CRASHES_PER_SESSION = 2
# how often the index's gallery generation is read (a small query in a thread): enrolments on any
# node reach this node's workers within this long
GALLERY_POLL_S = 0.25

# seqs of the replies that are not a unit's: the end of a session (Flush), a decoder reset after a
# dropped backlog (Flush), frames the server itself sends as skipped
FINISHED_SEQ, RESET_SEQ, SKIPPED_SEQ = -1, -2, -3

Emit = Callable[[str, dict[str, Any], str], Awaitable[None]]


def spread(start_ms: float | None, end_ms: float | None, count: int) -> list[float]:
    """Times for ``count`` frames after ``start_ms`` up to ``end_ms``, evenly spaced: the times of
    frames sent ``skipped`` without being decoded (the fill after stop writes their own)."""
    if count <= 0:
        return []
    if end_ms is None:
        return [start_ms or 0.0] * count
    if start_ms is None or start_ms >= end_ms:
        return [end_ms] * count
    step = (end_ms - start_ms) / count
    return [start_ms + step * (i + 1) for i in range(count)]


@dataclass
class Waiting:
    """A unit waiting for a worker: a committed chunk's frames, its bytes (None: read back from
    the store when its turn comes) and what sending its frames ``skipped`` needs."""

    seq: int
    frames_before: int
    frames: int
    keyframe: int | None  # index of the last keyframe it completes
    start_ms: float | None  # the times its frames lie after (exclusive) and up to (inclusive)
    end_ms: float | None
    unit: bytes | None

    @property
    def size(self) -> int:
        return len(self.unit) if self.unit is not None else 0

    def skipped(self, from_index: int, to_index: int) -> list[dict[str, Any]]:
        """Results ``skipped`` for its frames in [from_index, to_index)."""
        times = spread(self.start_ms, self.end_ms, self.frames)
        first = max(from_index, self.frames_before)
        return [frame_result(i, times[i - self.frames_before], None) for i in range(first, to_index)]


@dataclass
class SessionPipe:
    session_id: str
    worker: WorkerHandle
    decoder_opts: dict[str, Any]
    pending: collections.deque[Waiting] = field(default_factory=collections.deque)
    pending_bytes: int = 0  # of the units in ``pending`` held in memory
    acked_at: dict[int, float] = field(default_factory=dict)  # seq -> when it was acked (pending + in flight)
    in_flight: bool = False
    started: bool = False
    finishing: bool = False
    skipped: int = 0
    crashes: int = 0  # workers that died while analysing this session
    primed_through: int = -1  # units up to this seq came from the store, not from submit_chunk
    delivering: asyncio.Task[None] | None = None
    # every frame below this index has its result on the way (from the worker, or as skipped)
    covered: int = 0
    last_ms: float | None = None  # the last video time of the units seen so far
    init: bytes = b""  # the init segment, for units read back from the store
    # the backlog was let go: units are sent ``skipped`` until one with a keyframe comes
    to_keyframe: bool = False
    reset: bool = False  # the worker's decoder is to give its last frames and forget the session
    placeholders: list[dict[str, Any]] = field(default_factory=list)  # skipped results not yet sent


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
        fence: Callable[[str], Lease | None] = lambda _: None,
    ) -> None:
        """``refill_at_start``: fill the stopped sessions a restart left unfilled (a single node;
        several take such work by lease, ingest/recording/lifecycle.py). ``fence``: the lease a
        change of a session's state here is conditional on (None: a single node), raising
        ``LeaseLostError`` where this node holds none: then it neither analyses nor fails it."""
        self.settings = settings
        self.tracker_settings = TrackerSettings.from_settings(settings)
        self.metrics = metrics
        self.store = store
        self.emit = emit
        self.on_failed = on_failed
        self.fence = fence
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
        self.backlog_bytes = 0  # units held in memory by every session's queue
        # never fewer than live_queue_units: those wait to be decoded, not to be let go
        self.backlog_units = max(settings.live_backlog_units, settings.live_queue_units)
        metrics.gauge("camingest_live_backlog_bytes", "Units held in memory waiting for analysis, all sessions "
                      "(max_live_backlog_bytes bounds it)", lambda: self.backlog_bytes)  # fmt: skip
        self._tasks = BackgroundTasks(log)
        self.filler = Filler(store, self.tracker_settings, self.workers, self._filled, fence)
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
    async def submit_chunk(self, session_id: str, record: ChunkRecord, unit: bytes) -> None:
        """A committed chunk's standalone unit (the blocks it completed), to be analysed."""
        if session_id in self._failing:
            return
        seq = record.seq
        pipe = self.pipes.get(session_id) or await self._open(session_id, seq, record.frames_before)
        if pipe is None:
            return  # its video stopped decoding: it is failed
        if seq <= pipe.primed_through:
            return  # already queued from the store (a pipe re-opened after a worker crash)
        start_ms = pipe.last_ms  # (None for the first unit: its frames' times would all be its last)
        pipe.last_ms = record.last_ts_ms
        waiting = Waiting(seq, record.frames_before, record.frames, record.keyframe, start_ms, record.last_ts_ms, unit)
        pipe.acked_at[seq] = time.monotonic()  # acked right after this: the lag's start
        self._admit(pipe, waiting)
        self._dispatch(pipe)

    def _admit(self, pipe: SessionPipe, waiting: Waiting) -> None:
        """Queue a unit, or send its frames skipped if the session is waiting for a keyframe; a
        backlog over the bounds is let go."""
        if pipe.to_keyframe:
            self._to_keyframe(pipe, waiting)  # its keyframe unit is queued: the bound of all sessions holds it too
        else:
            self._queue(pipe, waiting)
            if len(pipe.pending) > self.backlog_units or pipe.pending_bytes > self.settings.live_backlog_bytes:
                self._let_go(pipe)
        while self.backlog_bytes > self.settings.max_live_backlog_bytes:  # all sessions: the largest backlog goes
            self._let_go(max(self.pipes.values(), key=lambda p: p.pending_bytes), keep_tail=False)

    def _queue(self, pipe: SessionPipe, waiting: Waiting) -> None:
        pipe.pending.append(waiting)
        pipe.pending_bytes += waiting.size
        self.backlog_bytes += waiting.size

    def _unqueue(self, pipe: SessionPipe) -> Waiting:
        waiting = pipe.pending.popleft()
        pipe.pending_bytes -= waiting.size
        self.backlog_bytes -= waiting.size
        return waiting

    def _let_go(self, pipe: SessionPipe, keep_tail: bool = True) -> None:
        """The session fell too far behind: its waiting units are let go (they are stored), their
        frames sent skipped; decoding starts again, on a new decoder, at the last keyframe
        waiting if few units come after it (``keep_tail``), else at the next keyframe to come."""
        waiting = [self._unqueue(pipe) for _ in range(len(pipe.pending))]
        keyed = [i for i, unit in enumerate(waiting) if unit.keyframe is not None]
        resume = None
        if keyed and keep_tail:
            tail = waiting[keyed[-1] :]
            if len(tail) <= self.backlog_units // 2 and sum(u.size for u in tail) <= self.settings.live_backlog_bytes // 2:
                resume = keyed[-1]
        log.debug("session %s: %d units waiting for analysis let go (their frames are skipped, filled after stop)",
                  pipe.session_id, len(waiting) if resume is None else resume)  # fmt: skip
        pipe.to_keyframe = True
        pipe.reset = pipe.reset or pipe.started  # the worker holds a decoder of it: flushed, then dropped
        for i, unit in enumerate(waiting):
            if resume is None or i < resume:
                self._skip(pipe, unit)
            elif i == resume:
                self._resume(pipe, unit)
            else:
                self._queue(pipe, unit)

    def _to_keyframe(self, pipe: SessionPipe, waiting: Waiting) -> None:
        """While waiting for a keyframe: a unit without one is sent skipped, the first with one
        is where decoding starts again."""
        if waiting.keyframe is None:
            self._skip(pipe, waiting)
        else:
            self._resume(pipe, waiting)

    def _skip(self, pipe: SessionPipe, waiting: Waiting) -> None:
        """The unit's frames are sent skipped, without decoding."""
        end = waiting.frames_before + waiting.frames
        pipe.placeholders += waiting.skipped(pipe.covered, end)
        pipe.covered = max(pipe.covered, end)
        pipe.acked_at.pop(waiting.seq, None)

    def _resume(self, pipe: SessionPipe, waiting: Waiting) -> None:
        """Decoding starts again at this unit's keyframe, on a new decoder (after the reset, if
        one is due); its frames before the keyframe are sent skipped."""
        assert waiting.keyframe is not None
        pipe.placeholders += waiting.skipped(pipe.covered, waiting.keyframe)
        pipe.covered = max(pipe.covered, waiting.keyframe)
        pipe.to_keyframe = False
        pipe.decoder_opts = {"first_index": waiting.frames_before, "skip_until": pipe.covered, "wait_key": True}
        self._queue(pipe, waiting)

    async def _open(self, session_id: str, seq: int | None, frames_before: int) -> SessionPipe | None:
        lock = self._opening.setdefault(session_id, asyncio.Lock())
        async with lock:
            pipe = self.pipes.get(session_id)
            if pipe is None:
                pipe = await asyncio.to_thread(self._prepare, session_id, seq, frames_before)
                if pipe is not None and not self._owned(session_id):  # let go while it was prepared
                    pipe = None
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
        if not self._owned(session_id):  # another node's (this one lost it): not analysed here
            return None
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
        pipe.init = self.store.init_segment(session_id) or b""
        # the stored units are read back one at a time when their turn comes (none held here);
        # should they be let go, their frames' times are the session's, spread by index
        session = self.store.get_row(session_id)
        first, last, total = session["first_ts_ms"], session["last_ts_ms"], max(1, session["frames"] - 1)

        def at(index: int) -> float | None:
            return None if first is None or last is None else first + (last - first) * min(index, total) / total

        for row in rows[rows.index(start) :]:
            if self.store.has_blocks(row):
                before, frames = row["frames_before"], row["frames"]
                start_ms = at(before - 1) if before else None
                pipe.pending.append(Waiting(row["seq"], before, frames, row["keyframe"], start_ms,
                                            at(before + frames - 1), None))  # fmt: skip
        pipe.covered = done
        pipe.last_ms = last
        pipe.decoder_opts = {"first_index": start["frames_before"], "skip_until": done, "wait_key": True}
        return pipe

    def _owned(self, session_id: str) -> bool:
        try:
            self.fence(session_id)
        except LeaseLostError:
            return False
        return True

    def _stored_unit(self, pipe: SessionPipe, seq: int) -> bytes | None:
        """A stored chunk's unit, read back (blocking: a thread)."""
        row = self.store.chunk_row(pipe.session_id, seq)
        if row is None or not self.store.has_blocks(row):
            return None
        return build_unit(pipe.init, self.store.chunk_runs(pipe.session_id, row))

    def _dispatch(self, pipe: SessionPipe) -> None:
        """The session's next step, one at a time and in index order: a decoder reset after its
        backlog was let go, then the frames sent skipped, then the next unit, then the end."""
        if pipe.in_flight or self.pipes.get(pipe.session_id) is not pipe:
            return
        if pipe.reset:  # its last frames come back, then the worker forgets the session
            pipe.reset = pipe.started = False
            pipe.in_flight = True
            pipe.worker.send(Flush(pipe.session_id, RESET_SEQ))
            return
        if pipe.placeholders:
            frames, pipe.placeholders = pipe.placeholders, []
            pipe.in_flight = True
            reply = Frames(pipe.session_id, SKIPPED_SEQ, frames)
            pipe.delivering = self._tasks.spawn(self._deliver(pipe, reply), f"deliver {pipe.session_id}")
            return
        if not pipe.pending:
            if pipe.finishing:
                pipe.in_flight = True
                pipe.worker.send(Flush(pipe.session_id, FINISHED_SEQ))
            return
        waiting = self._unqueue(pipe)
        analyse = len(pipe.pending) < self.settings.live_queue_units
        opts = {} if pipe.started else pipe.decoder_opts
        pipe.started = True
        pipe.in_flight = True
        pipe.covered = max(pipe.covered, waiting.frames_before + waiting.frames)
        if waiting.unit is None:  # stored, not in memory: read back first
            self._tasks.spawn(self._send_stored(pipe, waiting, analyse, opts), f"read back {pipe.session_id}")
        else:
            pipe.worker.send(AnalyseUnit(pipe.session_id, waiting.seq, waiting.unit, analyse, opts))

    async def _send_stored(self, pipe: SessionPipe, waiting: Waiting, analyse: bool, opts: dict[str, Any]) -> None:
        try:
            unit = await asyncio.to_thread(self._stored_unit, pipe, waiting.seq)
        except (IngestError, OSError) as exc:  # the store away, the session deleted: filled after stop
            log.warning("a stored unit of %s could not be read back for analysis: %s", pipe.session_id, exc)
            unit = None
        if self.pipes.get(pipe.session_id) is not pipe:
            return  # closed meanwhile (deleted, its worker died: re-primed)
        if unit is None:  # its frames skipped; the decoder cannot go on past it: a keyframe is waited for
            pipe.in_flight = False
            pipe.placeholders += waiting.skipped(waiting.frames_before, waiting.frames_before + waiting.frames)
            pipe.acked_at.pop(waiting.seq, None)
            if not pipe.to_keyframe:  # (the units after it as well, up to a keyframe)
                self._let_go(pipe)
            self._dispatch(pipe)
            return
        pipe.worker.send(AnalyseUnit(pipe.session_id, waiting.seq, unit, analyse, opts))

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
        if seq == FINISHED_SEQ:  # flushed: the session is complete
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
        try:
            lease = self.fence(session_id)
        except LeaseLostError:  # another node records it now: its state is that node's to change
            log.info("session %s: a decoding failure after this node lost it; nothing changed here (%s)",
                     session_id, error.message)  # fmt: skip
            if self._close_pipe(pipe):
                pipe.worker.send(Drop(session_id))
            return
        # until the index says failed, chunks still coming open no new pipe (it would decode the
        # stream again from its keyframe and fail twice), and a `stop` starts no fill
        self._failing.add(session_id)
        try:
            self._close_pipe(pipe)
            self.on_failed(session_id, error.message)
            # failed with the frames that decoded: the session's count from now on (if still ours)
            changed = await asyncio.to_thread(self.store.set_state, session_id, "failed", error.message,
                                              failure.frames, lease)  # fmt: skip
        finally:
            self._failing.discard(session_id)
        if not changed:
            log.info("session %s: a decoding failure once it was another node's (or gone); nothing changed (%s)",
                     session_id, error.message)  # fmt: skip
            return
        logging.getLogger("camingest.sessions").warning("session %s failed: %s", session_id, error.message)
        await self._emit_error(session_id, error)

    async def _emit_error(self, session_id: str, error: IngestError) -> None:
        await self.emit("session_error", {"session_id": session_id, **error.to_dict()}, session_id)

    def _close_pipe(self, pipe: SessionPipe) -> bool:
        """Unregister the pipe; False if it was not (already closed, or replaced)."""
        if self.pipes.get(pipe.session_id) is not pipe:
            return False
        del self.pipes[pipe.session_id]
        while pipe.pending:  # its units are let go (stored: a successor reads them back)
            self._unqueue(pipe)
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
        pipe = self.pipes.get(session_id)
        if pipe is not None and pipe.finishing:
            # stopped, its live results still coming (the flush asks for the fill when it ends):
            # work still to come, as a queued fill is; the finalize may end before it
            return {"state": "queued"}
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
