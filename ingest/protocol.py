"""The Socket.IO side of PROTOCOL.md: events ``start``, ``chunk``, ``snapshot``, ``stop``.

Every handler returns its ack: ``{"ok": True, ...}`` or ``{"ok": False, "error": {"code",
"message"}}`` with a contract code. Payloads are validated here, before anything touches a
session; slow work (parsing, fsync, image checks) runs in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from ingest.access import socketio_allowed
from ingest.exceptions import (
    BadRequestError,
    CapacityError,
    ConflictError,
    GapError,
    IngestError,
    InvalidMediaError,
    SessionClosedError,
    TooLargeError,
    UnsupportedError,
    storage_error,
)
from ingest.images import image_type
from ingest.services import Services
from ingest.session import LiveSession
from storage.store import sha256_hex, validate_session_id

log = logging.getLogger(__name__)

# Containers a MediaRecorder may produce that the reader handles; MP4 (Safari) is not one yet.
SUPPORTED_MIME_PREFIXES = ("video/webm", "audio/webm", "video/x-matroska", "audio/x-matroska")
MAX_MIME_CHARS = 200
MAX_META_BYTES = 16 * 1024

Ack = dict[str, Any]


def _require_dict(data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadRequestError(f"payload must be an object, got {type(data).__name__}")
    return data


def _optional_time(payload: dict[str, Any]) -> float | None:
    t_ms = payload.get("t_ms")
    if t_ms is None:
        return None
    if isinstance(t_ms, bool) or not isinstance(t_ms, int | float) or not math.isfinite(t_ms):
        raise BadRequestError("t_ms must be a finite number")
    return float(t_ms)


def _require_bytes(payload: dict[str, Any], limit: int, what: str) -> bytes:
    data = payload.get("data")
    if not isinstance(data, bytes | bytearray):
        raise BadRequestError(f"data must be a binary attachment, got {type(data).__name__}")
    if len(data) > limit:
        raise TooLargeError(f"{what} of {len(data)} bytes exceeds the limit of {limit} bytes")
    return bytes(data)


def _sniff_container(blob: bytes) -> str:
    """The mime of a classic client's first blob (it sends none)."""
    if not blob.startswith(b"\x1a\x45\xdf\xa3"):
        raise UnsupportedError("the first video blob is not WebM/Matroska (the classic client's MediaRecorder)")
    return "video/x-matroska" if b"matroska" in blob[:64] else "video/webm"



def error_ack(exc: IngestError) -> Ack:
    ack: Ack = {"ok": False, "error": exc.to_dict()}
    if isinstance(exc, GapError):
        ack["next_seq"] = exc.next_seq
    return ack


