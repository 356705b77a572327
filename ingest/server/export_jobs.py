"""Exports made by the server for the sessions page (``/api/sessions/{id}/exports``).

An export is the session re-encoded with an overlay (ingest/media/render.py), kept by the store
beside the session (``<overlay>.<format>``) until it or the session is deleted. One encoding runs
at a time (it takes a core for roughly the recording's duration); a second request while one runs
is answered ``busy``. An encoding is cancelled by ``DELETE`` on its export, and after
``max_export_s`` by itself, so no one can hold the one slot for long. The encoding runs in this
object's one thread; this object owns its state. An export being encoded is recorded by the store
until it ends, so that one a crash or a shutdown interrupted is encoded again at the next start
(``resume``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ingest.background import BackgroundTasks
from ingest.exceptions import CapacityError, IngestError, NotFoundError, SessionClosedError
from ingest.media.overlay import OVERLAYS, check_overlay
from ingest.media.render import FORMATS, check_format, render
from storage.store import SessionStore

log = logging.getLogger(__name__)
MAX_REMEMBERED = 256  # outcomes of exports kept for the pages (failures mostly)


class ExportCancelledError(Exception):
    pass


class ExportTimeoutError(Exception):
    pass


@dataclass
class ExportJob:
    session_id: str
    overlay: str
    format: str
    frames_total: int
    frames_done: int = 0
    state: str = "running"  # running | done | failed
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def describe(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "overlay": self.overlay,
            "format": self.format,
            "state": self.state,
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
        }
        if self.state == "done":
            result["url"] = export_url(self.session_id, self.overlay, self.format)
        if self.error:
            result["error"] = self.error
        return result


def export_url(session_id: str, overlay: str, fmt: str) -> str:
    return f"/api/sessions/{session_id}/exports/{overlay}.{fmt}"


def export_name(overlay: str, fmt: str) -> str:
    """The file an export is kept as, its choices checked first."""
    return f"{check_overlay(overlay)}.{check_format(fmt)}"


class ExportJobs:
    def __init__(self, store: SessionStore, max_s: float = 3600.0) -> None:
        self.store = store
        self.max_s = max_s  # max_export_s
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="export")
        self._running: ExportJob | None = None
        # the last outcome per (session, overlay, format) while the server runs: failures are
        # shown to the page; finished files are found in the store after a restart too
        self._last: dict[tuple[str, str, str], ExportJob] = {}
        self.on_done: Callable[[ExportJob], None] | None = None  # an export finished (the webhooks)
        # exports a crash interrupted, waiting to be encoded again (listed as running)
        self._interrupted: collections.deque[tuple[str, str, str]] = collections.deque()
        # the interrupted export being started: listed as running until start() records it (it
        # awaits the store first, and a page listing the exports then must not see it vanish)
        self._resuming: tuple[str, str, str] | None = None
        self._tasks = BackgroundTasks(log)
        self._closing = False
        self._stopped_waiters: list[asyncio.Event] = []  # DELETEs waiting for the encoding to stop

    def list(self, session_id: str) -> list[dict[str, Any]]:
        """Blocking (the store is read): call it from a thread."""
        self.store.get_row(session_id)  # unknown_session
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for name, size in self.store.export_files(session_id):
            overlay, _, fmt = name.partition(".")
            if overlay in OVERLAYS and fmt in FORMATS:
                found[(overlay, fmt)] = {"overlay": overlay, "format": fmt, "state": "done", "bytes": size,
                                         "url": export_url(session_id, overlay, fmt)}  # fmt: skip
        for (sid, overlay, fmt), job in list(self._last.items()):
            if sid == session_id and (job.state != "done" or (overlay, fmt) not in found):
                found[(overlay, fmt)] = job.describe()
        waiting = list(self._interrupted) + ([self._resuming] if self._resuming else [])
        for sid, overlay, fmt in waiting:
            if sid == session_id:
                found[(overlay, fmt)] = ExportJob(sid, overlay, fmt, frames_total=0).describe()
        return list(found.values())

    async def start(self, session_id: str, overlay: str, fmt: str) -> dict[str, Any]:
        export_name(overlay, fmt)
        row = await asyncio.to_thread(self.store.get_row, session_id)
        if row["state"] == "recording":
            raise SessionClosedError("the session is still recording: stop it, then export")
        if self._running is not None:
            running = self._running
            if (running.session_id, running.overlay, running.format) == (session_id, overlay, fmt):
                return running.describe()
            raise CapacityError("another export is being encoded; try again when it is done")
        job = ExportJob(session_id, overlay, fmt, frames_total=row["frames"])
        self._running = self._last[(session_id, overlay, fmt)] = job
        while len(self._last) > MAX_REMEMBERED:  # oldest first (dicts keep insertion order)
            del self._last[next(iter(self._last))]
        asyncio.get_running_loop().run_in_executor(self._pool, self._encode, job).add_done_callback(
            lambda _: self._finished(job)
        )
        return job.describe()

    def _encode(self, job: ExportJob) -> None:
        deadline = time.monotonic() + self.max_s

        def progress(n: int) -> None:
            if job.cancel.is_set():
                raise ExportCancelledError
            if time.monotonic() > deadline:
                raise ExportTimeoutError
            job.frames_done += n

        name = export_name(job.overlay, job.format)
        try:
            job.frames_done = 0
            self.store.want_export(job.session_id, name)  # a restart after a crash encodes it again
            source = self.store.stream_source(job.session_id)
            faces = self.store.landmark_tail(job.session_id).refresh().faces if job.overlay != "none" else {}
            with self.store.export_target(job.session_id, export_name(job.overlay, job.format)) as target:
                render(source.path, target, job.format, job.overlay, faces, progress)
            job.state = "done"
        except ExportCancelledError:
            job.state, job.error = "failed", "the export was cancelled"
        except ExportTimeoutError:
            job.state, job.error = "failed", (f"the export took longer than {self.max_s:g} s (max_export_s) and was "
                                              f"cancelled after {job.frames_done} of {job.frames_total} frames")  # fmt: skip
        except IngestError as exc:
            job.state, job.error = "failed", exc.message
        except OSError as exc:  # the operator gets the path, the page the reason
            log.warning("export of %s failed: %s", job.session_id, exc)
            job.state, job.error = "failed", f"the export could not be written: {exc.strerror or 'I/O error'}"
        except Exception:
            log.exception("export of %s failed", job.session_id)
            job.state, job.error = "failed", "the export failed (see the server's log)"
        if not (job.state == "failed" and job.cancel.is_set() and self._closing):
            try:  # ended: done, failed, or cancelled by a deletion (not by the shutdown)
                self.store.export_ended(job.session_id, name)
            except OSError as exc:
                log.warning("export of %s: its marker could not be removed: %s", job.session_id, exc)

    def _finished(self, job: ExportJob) -> None:
        if self._running is job:
            self._running = None
        for waiter in self._stopped_waiters:
            waiter.set()
        self._stopped_waiters.clear()
        if job.state == "done":
            self._last.pop((job.session_id, job.overlay, job.format), None)
            if self.on_done is not None:
                self.on_done(job)
        self._start_interrupted()

    async def resume(self) -> None:
        """At start-up: exports a crash (or a shutdown) interrupted are encoded again, one after
        another; they are listed as running meanwhile."""
        for session_id, name in await asyncio.to_thread(self.store.wanted_exports):
            overlay, _, fmt = name.partition(".")
            if overlay in OVERLAYS and fmt in FORMATS:
                log.info("recovery: %s: encoding its export %s again (a restart interrupted it)", session_id, name)
                self._interrupted.append((session_id, overlay, fmt))
            else:
                await asyncio.to_thread(self.store.export_ended, session_id, name)
        self._start_interrupted()

    def _start_interrupted(self) -> None:
        if self._running is not None or self._resuming is not None or self._closing or not self._interrupted:
            return
        session_id, overlay, fmt = self._resuming = self._interrupted.popleft()
        self._tasks.spawn(self._resume_one(session_id, overlay, fmt), f"export {overlay}.{fmt} of {session_id} again")

    async def _resume_one(self, session_id: str, overlay: str, fmt: str) -> None:
        try:
            await self.start(session_id, overlay, fmt)
        except CapacityError:  # another export started first: this one waits for it to end
            self._interrupted.appendleft((session_id, overlay, fmt))
        except IngestError as exc:  # deleted meanwhile
            log.warning("recovery: export %s.%s of %s not encoded again: %s", overlay, fmt, session_id, exc.message)
            await asyncio.to_thread(self.store.export_ended, session_id, f"{overlay}.{fmt}")
        else:
            return
        finally:  # started (it is in _last now), put back, or given up
            self._resuming = None
        self._start_interrupted()

    async def cancel(self, session_id: str, overlay: str, fmt: str) -> dict[str, Any]:
        """``DELETE`` on an export: its encoding cancelled (answered once it stopped), or its
        finished file removed; ``unknown`` if there is neither."""
        name = export_name(overlay, fmt)
        await asyncio.to_thread(self.store.get_row, session_id)  # unknown_session
        running = self._running
        if running is not None and (running.session_id, running.overlay, running.format) == (session_id, overlay, fmt):
            running.cancel.set()
            stopped = asyncio.Event()
            self._stopped_waiters.append(stopped)
            await stopped.wait()  # (the encoder looks at its flag every frame)
            return running.describe()
        if await asyncio.to_thread(self.store.delete_export, session_id, name):
            self._last.pop((session_id, overlay, fmt), None)
            return {"overlay": overlay, "format": fmt, "state": "deleted"}
        raise NotFoundError(f"no {overlay} export as {fmt} of session {session_id} is being encoded or kept")

    def forget(self, session_id: str) -> None:
        """The session is being deleted: stop its encoding, drop its state."""
        if self._running is not None and self._running.session_id == session_id:
            self._running.cancel.set()
        for key in [k for k in self._last if k[0] == session_id]:
            del self._last[key]
        for entry in [e for e in self._interrupted if e[0] == session_id]:
            self._interrupted.remove(entry)

    def close(self) -> None:
        self._closing = True  # an export cancelled by the shutdown stays wanted: the next start encodes it
        if self._running is not None:
            self._running.cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
