"""Live analysis: committed chunks -> worker processes -> landmarks back to the page and to disk.

Per session, units wait in a queue of at most ``live_queue_units``; one unit per session is in
flight at a time, so sessions share the workers fairly (a worker serves its sessions in arrival
order). When a session's queue is over the limit, the unit sent next is decoded but not
landmarked: its frames come back ``skipped`` at once instead of lag and memory growing; batch
re-processing fills them later. Decoding never skips: every frame is needed for the next.

After a restart, a session's decoder is rebuilt from the last keyframe at or before the first
frame without landmarks, from the stored stream; frames already landmarked are decoded for state
but not sent again. A worker that dies is replaced the same way: a new process takes its slot
and its sessions are re-primed from the store, so no frame is lost or landmarked twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import socketio

from ingest.config import Settings
from ingest.exceptions import CapacityError, IngestError, InvalidMediaError
from ingest.fill import Filler
from ingest.landmarks import TrackerSettings
from ingest.metrics import Metrics
from ingest.webm import build_unit
from ingest.worker_protocol import (
    CRASHED,
    AnalyseImage,
    AnalyseUnit,
    Drop,
    Exit,
    Flush,
    Frames,
    ImageFaces,
    JobFrames,
    Reply,
    Request,
    RunJob,
    answered,
)
from ingest.workers import worker_main
from storage.landmarks import LandmarkCounts, append_frames, count_frames
from storage.store import SessionStore

if TYPE_CHECKING:
    from ingest.session import LiveSession, SessionRegistry, StagedChunk
    from ingest.snapshots import SnapshotService

log = logging.getLogger(__name__)
# a session is re-primed on a new worker this many times; after that its analysis stops (the
# recording itself goes on: chunks are stored and acked as always)
MAX_CRASHES_PER_SESSION = 2
SNAPSHOT_UPSAMPLE = 1  # snapshots get full detection at upsample 1: one image, accuracy first
# how long snapshots wait for a worker without live sessions before one that has some takes them
SNAPSHOT_PATIENCE_S = 2.0


def tracker_settings(settings: Settings) -> TrackerSettings:
    return TrackerSettings(
        detect_every=settings.detect_every,
        anchor_every=settings.anchor_every,
        sweep_every=settings.sweep_every,
        upsample=settings.detect_upsample,
        engine=settings.landmark_engine,
        identify_every=settings.identify_every,
        identity_threshold=settings.identity_threshold,
        identify_share=settings.identify_share,
        gallery_data_dir=str(settings.data_dir),
    )


class WorkerHandle:
    """One worker process, with a sender and a receiver thread so the event loop never blocks
    on a pipe."""

    def __init__(
        self, index: int, settings: Settings, loop: asyncio.AbstractEventLoop, on_message: Any, on_exit: Any
    ) -> None:
        ctx = multiprocessing.get_context("spawn")  # the server has threads: never fork it
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=worker_main,
            args=(child, tracker_settings(settings), SNAPSHOT_UPSAMPLE),
            name=f"camingest-worker-{index}",
            daemon=True,
        )
        self.process.start()
        child.close()
        self.index = index
        self.sessions = 0  # live sessions assigned (sticky)
        self.outstanding = 0  # messages sent whose reply has not come back (event-loop thread only)
        # snapshots and fill jobs sent, not answered, by key: failed with CRASHED if the worker dies
        self.awaiting: dict[tuple[str, int], AnalyseImage | RunJob] = {}
        self.closing = False
        self._exit_sent = False
        self._on_exit = on_exit
        # bounded by construction: at most one unit per session plus pending snapshots
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._loop = loop
        self._on_message = on_message
        threading.Thread(target=self._send_loop, name=f"worker-{index}-send", daemon=True).start()
        threading.Thread(target=self._recv_loop, name=f"worker-{index}-recv", daemon=True).start()

    def send(self, request: Request) -> None:
        if answered(request):
            self.outstanding += 1
            if isinstance(request, AnalyseImage | RunJob):
                self.awaiting[request.key] = request
        self._outbox.put_nowait(request)

    def _send_loop(self) -> None:
        while True:
            message = self._outbox.get()
            try:
                self.conn.send(message)
            except (BrokenPipeError, OSError):
                return
            if isinstance(message, Exit):
                return

    def _recv_loop(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):  # the process ended: killed, crashed, or closed by us
                if not self.closing:
                    self.process.join(5)  # reaped, for its exit code (this thread, not the loop)
                    with contextlib.suppress(RuntimeError):
                        self._loop.call_soon_threadsafe(self._on_exit, self)
                return
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                self._loop.call_soon_threadsafe(self._on_message, self, message)

    def request_exit(self) -> None:
        self.closing = True
        if not self._exit_sent:  # once: the sender thread ends with it
            self._exit_sent = True
            self.send(Exit())

    def close(self, timeout: float = 5.0) -> None:
        self.request_exit()
        self.process.join(timeout)
        if self.process.is_alive():  # stuck in native code; it ignores SIGTERM (ingest/workers.py)
            self.process.kill()
            self.process.join(timeout)


@dataclass
class SessionPipe:
    session_id: str
    worker: WorkerHandle
    landmarks: Path
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
    def __init__(self, settings: Settings, store: SessionStore, sio: socketio.AsyncServer, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.sio = sio
        self.registry: SessionRegistry | None = None
        loop = asyncio.get_running_loop()
        count = settings.workers or os.cpu_count() or 1
        self.workers = [self._start_worker(i, loop) for i in range(count)]
        self.pipes: dict[str, SessionPipe] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._images: dict[int, asyncio.Future[list[dict[str, Any]]]] = {}
        self._image_queue: collections.deque[tuple[int, str, float]] = collections.deque()  # id, path, queued at
        self._image_timer: asyncio.TimerHandle | None = None
        self._image_ids = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.filler = Filler(store, tracker_settings(settings), self.workers, self._filled)
        self.filler.start()
        self._spawn(self._refill_after_restart())

    def _start_worker(self, index: int, loop: asyncio.AbstractEventLoop) -> WorkerHandle:
        return WorkerHandle(index, self.settings, loop, self._on_message, self._worker_exited)

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
            self._spawn(self._reopen(pipe))

    async def _reopen(self, old: SessionPipe) -> None:
        if old.delivering is not None:  # results received before the crash are written first
            await asyncio.gather(old.delivering, return_exceptions=True)
        if old.crashes + 1 > MAX_CRASHES_PER_SESSION:  # the stream itself may be what kills them
            log.error("stopped analysing %s: %d workers died on it", old.session_id, old.crashes + 1)
            await self._emit_error(old.session_id, IngestError(f"{CRASHED.message} on this stream; analysis stopped"))
            return
        pipe = await self._open(old.session_id, None, 1)
        pipe.finishing = pipe.finishing or old.finishing
        pipe.skipped += old.skipped
        pipe.crashes = old.crashes + 1
        self._dispatch(pipe)

    def attach(self, registry: SessionRegistry, snapshots: SnapshotService) -> None:
        self.registry = registry
        snapshots.analyse = self.analyse_image
        snapshots.emit = self.emit

    async def emit(self, event: str, data: dict[str, Any], room: str) -> None:
        await self.sio.emit(event, data, room=room)

    # -- chunks ----------------------------------------------------------------------------------
    async def submit_chunk(self, session: LiveSession, staged: StagedChunk) -> None:
        if staged.unit_bytes is None:
            return
        pipe = self.pipes.get(session.id) or await self._open(session.id, staged.seq, staged.frames_before)
        if staged.seq <= pipe.primed_through:
            return  # already queued from the store (a pipe re-opened after a worker crash)
        pipe.pending.append((staged.seq, staged.unit_bytes))
        pipe.acked_at[staged.seq] = time.monotonic()  # acked right after this: the lag's start
        self._dispatch(pipe)

    async def _open(self, session_id: str, seq: int | None, frames_before: int) -> SessionPipe:
        lock = self._opening.setdefault(session_id, asyncio.Lock())
        async with lock:
            pipe = self.pipes.get(session_id)
            if pipe is None:
                pipe = await asyncio.to_thread(self._prepare, session_id, seq, frames_before)
                pipe.worker.sessions += 1
                self.pipes[session_id] = pipe
        self._opening.pop(session_id, None)
        return pipe

    def _prepare(self, session_id: str, seq: int | None, frames_before: int) -> SessionPipe:
        """A pipe for a session this process has not analysed yet: fresh, or resumed after a
        restart or a worker crash (then primed with the stored units before ``seq``, all of
        them if None, from a keyframe on)."""
        paths = self.store.paths(session_id)
        meta = paths.root / "landmarks.meta.json"
        if not meta.exists():
            meta.write_text(json.dumps({"mode": "live", **tracker_settings(self.settings).describe()}))
        done = count_frames(paths.landmarks)
        worker = min(self.workers, key=lambda w: w.sessions)
        pipe = SessionPipe(session_id, worker, paths.landmarks, {})
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
            if row["units"] != "[]":
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

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_message(self, worker: WorkerHandle, reply: Reply) -> None:
        worker.outstanding -= 1
        self._dispatch_images()  # snapshots first: they were waiting for an idle worker already
        self.filler.poke()
        if isinstance(reply, Frames):
            if (pipe := self.pipes.get(reply.session_id)) is not None:
                pipe.delivering = self._spawn(self._deliver(pipe, reply))
        elif isinstance(reply, JobFrames):
            worker.awaiting.pop(reply.key, None)
            self.filler.on_result(reply)
        elif isinstance(reply, ImageFaces):
            worker.awaiting.pop(reply.key, None)
            future = self._images.pop(reply.request_id, None)
            if future is not None and not future.done():
                if reply.failure is not None:
                    future.set_exception(reply.failure.error())
                else:
                    future.set_result(reply.faces)

    async def _deliver(self, pipe: SessionPipe, reply: Frames) -> None:
        session_id, seq, frames = pipe.session_id, reply.seq, reply.frames
        if reply.failure is not None:
            await self._fail_decoding(pipe, reply.failure.message)
            return
        if frames:
            try:
                await asyncio.to_thread(append_frames, pipe.landmarks, frames)
            except OSError as exc:  # disk full: the page still gets them; stored by the fill after stop
                log.warning("landmarks of %d frames of %s not stored: %s", len(frames), session_id, exc)
                pipe.skipped += len(frames)
            else:
                counts = LandmarkCounts.of(frames)
                pipe.skipped += counts.skipped
                self.store.count_landmarks(session_id, counts)
                self.metrics.frames_analysed.inc(counts.frames - counts.skipped)
                self.metrics.frames_skipped.inc(counts.skipped)
            await self.emit("landmarks", {"session_id": session_id, "frames": frames}, session_id)
        acked = pipe.acked_at.pop(seq, None)
        if acked is not None:
            self.metrics.landmark_lag.observe(time.monotonic() - acked)
        pipe.in_flight = False
        if seq == -1:  # flushed: the session is complete
            # (a pipe already closed was replaced after a worker crash: its successor finishes)
            if self._close_pipe(pipe) and pipe.skipped:
                self.filler.request(session_id)
            return
        self._dispatch(pipe)

    async def _fail_decoding(self, pipe: SessionPipe, message: str) -> None:
        self._close_pipe(pipe)
        error = InvalidMediaError(f"the video cannot be decoded: {message}")
        logging.getLogger("camingest.sessions").warning("session %s failed: %s", pipe.session_id, error.message)
        await asyncio.to_thread(self.store.set_state, pipe.session_id, "failed", error.message)
        if self.registry is not None:
            self.registry.mark_failed(pipe.session_id, error.message)
        await self._emit_error(pipe.session_id, error)

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
    async def analyse_image(self, path: Path) -> list[dict[str, Any]]:
        """Faces of a stored snapshot. Snapshots wait in their own bounded lane and go to a
        worker only when it has nothing in hand, so a flood of them never delays live frames."""
        if len(self._image_queue) >= self.settings.max_snapshot_queue:
            raise CapacityError(
                f"{len(self._image_queue)} snapshots wait for analysis (max_snapshot_queue); "
                "this one is stored, not analysed"
            )
        request_id = next(self._image_ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[dict[str, Any]]] = loop.create_future()
        self._images[request_id] = future
        self._image_queue.append((request_id, str(path), loop.time()))
        self._dispatch_images()
        return await future

    def _dispatch_images(self) -> None:
        """Snapshots go to a worker with nothing in hand and no live session; to one that serves
        live sessions only once the oldest has waited SNAPSHOT_PATIENCE_S (between two units)."""
        loop = asyncio.get_running_loop()
        while self._image_queue:
            idle = [w for w in self.workers if w.outstanding == 0 and not w.closing]
            worker = next((w for w in idle if w.sessions == 0), None)
            waited = loop.time() - self._image_queue[0][2]
            if worker is None and idle and waited >= SNAPSHOT_PATIENCE_S:
                worker = idle[0]
            if worker is None:  # again when a worker answers (_on_message), or when patience ends
                if idle and self._image_timer is None:
                    self._image_timer = loop.call_later(SNAPSHOT_PATIENCE_S - waited, self._image_patience_over)
                return
            request_id, path, _ = self._image_queue.popleft()
            worker.send(AnalyseImage(request_id, path, self.settings.max_snapshot_analysis_pixels))

    def snapshots_waiting(self) -> int:
        return len(self._image_queue)

    def _image_patience_over(self) -> None:
        self._image_timer = None
        self._dispatch_images()

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
        for task in list(self._tasks):
            task.cancel()
        for worker in self.workers:  # all told first: they exit side by side, not one after another
            worker.request_exit()
        await asyncio.to_thread(lambda: [w.close() for w in self.workers])
        if self._image_timer is not None:
            self._image_timer.cancel()
        for future in self._images.values():
            future.cancel()
