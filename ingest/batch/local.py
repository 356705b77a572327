"""Batch re-processing on this machine: every frame of stored sessions landmarked on all cores.

Results are written in index order to a temporary file that replaces landmarks.jsonl only when
complete: an interrupted run leaves the previous landmarks as they were.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

from ingest.analysis.process import prepare_analysis_process
from ingest.analysis.tracker import TrackerSettings
from ingest.batch.jobs import Job, finalize_session, run_job_or_error, session_jobs
from ingest.exceptions import InvalidMediaError, SessionClosedError, UndecodableError
from storage.landmarks import LandmarkCounts
from storage.store import SessionStore, utc_now


class Reprocessor:
    """Re-landmark sessions with a pool of ``workers`` processes (kept across sessions)."""

    def __init__(self, store: SessionStore, settings: TrackerSettings, workers: int) -> None:
        self.store = store
        self.settings = settings
        self.workers = workers
        self._pool: Any = None

    def __enter__(self) -> Reprocessor:
        ctx = multiprocessing.get_context("spawn")
        self._pool = ctx.Pool(self.workers, initializer=prepare_analysis_process, initargs=(self.settings.engine,))
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
        return session_jobs(self.store, session_id, self.settings)

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
        jobs = [job for _, jobs_of_session in plan for job in jobs_of_session]
        results = self._results(jobs)  # in job order
        try:
            for session_id, jobs_of_session in plan:
                failure: BaseException | None = None
                with self.store.landmarks_rewrite(session_id) as rewrite:
                    for job in jobs_of_session:
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
                    self._record_failure(session_id, failure)
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
        return self._pool.imap(run_job_or_error, jobs)

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
        meta = {"mode": "batch", **self.describe(), "finished_at": utc_now(), **self.settings.describe()}
        self.store.write_landmarks_meta(session_id, meta)
        self.store.reset_landmark_counts(session_id, counts)
        self.store.set_landmarks_error(session_id, None)  # complete now, whatever a fill said before
        if not self.store.is_finalized(session_id) and self.store.get_row(session_id)["state"] == "stopped":
            finalize_session(self.store, session_id)
        return {"frames": counts.frames, "frames_with_faces": counts.with_faces}
