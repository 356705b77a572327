"""Batch re-processing on this machine: every frame of stored sessions landmarked on all cores.

Results are written in index order to a temporary file that replaces landmarks.jsonl only when
complete: an interrupted run leaves the previous landmarks as they were.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
from collections.abc import Callable, Iterator
from typing import Any

from ingest.analysis.process import prepare_analysis_process
from ingest.analysis.tracker import TrackerSettings
from ingest.background import exit_with_parent
from ingest.batch.jobs import Job, finalize_session, landmark_runs_encoded, read_runs, session_jobs
from ingest.exceptions import IngestError, InvalidMediaError, SessionClosedError, UndecodableError
from storage.landmarks import EncodedFrames, LandmarkCounts
from storage.store import SessionStore, utc_now

# progress reports (job number, frames) waiting for the main process; beyond, they are dropped:
# a job's frames are counted in full when its result arrives anyway
PROGRESS_QUEUE = 10_000
PROGRESS_POLL_S = 0.1
JobProgress = Callable[[int, int], None]  # (job number in the run, frames landmarked)
_reports: Any = None  # in a pool worker: where it reports frames done


def _start_worker(engine: str, reports: Any) -> None:
    global _reports
    _reports = reports
    exit_with_parent()  # a killed command's pool workers do not go on alone
    prepare_analysis_process(engine)


def _report(number: int, frames: int) -> None:
    with contextlib.suppress(queue.Full):
        _reports.put_nowait((number, frames))


def _run_numbered(item: tuple[int, Job]) -> EncodedFrames | BaseException:
    """In a pool worker: job ``number``'s frames (encoded here: the main process only writes
    them), reported as they are landmarked; the job's own error (its stream) as a value, so
    that only its session fails."""
    number, job = item
    try:
        return landmark_runs_encoded(job, read_runs(job), lambda n: _report(number, n))
    except (IngestError, OSError) as exc:
        return exc


class Reprocessor:
    """Re-landmark sessions with a pool of ``workers`` processes (kept across sessions)."""

    def __init__(self, store: SessionStore, settings: TrackerSettings, workers: int) -> None:
        self.store = store
        self.settings = settings
        self.workers = workers
        self._pool: Any = None
        self._reports: Any = None

    def __enter__(self) -> Reprocessor:
        ctx = multiprocessing.get_context("spawn")
        self._reports = ctx.Queue(PROGRESS_QUEUE)
        self._pool = ctx.Pool(self.workers, initializer=_start_worker, initargs=(self.settings.engine, self._reports))
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self._pool.close()
        else:
            self._pool.terminate()
        self._pool.join()
        self._reports.close()  # the workers are gone: what they reported last is not wanted

    def jobs(self, session_id: str, progress: Callable[[int], None] | None = None) -> list[Job]:
        """The session's jobs; ``progress`` hears the bytes of its stream read to plan them."""
        row = self.store.get_row(session_id)
        if row["state"] == "recording":
            raise SessionClosedError(f"session {session_id} is still recording; stop it first")
        return session_jobs(self.store, session_id, self.settings, progress)

    def run(self, session_id: str, jobs: list[Job], progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
        ((_, result),) = self.run_many([(session_id, jobs)], progress)
        return result

    def run_many(
        self, plan: list[tuple[str, list[Job]]], progress: Callable[[int], None] = lambda n: None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Re-landmark several sessions in one pass over the pool: jobs of the next session start
        while the last ones of this session finish, so no worker waits at session boundaries
        (a short session is one or two jobs of unequal length). Yields (session id, result) as
        each session is committed, in plan order. ``progress`` hears frames as workers landmark
        them (where the executor reports them), the rest of a job's when its result arrives."""
        jobs = [job for _, jobs_of_session in plan for job in jobs_of_session]
        reported: dict[int, int] = {}  # job number -> frames reported, until its result arrives
        finished: set[int] = set()

        def partial(number: int, frames: int) -> None:
            if number not in finished:
                reported[number] = reported.get(number, 0) + frames
                progress(frames)

        results = self._results(jobs, partial)  # in job order
        numbers = iter(range(len(jobs)))
        try:
            for session_id, jobs_of_session in plan:
                failure: BaseException | None = None
                with self.store.landmarks_rewrite(session_id) as rewrite:
                    for job in jobs_of_session:
                        batch = next(results)
                        number = next(numbers)
                        finished.add(number)
                        progress(job.end - job.start - reported.pop(number, 0))
                        if isinstance(batch, BaseException):  # this session only: the others go on
                            failure = failure or batch
                            continue
                        if failure is None:
                            rewrite.write(batch)
                    if failure is None:
                        counts = rewrite.commit()
                if failure is not None:  # never committed: the previous landmarks stay
                    self._record_failure(session_id, failure)
                    yield session_id, {"error": str(failure)}
                    continue
                yield session_id, self._finish(session_id, counts)
        finally:  # an interrupted run stops the executor's work now, not when collected
            close = getattr(results, "close", None)
            if close is not None:
                close()

    def _results(self, jobs: list[Job], partial: JobProgress) -> Iterator[list[dict[str, Any]] | EncodedFrames | BaseException]:
        """Each job's frames, in job order (an exception in place of a job whose input could not
        be read, where the executor can tell); ``partial`` hears frames of jobs under way.
        Local worker processes here, polled so that their reports are heard while waiting."""
        results = self._pool.imap(_run_numbered, enumerate(jobs))
        while True:
            try:
                result = results.next(timeout=PROGRESS_POLL_S)
            except multiprocessing.TimeoutError:
                self._drain(partial)
                continue
            except StopIteration:
                return
            self._drain(partial)
            yield result

    def _drain(self, partial: JobProgress) -> None:
        while True:
            try:
                number, frames = self._reports.get_nowait()
            except queue.Empty:
                return
            partial(number, frames)

    def _record_failure(self, session_id: str, failure: BaseException) -> None:
        """A stream's own failure, in its summary as live analysis or a fill would say it: a
        video that does not decode fails the session; other reasons are its landmarks_error."""
        if isinstance(failure, UndecodableError):
            self.store.set_state(session_id, "failed", failure.message, failure.frames)
        elif isinstance(failure, InvalidMediaError):
            self.store.set_landmarks_error(session_id, f"landmarks cannot be completed: {failure.message}")

    def describe(self) -> dict[str, Any]:
        return {"workers": self.workers}

    def _finish(self, session_id: str, counts: LandmarkCounts) -> dict[str, Any]:
        meta = {"mode": "batch", **self.describe(), "finished_at": utc_now(),
                **self.settings.for_session(session_id).describe()}  # fmt: skip
        self.store.write_landmarks_meta(session_id, meta)
        self.store.reset_landmark_counts(session_id, counts)
        self.store.set_landmarks_error(session_id, None)  # complete now, whatever a fill said before
        if not self.store.is_finalized(session_id) and self.store.get_row(session_id)["state"] == "stopped":
            finalize_session(self.store, session_id)
        self.store.publish(session_id)  # with object storage: the results reach it before this command ends
        return {"frames": counts.frames, "frames_with_faces": counts.with_faces}
