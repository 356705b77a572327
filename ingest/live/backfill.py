"""Filling the frames live analysis skipped, once a session has stopped.

Live analysis skips frames rather than fall behind (pipeline.py), yet whoever opens a
stopped session expects landmarks on every frame. The filler plans batch jobs (ingest/batch/jobs.py)
for only the ranges that hold skipped or missing frames, runs them on the live workers, and
rewrites landmarks.jsonl once, atomically, in index order. Batch jobs start on frames where the
live tracker also runs a full detection, so filled frames equal what live analysis would have
produced. Uploaded videos are filled the same way: all their frames are missing.

Live work goes first: a worker takes a fill job only while it serves no live session and has
nothing in flight. Sessions wait in a FIFO, one entry each; at most ``window`` jobs of the
session being filled are in flight or waiting to be written, so memory stays bounded whatever
the session's length. After a restart, stopped sessions with skipped frames are queued again.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from ingest.analysis.tracker import TrackerSettings
from ingest.batch.jobs import Job, session_jobs
from ingest.exceptions import InvalidMediaError, UndecodableError
from ingest.live.messages import JobFrames, RunJob, WorkerCrashedError
from storage.landmarks import LandmarkCounts
from storage.leases import Lease, LeaseLostError
from storage.store import SessionStore, utc_now

log = logging.getLogger(__name__)
RETRY_S = 10.0  # a fill that failed on the disk (full) is tried again after this long


class FillWorker(Protocol):
    sessions: int  # live sessions assigned to the worker
    outstanding: int  # messages sent that still await their reply

    def send(self, message: Any) -> None: ...


def jobs_to_fill(store: SessionStore, session_id: str, settings: TrackerSettings, analysed_only: bool) -> list[Job]:
    """The jobs covering a stopped session's frames without results (none: nothing to do).
    ``analysed_only``: only if live analysis ran on the session (a restart's sweep must not
    start analysing sessions recorded with analysis off)."""
    row = store.get_row(session_id)
    # analysis ran on a session if its pipe was ever opened (which records the landmarks' meta);
    # a crash right after `stop` can leave no landmarks at all: still filled
    if row["state"] != "stopped" or (analysed_only and store.landmarks_meta(session_id) is None):
        return []
    need, counts = store.scan_landmarks(session_id, row["frames"])
    if need and not analysed_only:
        # asked for (an upload): recorded first, so that a restart's sweep finishes it too
        store.start_landmarks_meta(session_id, {"mode": "fill", **settings.describe()})
    if not need:
        # counters are group-committed without waiting: a crash can leave them behind the file
        if (counts.frames, counts.with_faces, counts.skipped) != (
            row["landmark_frames"], row["face_frames"], row["skipped_frames"]
        ):
            store.reset_landmark_counts(session_id, counts)
        return []
    jobs, i = [], 0
    # one sweep period a job (the shortest that starts on sweeps): a fill redoes whole jobs, and
    # skipped frames are often a few here and there
    for job in session_jobs(store, session_id, settings, max_frames=settings.sweep_every):
        while i < len(need) and need[i] < job.start:
            i += 1
        if i < len(need) and need[i] < job.end:
            jobs.append(job)
    return jobs


class Filler:
    def __init__(
        self,
        store: SessionStore,
        settings: TrackerSettings,
        workers: Sequence[FillWorker],
        on_filled: Callable[[str, LandmarkCounts], Awaitable[None]],
        fence: Callable[[str], Lease | None] = lambda _: None,
    ) -> None:
        """``fence``: the lease a session's state change is conditional on (pipeline.py)."""
        self.store = store
        self.fence = fence
        self.settings = settings
        self.workers = workers
        self.window = 2 * len(workers)
        self.on_filled = on_filled
        # (session_id, analysed_only, retry), one entry per session; retry: a worker crash
        # interrupted this session's fill once already
        self._queue: collections.deque[tuple[str, bool, bool]] = collections.deque()
        self._wake = asyncio.Event()
        self._results: dict[int, asyncio.Future[list[dict[str, Any]]]] = {}
        self._job_ids = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self.current: str | None = None
        self._progress = (0, 0)  # frames of the current session written, to write

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def request(self, session_id: str, analysed_only: bool = False) -> None:
        if not self.pending(session_id):
            self._queue.append((session_id, analysed_only, False))
            self._wake.set()

    def discard(self, session_id: str) -> None:
        """Take a (deleted) session out of the queue; a fill under way fails on its own."""
        self._queue = collections.deque(entry for entry in self._queue if entry[0] != session_id)

    def pending(self, session_id: str) -> bool:
        """Whether the session is queued or being filled."""
        return session_id == self.current or any(entry[0] == session_id for entry in self._queue)

    def status(self, session_id: str) -> dict[str, Any] | None:
        """For the session summary: queued, or filling with frames done/total; None otherwise."""
        if session_id == self.current:
            done, total = self._progress
            return {"state": "filling", "frames_done": done, "frames_total": total}
        if self.pending(session_id):
            return {"state": "queued"}
        return None

    def poke(self) -> None:
        """A worker may have become free."""
        self._wake.set()

    def on_result(self, reply: JobFrames) -> None:
        future = self._results.pop(reply.job_id, None)
        if future is not None and not future.done():
            if reply.failure is None:
                future.set_result(reply.frames)
            else:
                future.set_exception(reply.failure.error())
        self._wake.set()

    async def _sleep(self) -> None:
        self._wake.clear()
        await self._wake.wait()

    async def _run(self) -> None:
        while True:
            while not self._queue:
                await self._sleep()
            self.current, analysed_only, retry = self._queue.popleft()
            try:
                await self._fill(self.current, analysed_only)
            except asyncio.CancelledError:
                raise
            except UndecodableError as exc:  # the video itself: the session fails, as it does live
                try:  # (only while this node holds it: another node's state is that node's)
                    lease = self.fence(self.current)
                    if await asyncio.to_thread(self.store.set_state, self.current, "failed", exc.message,
                                               exc.frames, lease):  # fmt: skip
                        log.warning("session %s failed: %s", self.current, exc.message)
                except LeaseLostError:
                    log.info("session %s: its fill failed after this node lost it: %s", self.current, exc.message)
            except InvalidMediaError as exc:  # the stream itself: no point trying at every restart
                log.warning("the landmarks of %s cannot be completed: %s", self.current, exc.message)
                message = f"landmarks cannot be completed: {exc.message}"
                await asyncio.to_thread(self.store.set_landmarks_error, self.current, message)
            except OSError as exc:  # disk full: the rest go on, this one again once there is space
                log.warning("filling the landmarks of %s failed (%s); again in %g s", self.current, exc, RETRY_S)
                asyncio.get_running_loop().call_later(RETRY_S, self.request, self.current, analysed_only)
            except Exception as exc:  # deleted meanwhile: the rest go on
                log.warning("filling the landmarks of %s failed: %s", self.current, exc)
                if isinstance(exc, WorkerCrashedError) and not retry:  # once: the job itself may be what crashes
                    self._queue.append((self.current, analysed_only, True))
            finally:
                self.current = None

    def _free_worker(self) -> FillWorker | None:
        return next((w for w in self.workers if w.sessions == 0 and w.outstanding == 0), None)

    def _send(self, worker: FillWorker, job: Job) -> asyncio.Future[list[dict[str, Any]]]:
        job_id = next(self._job_ids)
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._results[job_id] = future
        worker.send(RunJob(job_id, job))
        return future

    async def _fill(self, session_id: str, analysed_only: bool) -> None:
        jobs = await asyncio.to_thread(jobs_to_fill, self.store, session_id, self.settings, analysed_only)
        if not jobs:
            return
        rewrite = await asyncio.to_thread(self.store.landmarks_rewrite(session_id).__enter__)  # opened here, closed below
        pending: collections.deque[asyncio.Future[list[dict[str, Any]]]] = collections.deque()
        self._progress = (0, sum(job.end - job.start for job in jobs))
        try:
            queued = iter(jobs)
            job = next(queued, None)
            while job is not None or pending:
                while job is not None and len(pending) < self.window and (worker := self._free_worker()):
                    pending.append(self._send(worker, job))
                    job = next(queued, None)
                if pending and pending[0].done():
                    frames = pending.popleft().result()
                    await asyncio.to_thread(rewrite.write, frames)
                    self._progress = (self._progress[0] + len(frames), self._progress[1])
                    continue
                await self._sleep()
            counts = await asyncio.to_thread(rewrite.commit)
        finally:
            for future in pending:
                future.cancel()
            await asyncio.to_thread(rewrite.close)
        filled = sum(job.end - job.start for job in jobs)
        await asyncio.to_thread(self._record, session_id, counts, filled)
        log.info("filled %d frames of %s", filled, session_id)
        await self.on_filled(session_id, counts)

    def _record(self, session_id: str, counts: LandmarkCounts, filled: int) -> None:
        self.store.update_landmarks_meta(session_id, filled_frames=filled, filled_at=utc_now())
        self.store.reset_landmark_counts(session_id, counts)
