"""The Socket.IO side of PROTOCOL.md: events ``start``, ``chunk``, ``snapshot``, ``stop`` (and the
classic tutorial clients': ``video`` and ``image`` of the Node tutorial, classic.py; ``image``
data URLs and ``catch-frame`` of the lipstick try-on tutorial, classic_images.py).

Every handler returns its ack: ``{"ok": True, ...}`` or ``{"ok": False, "error": {"code",
"message"}}`` with a contract code. Payloads are validated here (payloads.py), before anything
touches a session; slow work (parsing, fsync, image checks) runs in threads, never on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from ingest.exceptions import (
    BadRequestError,
    CapacityError,
    ConflictError,
    GapError,
    IngestError,
    InvalidMediaError,
    SessionClosedError,
    UnauthorizedError,
    UnsupportedError,
    storage_error,
)
from ingest.recording.session import LiveSession
from ingest.server.access import socketio_principal
from ingest.server.classic import ClassicClients
from ingest.server.classic_images import ClassicImages
from ingest.server.context import ServerContext
from ingest.server.payloads import (
    INTERNAL_ACK,
    Ack,
    chunk_request,
    error_ack,
    require_dict,
    snapshot_request,
    start_request,
)
from ingest.server.principals import Principal, check_may_record, check_sees, session_meta, sessions_left
from ingest.server.sio import REFUSED_EVENT
from storage.leases import LeaseLostError
from storage.store import sha256_hex, validate_session_id

log = logging.getLogger(__name__)
sessions_log = logging.getLogger("camingest.sessions")

# Containers a MediaRecorder may produce that the reader handles; MP4 (Safari) is not one yet.
SUPPORTED_MIME_PREFIXES = ("video/webm", "audio/webm", "video/x-matroska", "audio/x-matroska")


class IngestNamespace(socketio.AsyncNamespace):
    """Handlers of the default namespace; all state lives in ``context``, none in globals."""

    def __init__(self, context: ServerContext) -> None:
        super().__init__("/")
        self.context = context
        self.closing = False
        self.classic = ClassicClients(self, context.settings.max_chunk_bytes, self._end_classic_session)
        self.images = ClassicImages(self, context.settings, context.tryon, context.snapshots, context.metrics,
                                    self._end_classic_session)  # fmt: skip
        self.principals: dict[str, Principal] = {}  # who each connection is (resolved at connect)
        self._handling = 0  # events being handled (their acks not yet returned)
        self._drained = asyncio.Event()

    async def answer(self, handler: Callable[[str, dict[str, Any]], Awaitable[Ack]], sid: str, data: object) -> Ack:
        """Run an event's handler and return its ack; errors become error acks."""
        if self.closing:
            return error_ack(CapacityError("the server is shutting down; retry in a moment"))
        self._handling += 1
        try:
            return await handler(sid, require_dict(data))
        except IngestError as exc:
            return error_ack(exc)
        except Exception:
            log.exception("internal error in %s", handler.__name__)
            return dict(INTERNAL_ACK)
        finally:
            self._handling -= 1
            if self.closing and not self._handling:
                self._drained.set()

    async def close(self, timeout: float, reconnect: bool = False) -> None:
        """Shutdown: refuse new events (``busy``), let the ones in hand finish and be acked (at
        most ``timeout`` s), then close every connection: clients resume after a restart."""
        self.closing = True
        if self._handling:
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except TimeoutError:
                log.warning("shutdown: %d events still in hand after %g s", self._handling, timeout)
        eio = self.server.eio
        if eio.sockets and reconnect:
            # several nodes: no goodbye (a client told "disconnect" by its server stays away);
            # the connections simply end, and the clients reconnect to another node and resume
            for socket in list(eio.sockets.values()):
                await socket.close(wait=False, abort=True)
            eio.sockets = {}
        elif eio.sockets:
            count = len(eio.sockets)
            try:
                await asyncio.wait_for(eio.disconnect(), timeout)
            except TimeoutError:  # a client gone without its goodbye, packets still queued for it
                log.warning("shutdown: connections (of %d) not closed after %g s: dropped", count, timeout)
                for socket in list(eio.sockets.values()):
                    await socket.close(wait=False, abort=True)
                eio.sockets = {}

    async def on_start(self, sid: str, data: object = None) -> Ack:
        return await self.answer(self.start, sid, data)

    async def on_chunk(self, sid: str, data: object = None) -> Ack:
        return await self.answer(self.chunk, sid, data)

    async def on_status(self, sid: str, data: object = None) -> Ack:
        return await self.answer(self.status, sid, data)

    async def on_stop(self, sid: str, data: object = None) -> Ack:
        return await self.answer(self.stop, sid, data)

    async def on_snapshot(self, sid: str, data: object = None) -> Ack:
        return await self.answer(self.snapshot, sid, data)

    # -- the classic tutorial clients: `video` and `image` (classic.py), `image` data URLs and
    # `catch-frame` (classic_images.py); no acks -------------------------------------------------
    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event == REFUSED_EVENT:  # its JSON was refused (sio.py): the client is told why
            return await self.refused(*args)
        if len(args) > 2 and event not in ("connect", "disconnect"):  # (the connection, one payload)
            return await self.refused(args[0], {"event": event, "message": f"{event[:40]!r} takes one payload, "
                                                f"got {len(args) - 1}"})  # fmt: skip
        # python-socketio finds a handler by name, `on_` + the event: `catch-frame` has a dash
        return await super().trigger_event("catch_frame" if event == "catch-frame" else event, *args)

    async def refused(self, sid: str, refusal: dict[str, Any]) -> Ack:
        """An event refused before any handler saw it: its ack says why (``bad_request``); the
        classic dialects, which have no acks, get a ``session_error``."""
        error = BadRequestError(refusal["message"])
        if refusal.get("event") in ("video", "image", "catch-frame"):
            await self.emit("session_error", {"session_id": None, **error.to_dict()}, to=sid)
        return error_ack(error)

    async def on_video(self, sid: str, data: object = None) -> None:
        await self.classic.video(sid, data)

    async def on_image(self, sid: str, data: object = None) -> None:
        if isinstance(data, str):
            await self.images.image(sid, data)
        else:
            await self.classic.image(sid, data)

    async def on_catch_frame(self, sid: str, data: object = None) -> None:
        await self.images.catch_frame(sid, data)

    async def _end_classic_session(self, session_id: str) -> None:
        await self.context.lifecycle.end(session_id, "client")

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
        try:
            self.principals[sid] = socketio_principal(self.context.authority, environ, auth)
        except UnauthorizedError as exc:
            raise socketio.exceptions.ConnectionRefusedError(f"unauthorized: {exc.message}") from None
        self.context.lifecycle.connected(sid, self.context.clients.environ_key(environ))

    async def on_disconnect(self, sid: str, reason: object = None) -> None:
        self.principals.pop(sid, None)
        await self.classic.disconnected(sid)  # a classic client's session ends with its connection
        await self.images.disconnected(sid)
        self.context.lifecycle.disconnected(sid)

    # -- helpers ---------------------------------------------------------------------------------
    def _principal(self, sid: str) -> Principal:
        """Who this connection is, its token not revoked since."""
        principal = self.principals.get(sid)
        if principal is None:
            raise UnauthorizedError("this connection has no principal (connect again)")
        self.context.authority.check_live(principal)
        return principal

    async def _session(self, sid: str, payload: dict[str, Any]) -> LiveSession:
        """The session named by the payload, its token checked, this client joined to its room.
        A recorder's principal reaches only its own sessions: another's is unknown to it."""
        session_id = validate_session_id(payload.get("session_id"))
        principal = self._principal(sid)
        if principal.role != "admin":
            loaded = self.context.registry.loaded(session_id)
            owner = loaded.sub if loaded is not None else await asyncio.to_thread(self.context.store.session_sub, session_id)
            check_sees(principal, session_id, owner)
            check_may_record(principal)
        session = await self.context.registry.get(session_id)
        session.check_token(payload.get("token"))
        if self.server.manager.is_connected(sid, "/"):  # (gone meanwhile: what it sent is still stored)
            await self.enter_room(sid, session.id)
        return session

    # -- events ----------------------------------------------------------------------------------
    async def start(self, sid: str, payload: dict[str, Any]) -> Ack:
        request = start_request(payload, self.context.settings.max_meta_bytes)
        resume = request.resume
        if resume is not None:
            session = await self._session(sid, resume)
            await self._check_resume(sid, session.id)
            if session.state == "stopped":
                raise SessionClosedError(f"session {session.id} is stopped")
            if session.state == "failed":
                raise InvalidMediaError(f"session {session.id} failed: {session.error}")
            self.context.lifecycle.hold(sid, session.id)
            log.info("session %s resumed at seq %d", session.id, session.next_seq)
            durable = self.context.store.durable_seq(session.id, session.next_seq - 1)
            return {"ok": True, "session_id": session.id, "token": resume["token"], "next_seq": session.next_seq,
                    "durable_seq": durable}  # fmt: skip

        mime, meta = request.mime, request.meta
        if not mime.lower().startswith(SUPPORTED_MIME_PREFIXES):
            raise UnsupportedError(f"mime {mime!r} is not supported; send WebM or Matroska (video/webm)")
        session, token = await self._open(sid, mime, meta)
        return {"ok": True, "session_id": session.id, "token": token, "next_seq": session.next_seq}

    async def _check_resume(self, sid: str, session_id: str) -> None:
        """A resume with an expired token: only while the recording is live (a chunk within
        session_idle_s), so that a dropped connection carries on; after that, a valid one."""
        principal = self._principal(sid)
        authority = self.context.authority
        if not principal.expired(time.time(), authority.settings.token_leeway_s):
            return
        last = await asyncio.to_thread(self.context.store.last_chunk_at, session_id)
        if last is None or time.time() - last >= self.context.settings.session_idle_s:
            authority.check_unexpired(principal)

    async def _open(self, sid: str, mime: str, meta: dict[str, Any]) -> tuple[LiveSession, str]:
        principal = self._principal(sid)
        check_may_record(principal)
        self.context.authority.check_unexpired(principal)
        self.context.lifecycle.check_room(sid)
        counted = await sessions_left(self.context.store, principal)
        try:
            session, token = await self.context.registry.create(mime, session_meta(principal, meta), principal.sub,
                                                                principal.jti, self.context.lifecycle.client_of(sid))  # fmt: skip
        except BaseException:
            if counted:
                await asyncio.to_thread(self.context.store.tokens.give_back, counted)
            raise
        self.context.lifecycle.hold(sid, session.id)
        log.info("session %s started (%s)", session.id, mime)
        await self.enter_room(sid, session.id)
        self.context.webhooks.session_event("session.started", session.id)
        return session, token

    async def open_session(self, sid: str, mime: str, meta: dict[str, Any]) -> str:
        """A session held by this connection for a classic dialect (no token: the connection is
        its only client); its id."""
        session, _ = await self._open(sid, mime, meta)
        return session.id

    async def chunk(self, sid: str, payload: dict[str, Any]) -> Ack:
        request = chunk_request(payload, self.context.settings.max_chunk_bytes)
        seq, t_ms, data = request.seq, request.t_ms, request.data
        received = time.monotonic()
        session = await self._session(sid, payload)
        context = self.context
        async with session.lock:
            # handed over (or its lease lost) while this chunk waited for the lock: not ours to commit
            context.registry.check_owned(session.id)
            if session.state == "stopped":
                raise SessionClosedError(f"session {session.id} is stopped")
            if session.state == "failed":
                raise InvalidMediaError(f"session {session.id} failed: {session.error}")
            if context.registry.loaded(session.id) is not session:
                # let go while this chunk waited for its lock (its lease lost, handed over, reloaded
                # after an error): this copy is not the session any more, nothing is done with it
                raise CapacityError(f"session {session.id} left this node's hands while chunk {seq} waited; "
                                    "resend it (after a resume)")  # fmt: skip
            if seq < session.next_seq:
                row = await asyncio.to_thread(context.store.chunk_row, session.id, seq)
                same = (
                    row is not None
                    and row["size"] == len(data)
                    and row["sha256"] == await asyncio.to_thread(sha256_hex, data)
                )
                if not same:
                    raise ConflictError(f"seq {seq} is already stored with different bytes")
                durable = context.store.durable_seq(session.id, session.next_seq - 1)
                return {"ok": True, "seq": seq, "next_seq": session.next_seq, "durable_seq": durable}
            if seq > session.next_seq:
                raise GapError(
                    f"seq {seq} is ahead of next_seq {session.next_seq}; resend from there", session.next_seq
                )
            context.registry.check_held(len(data))
            try:
                async with context.write_slots:
                    loop = asyncio.get_running_loop()
                    staged = await loop.run_in_executor(context.io_pool, session.stage_chunk, seq, data, t_ms)
                    # on a cluster conditional on this node's lease, checked by the index in the commit
                    lease = context.registry.fence(session.id)
                    await asyncio.wrap_future(context.store.commit_chunk(staged.record, lease))
            except BaseException as exc:
                # Memory may be ahead of what was committed: drop it, reload from the store.
                context.registry.forget(session.id)
                if isinstance(exc, LeaseLostError) and context.registry.ownership is not None:
                    context.registry.ownership.lost(session.id)
                    context.pipeline.forget(session.id)
                    log.warning("session %s: chunk %d not committed: this node lost its lease (another node owns "
                                "it now); the session is dropped here", session.id, seq)  # fmt: skip
                if isinstance(exc, OSError) and not isinstance(exc, IngestError):  # (busy errors keep their code)
                    log.error("chunk %d of %s not stored: %r", seq, session.id, exc)  # the path: for the operator
                    raise storage_error(exc, "chunk") from exc
                raise
            session.apply(staged)
            context.registry.count_held(session)
            if staged.error is not None:
                sessions_log.warning("session %s failed at chunk %d: %s", session.id, seq, staged.error.message)
                context.webhooks.session_event("session.failed", session.id)
                context.registry.forget(session.id)
                await context.pipeline.fail(session.id, staged.error)
                raise staged.error
            if staged.unit_bytes is not None:
                try:
                    await context.pipeline.submit_chunk(session.id, staged.record, staged.unit_bytes)
                except Exception:  # the chunk is stored: its frames are filled after stop
                    log.exception("chunk %d of %s stored but not queued for analysis", seq, session.id)
            context.lifecycle.hold(sid, session.id)
        context.metrics.chunks.inc()
        context.metrics.chunk_bytes.inc(len(data))
        context.metrics.chunk_ack.observe(time.monotonic() - received)
        durable = context.store.durable_seq(session.id, seq)
        return {"ok": True, "seq": seq, "next_seq": session.next_seq, "durable_seq": durable}

    async def status(self, sid: str, payload: dict[str, Any]) -> Ack:
        """Where the session stands: ``next_seq`` and what is ``durable_seq`` (a client keeping
        chunks until they are durable asks this while it waits)."""
        session = await self._session(sid, payload)
        durable = self.context.store.durable_seq(session.id, session.next_seq - 1)
        return {"ok": True, "state": session.state, "next_seq": session.next_seq, "durable_seq": durable}

    async def stop(self, sid: str, payload: dict[str, Any]) -> Ack:
        session = await self._session(sid, payload)
        return {"ok": True, "session": await self.context.lifecycle.end(session.id, "client")}

    async def snapshot(self, sid: str, payload: dict[str, Any]) -> Ack:
        request = snapshot_request(payload, self.context.settings.max_snapshot_bytes)
        session = await self._session(sid, payload)
        snapshot_id = await self.context.snapshots.store_snapshot(session.id, request.mime, request.data, request.t_ms)
        return {"ok": True, "snapshot_id": snapshot_id}
