"""How recording sessions end: one owner, one path, whatever ends them.

A session ends by the client's ``stop``, by ``camingest close`` (offline), or by idle expiry: its
connection is gone and no chunk came for ``session_idle_s``. Every end goes through
``SessionLifecycle.end``: the index says ``stopped`` with ``ended_by``, the registry lets the
session go (freeing capacity), the pipeline flushes its decoder and fills the frames that have no
landmarks, and the recording is finalized into a seekable file.

It also knows which connection holds which recording sessions (``max_sessions_per_connection``),
so that one client cannot take the capacity everyone shares, and a session whose client vanished
is ended rather than held for ever. After a restart, sessions left ``recording`` by a client that
never came back are found in the index and expire the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ingest.background import BackgroundTasks
from ingest.batch.jobs import finalize_session
from ingest.config import Settings
from ingest.exceptions import CapacityError
from ingest.metrics import Metrics
from ingest.recording.analysis_sink import AnalysisSink
from ingest.recording.session import SessionRegistry
from storage.errors import StoreUnavailableError
from storage.store import SessionStore

log = logging.getLogger("camingest.sessions")
ENDED_BY = ("client", "idle", "close")
FINALIZE_ATTEMPTS, FINALIZE_RETRY_S = 30, 10.0  # a finalize that failed on the disk: 5 minutes of retries


class SessionLifecycle:
    def __init__(
        self,
        settings: Settings,
        store: SessionStore,
        registry: SessionRegistry,
        pipeline: AnalysisSink,
        metrics: Metrics,
        take: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        """``take`` (several nodes): own a session nobody else holds (a dead node's), True if
        this node owns it now; without it this node is the only one and owns everything."""
        self.settings = settings
        self.store = store
        self.registry = registry
        self.pipeline = pipeline
        self.metrics = metrics
        self.background = BackgroundTasks(log)  # finalizes under way
        self._held: dict[str, set[str]] = {}  # connection (sid) -> recording sessions it holds
        self._clients: dict[str, str] = {}  # connection (sid) -> its client key (ingest/server/clients.py)
        self._holder: dict[str, str] = {}  # session id -> the connection holding it
        self._active: dict[str, float] = {}  # session id -> unix time of its last chunk or (re)start
        self._reaper: asyncio.Task[None] | None = None
        self.take = take
        self.finalizing: set[str] = set()  # sessions being remuxed here
        # told of every session this node ended, with its summary (the server's webhooks)
        self.on_ended: Callable[[str, dict[str, Any]], None] | None = None

    # -- connections ----------------------------------------------------------------------------
    def connected(self, sid: str, client: str) -> None:
        """A connection opened; ``client`` is who it is, for the capacity per client."""
        self._clients[sid] = client

    def client_of(self, sid: str) -> str:
        return self._clients.get(sid, "")

    def check_room(self, sid: str) -> None:
        """Before a connection starts another session: ``busy`` beyond the per-connection limit."""
        held = len(self._held.get(sid, ()))
        if held >= self.settings.max_sessions_per_connection:
            raise CapacityError(
                f"this connection is recording {held} sessions, the limit (max_sessions_per_connection) is "
                f"{self.settings.max_sessions_per_connection}; stop one first"
            )

    def hold(self, sid: str, session_id: str) -> None:
        """``sid`` started, resumed or sent to ``session_id``: it holds the session now (unless
        the connection is gone meanwhile: an event of it finished after its disconnect)."""
        self._active[session_id] = time.time()
        if sid not in self._clients:
            return
        previous = self._holder.get(session_id)
        if previous is not None and previous != sid:
            self._held.get(previous, set()).discard(session_id)
        self._holder[session_id] = sid
        self._held.setdefault(sid, set()).add(session_id)
        session = self.registry.loaded(session_id)
        if session is not None:  # its capacity is counted against who holds it now
            session.client = self._clients[sid]

    def disconnected(self, sid: str) -> None:
        """The connection is gone: its sessions expire ``session_idle_s`` after their last chunk
        (and count against its client until then)."""
        self._clients.pop(sid, None)
        for session_id in self._held.pop(sid, set()):
            if self._holder.get(session_id) == sid:
                del self._holder[session_id]

    def forget(self, session_id: str) -> None:
        """The session was deleted: nobody holds it, nothing is to expire or finish."""
        self._release(session_id)
        self.pipeline.forget(session_id)

    def forget_holder(self, session_id: str) -> None:
        """The session left this node (handed over, its lease lost): no connection here holds it."""
        self._release(session_id)

    def _release(self, session_id: str) -> None:
        sid = self._holder.pop(session_id, None)
        if sid is not None:
            self._held.get(sid, set()).discard(session_id)
        self._active.pop(session_id, None)

    # -- ending ---------------------------------------------------------------------------------
    async def end(self, session_id: str, ended_by: str) -> dict[str, Any]:
        """End a recording session (no-op if it is not recording); its summary."""
        assert ended_by in ENDED_BY
        session = self.registry.loaded(session_id)
        async with session.lock if session is not None else contextlib.nullcontext():
            ownership = self.registry.ownership
            lease = ownership.lease(session_id) if ownership is not None else None
            if ownership is not None and lease is None:
                changed = False  # another node records it: it ends it
            else:
                changed = await asyncio.to_thread(self.store.end_session, session_id, ended_by, lease)
            if session is not None and changed:
                session.state = "stopped"
            self.registry.forget(session_id)
            self._release(session_id)
            if changed:
                await self.pipeline.finish(session_id)  # flush, then fill what has no landmarks
                self.finalize_later(session_id)
        if changed:  # the tail goes to object storage now: the answer says whether it got there
            await asyncio.to_thread(self.store.wait_durable, session_id, self.settings.stop_durable_wait_s)
        summary = await asyncio.to_thread(self.store.summary, session_id)
        if changed:
            if self.on_ended is not None:
                self.on_ended(session_id, summary)
            self.metrics.sessions_ended.labels(ended_by).inc()
            log.info(
                "session %s stopped (ended_by=%s): %d chunks, %d bytes, %d frames, %.1f s",
                session_id, ended_by, summary["chunks"], summary["bytes"], summary["frames"],
                summary["duration_ms"] / 1000,
            )  # fmt: skip
        return summary

    async def expire_idle(self) -> list[str]:
        """End every recording session that no connection holds and that got no chunk for
        ``session_idle_s`` (also those left recording before a restart)."""
        activity = await asyncio.to_thread(self.store.recording_activity)
        now, ended = time.time(), []
        for session_id, last in activity.items():
            if session_id in self._holder:
                continue
            last = max(last, self._active.get(session_id, 0.0))
            if now - last >= self.settings.session_idle_s:
                if self.take is not None and not await self.take(session_id):
                    continue  # another node's session: its own reaper ends it
                await self.end(session_id, "idle")
                ended.append(session_id)
        return ended

    def finalize_later(self, session_id: str) -> None:
        """Remux a stopped session into its seekable recording, off the event loop."""

        async def run() -> None:
            try:
                await remux()
            finally:
                self.finalizing.discard(session_id)

        async def remux() -> None:
            for attempt in range(FINALIZE_ATTEMPTS):
                try:
                    if (await asyncio.to_thread(self.store.get_row, session_id))["bytes"] == 0:
                        return  # no stream to remux (a session of snapshots only: a try-on page's)
                    await asyncio.to_thread(finalize_session, self.store, session_id)
                    return
                except (OSError, StoreUnavailableError) as exc:  # the disk (full), the index away: again later
                    log.warning("finalize %s failed (%s); attempt %d of %d", session_id, exc, attempt + 1,
                                FINALIZE_ATTEMPTS)  # fmt: skip
                    await asyncio.sleep(FINALIZE_RETRY_S)
                except Exception as exc:  # recording.webm then stays the stream as sent
                    log.warning("finalize %s failed: %s", session_id, exc)
                    return

        self.finalizing.add(session_id)
        self.background.spawn(run(), f"finalize {session_id}")

    async def recover(self) -> None:
        """After a restart: finalize stopped sessions a crash left without a seekable recording
        (their landmarks are filled by the pipeline's own start-up sweep), and end sessions left
        recording whose clients are gone for good (``expire_idle`` runs at once). Several nodes:
        only what this node can take (``take_unfinished``, again every ``lease_s``)."""
        if self.take is not None:
            await self.take_unfinished()
            return
        for session_id in await asyncio.to_thread(self.store.unfinalized):
            log.info("session %s: finalizing after a restart", session_id)
            self.finalize_later(session_id)

    async def take_unfinished(self) -> None:
        """Stopped sessions whose finalize or fill nobody holds (a dead node's): taken here."""
        assert self.take is not None
        for session_id in await asyncio.to_thread(self.store.orphaned_uploads):
            if await self.take(session_id):  # a dead node's landmarks or recording never uploaded
                log.info("session %s: its derived files are made again here (their node died)", session_id)
                await asyncio.to_thread(self.store.derived_lost, session_id)
        unfinalized = await asyncio.to_thread(self.store.unfinalized)
        to_fill = await asyncio.to_thread(self.store.sessions_to_fill) if self.settings.analysis else []
        for session_id in dict.fromkeys(unfinalized + to_fill):
            if session_id in self.finalizing or self.pipeline.fill_status(session_id) is not None:
                continue
            if not await self.take(session_id):
                continue
            log.info("session %s: taking over its unfinished %s", session_id,
                     "finalize" if session_id in unfinalized else "fill")  # fmt: skip
            if session_id in unfinalized:
                self.finalize_later(session_id)
            if session_id in to_fill:
                self.pipeline.fill(session_id)

    def start(self) -> None:
        self._reaper = self.background.spawn(self._reap(), "idle expiry")

    async def _reap(self) -> None:
        interval = min(10.0, max(self.settings.session_idle_s / 4, 0.2))
        while True:
            try:
                await self.expire_idle()
            except Exception:  # logged, and tried again at the next pass: the reaper never dies
                log.exception("idle expiry failed")
            await asyncio.sleep(interval)

    async def close(self, grace_s: float) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self.background.wait(grace_s)  # let running finalizes complete: they are atomic anyway