class IngestNamespace(socketio.AsyncNamespace):
    """Handlers of the default namespace; all state lives in ``services``, none in globals."""

    def __init__(self, services: Services) -> None:
        super().__init__("/")
        self.services = services
        self.closing = False
        self._classic_locks: dict[str, asyncio.Lock] = {}  # per connection of a classic client
        self._handling = 0  # events being handled (their acks not yet returned)
        self._drained = asyncio.Event()

    async def _answer(self, handler: Callable[[str, dict[str, Any]], Awaitable[Ack]], sid: str, data: object) -> Ack:
        if self.closing:
            return error_ack(CapacityError("the server is shutting down; retry in a moment"))
        self._handling += 1
        try:
            return await handler(sid, _require_dict(data))
        except IngestError as exc:
            return error_ack(exc)
        except Exception:
            log.exception("internal error in %s", handler.__name__)
            return {"ok": False, "error": {"code": "internal", "message": "internal server error"}}
        finally:
            self._handling -= 1
            if self.closing and not self._handling:
                self._drained.set()

    async def close(self, timeout: float) -> None:
        """Shutdown: refuse new events (``busy``), let the ones in hand finish and be acked (at
        most ``timeout`` s), then close every connection: clients resume after a restart."""
        self.closing = True
        if self._handling:
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except TimeoutError:
                log.warning("shutdown: %d events still in hand after %g s", self._handling, timeout)
        eio = self.server.eio
        if eio.sockets:
            await asyncio.wait_for(eio.disconnect(), timeout)

    async def on_start(self, sid: str, data: object = None) -> Ack:
        return await self._answer(self._start, sid, data)

    async def on_chunk(self, sid: str, data: object = None) -> Ack:
        return await self._answer(self._chunk, sid, data)

    async def on_stop(self, sid: str, data: object = None) -> Ack:
        return await self._answer(self._stop, sid, data)

    async def on_snapshot(self, sid: str, data: object = None) -> Ack:
        return await self._answer(self._snapshot, sid, data)

    # -- the classic tutorial client (PROTOCOL.md v1.1): `video` and `image`, no acks ------------
    async def on_video(self, sid: str, data: object = None) -> None:
        """A MediaRecorder blob from a page written for the Node tutorials: the first opens a
        session for this connection, each later one is its next chunk, in arrival order."""
        async with self._classic_lock(sid):
            classic = await self.get_session(sid)
            try:
                payload = _require_dict(data)
                blob = _require_bytes(payload, self.services.settings.max_chunk_bytes, "video blob")
                mime = None if "session" in classic else _sniff_container(blob)
            except IngestError as exc:
                if isinstance(data, dict) and isinstance(data.get("data"), bytes):  # for the operator
                    log.info("classic client %s: refused blob of %d bytes starting %s", sid, len(data["data"]),
                             data["data"][:8].hex())  # fmt: skip
                return await self._classic_refused(sid, classic, exc.to_dict())
            if mime is not None:
                ack = await self._answer(self._start, sid, {"mime": mime, "meta": {"client": "classic"}})
                if not ack["ok"]:
                    return await self._classic_refused(sid, classic, ack["error"])
                classic["session"] = {"session_id": ack["session_id"], "token": ack["token"]}
                classic["seq"] = 0
            chunk = {**classic["session"], "seq": classic["seq"], "data": blob}
            if isinstance(payload.get("timeMillis"), int | float):
                chunk["t_ms"] = float(payload["timeMillis"])
            ack = await self._answer(self._chunk, sid, chunk)
            if not ack["ok"]:
                return await self._classic_refused(sid, classic, ack["error"])
            classic["seq"] += 1
            await self.save_session(sid, classic)

    async def _classic_refused(self, sid: str, classic: dict[str, Any], error: dict[str, str]) -> None:
        """No ack to carry it: tell the page the way sessions are told (session_error)."""
        log.warning("classic client %s: %s", sid, error["message"])
        session_id = classic.get("session", {}).get("session_id")
        await self.save_session(sid, classic)
        await self.emit("session_error", {"session_id": session_id, **error}, to=sid)

    async def on_image(self, sid: str, data: object = None) -> None:
        """A snapshot of this connection's classic session, in arrival order with its blobs."""
        async with self._classic_lock(sid):
            classic = await self.get_session(sid)
            if "session" not in classic or not isinstance(data, dict) or not isinstance(data.get("data"), bytes):
                log.warning("classic client %s: an image before any video, or without data: ignored", sid)
                return
            payload = {**classic["session"], "mime": image_type(data["data"]) or "image/jpeg", "data": data["data"]}
            if isinstance(data.get("timeMillis"), int | float):
                payload["t_ms"] = float(data["timeMillis"])
            ack = await self._answer(self._snapshot, sid, payload)
            if not ack["ok"]:
                log.warning("classic client %s: snapshot refused: %s", sid, ack["error"]["message"])

    def _classic_lock(self, sid: str) -> asyncio.Lock:
        # python-socketio runs every event in a task of its own: the lock (FIFO) keeps a
        # connection's blobs in arrival order
        return self._classic_locks.setdefault(sid, asyncio.Lock())

    async def _end_classic(self, sid: str) -> None:
        lock = self._classic_locks.pop(sid, None)
        if lock is None:
            return
        async with lock:  # blobs still being stored come first
            classic = await self.get_session(sid)
            if "session" in classic:
                await self.services.lifecycle.end(classic["session"]["session_id"], "client")

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
        if not socketio_allowed(self.services.settings, environ, auth):
            raise socketio.exceptions.ConnectionRefusedError("unauthorized: this server needs its access token")

    async def on_disconnect(self, sid: str, reason: object = None) -> None:
        await self._end_classic(sid)  # a classic client's session ends with its connection
        self.services.lifecycle.disconnected(sid)

    # -- helpers ---------------------------------------------------------------------------------
    async def _session(self, sid: str, payload: dict[str, Any]) -> LiveSession:
        """The session named by the payload, its token checked, this client joined to its room."""
        session_id = validate_session_id(payload.get("session_id"))
        session = await self.services.registry.get(session_id)
        session.check_token(payload.get("token"))
        await self.enter_room(sid, session.id)
        return session

    # -- events ----------------------------------------------------------------------------------
    async def _start(self, sid: str, payload: dict[str, Any]) -> Ack:
        resume = payload.get("resume")
        if resume is not None:
            session = await self._session(sid, _require_dict(resume))
            if session.state == "stopped":
                raise SessionClosedError(f"session {session.id} is stopped")
            if session.state == "failed":
                raise InvalidMediaError(f"session {session.id} failed: {session.error}")
            self.services.lifecycle.hold(sid, session.id)
            log.info("session %s resumed at seq %d", session.id, session.next_seq)
            return {"ok": True, "session_id": session.id, "token": resume["token"], "next_seq": session.next_seq}

        mime = payload.get("mime")
        if not isinstance(mime, str) or not mime or len(mime) > MAX_MIME_CHARS:
            raise BadRequestError(f"mime must be a non-empty string of at most {MAX_MIME_CHARS} characters")
        if not mime.lower().startswith(SUPPORTED_MIME_PREFIXES):
            raise UnsupportedError(f"mime {mime!r} is not supported; send WebM or Matroska (video/webm)")
        meta = payload.get("meta", {})
        if not isinstance(meta, dict):
            raise BadRequestError("meta must be an object")
        if len(json.dumps(meta)) > MAX_META_BYTES:
            raise TooLargeError(f"meta exceeds {MAX_META_BYTES} bytes of JSON")
        self.services.lifecycle.check_room(sid)
        session, token = await self.services.registry.create(mime, meta)
        self.services.lifecycle.hold(sid, session.id)
        log.info("session %s started (%s)", session.id, mime)
        await self.enter_room(sid, session.id)
        return {"ok": True, "session_id": session.id, "token": token, "next_seq": session.next_seq}

    async def _chunk(self, sid: str, payload: dict[str, Any]) -> Ack:
        seq = payload.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise BadRequestError("seq must be a non-negative integer")
        t_ms = _optional_time(payload)
        data = _require_bytes(payload, self.services.settings.max_chunk_bytes, "chunk")
        received = time.monotonic()
        session = await self._session(sid, payload)
        services = self.services
        async with session.lock:
            if session.state == "stopped":
                raise SessionClosedError(f"session {session.id} is stopped")
            if session.state == "failed":
                raise InvalidMediaError(f"session {session.id} failed: {session.error}")
            if seq < session.next_seq:
                row = await asyncio.to_thread(services.store.chunk_row, session.id, seq)
                same = (
                    row is not None
                    and row["size"] == len(data)
                    and row["sha256"] == await asyncio.to_thread(sha256_hex, data)
                )
                if not same:
                    raise ConflictError(f"seq {seq} is already stored with different bytes")
                return {"ok": True, "seq": seq, "next_seq": session.next_seq}
            if seq > session.next_seq:
                raise GapError(
                    f"seq {seq} is ahead of next_seq {session.next_seq}; resend from there", session.next_seq
                )
            services.registry.check_held(len(data))
            try:
                async with services.write_slots:
                    loop = asyncio.get_running_loop()
                    staged = await loop.run_in_executor(services.io_pool, session.stage_chunk, seq, data, t_ms)
                    await asyncio.wrap_future(services.store.index.submit(staged.commit))
            except BaseException as exc:
                # Memory may be ahead of what was committed: drop it, reload from the store.
                services.registry.forget(session.id)
                if isinstance(exc, OSError | sqlite3.Error):
                    log.error("chunk %d of %s not stored: %r", seq, session.id, exc)  # the path: for the operator
                    raise storage_error(exc, "chunk") from exc
                raise
            session.apply(staged)
            services.registry.count_held(session)
            if staged.error is not None:
                logging.getLogger("camingest.sessions").warning(
                    "session %s failed at chunk %d: %s", session.id, seq, staged.error.message
                )
                services.registry.forget(session.id)
                await services.pipeline.fail(session.id, staged.error)
                raise staged.error
            try:
                await services.pipeline.submit_chunk(session, staged)
            except Exception:  # the chunk is stored: its frames are filled after stop
                log.exception("chunk %d of %s stored but not queued for analysis", seq, session.id)
            services.lifecycle.hold(sid, session.id)
        services.metrics.chunks.inc()
        services.metrics.chunk_bytes.inc(len(data))
        services.metrics.chunk_ack.observe(time.monotonic() - received)
        return {"ok": True, "seq": seq, "next_seq": session.next_seq}

    async def _stop(self, sid: str, payload: dict[str, Any]) -> Ack:
        session = await self._session(sid, payload)
        return {"ok": True, "session": await self.services.lifecycle.end(session.id, "client")}

    async def _snapshot(self, sid: str, payload: dict[str, Any]) -> Ack:
        data = _require_bytes(payload, self.services.settings.max_snapshot_bytes, "snapshot")
        mime = payload.get("mime")
        t_ms = _optional_time(payload)
        session = await self._session(sid, payload)
        snapshot_id = await self.services.snapshots.store_snapshot(session.id, mime, data, t_ms)
        return {"ok": True, "snapshot_id": snapshot_id}
