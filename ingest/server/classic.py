"""The classic tutorial clients (PROTOCOL.md v1.1, "the classic client"): pages written for the
Node tutorials' servers emit ``video`` blobs and ``image`` snapshots without acks.

The first ``video`` of a connection opens a session for it (``meta.client = "classic"``, mime
read from the blob; first blobs cut inside the EBML header are held until it can be read); each
later one is its next chunk, in arrival order; ``image`` is a snapshot
of that session; the session ends when the connection closes. Each connection's events are
handled in arrival order under its own lock (python-socketio runs every event in a task of its
own), through the acked protocol's own handlers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ingest.exceptions import BadRequestError, IngestError, UnsupportedError
from ingest.media.image_headers import image_type
from ingest.media.webm import EBML_MAGIC
from ingest.server.payloads import Ack, require_bytes, require_dict

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], Awaitable[Ack]]


class Namespace(Protocol):
    """What the classic dialect needs of the namespace it serves."""

    async def answer(self, handler: Handler, sid: str, data: object) -> Ack: ...
    async def start(self, sid: str, payload: dict[str, Any]) -> Ack: ...
    async def chunk(self, sid: str, payload: dict[str, Any]) -> Ack: ...
    async def snapshot(self, sid: str, payload: dict[str, Any]) -> Ack: ...
    async def get_session(self, sid: str) -> dict[str, Any]: ...
    async def save_session(self, sid: str, session: dict[str, Any]) -> None: ...
    async def emit(self, event: str, data: Any = None, to: str | None = None) -> None: ...


# The EBML header's DocType ("webm" or "matroska") lies within a stream's first bytes: a classic
# session's first chunk is held until it has them (or the DocType) to tell which one it is.
SNIFF_BYTES = 64


def sniff_container(head: bytes) -> str | None:
    """The mime of a classic client's first bytes (it sends none); None while they are a cut of
    the EBML header too short to tell: Chromium's MediaRecorder on a busy machine delivers its
    first blob as the header's first 1 or 2 bytes, the rest in the next one."""
    if not head.startswith(EBML_MAGIC[: len(head)]):
        raise UnsupportedError("the first video blob is not WebM/Matroska (the classic client's MediaRecorder)")
    start = head[:SNIFF_BYTES]
    if b"matroska" in start:
        return "video/x-matroska"
    if b"webm" in start or len(head) >= SNIFF_BYTES:
        return "video/webm"
    return None


class ClassicClients:
    def __init__(self, namespace: Namespace, max_chunk_bytes: int, end_session: Callable[[str], Awaitable[Any]]) -> None:
        self.namespace = namespace
        self.max_chunk_bytes = max_chunk_bytes
        self.end_session = end_session
        self._locks: dict[str, asyncio.Lock] = {}  # per connection that spoke the dialect

    def _lock(self, sid: str) -> asyncio.Lock:
        return self._locks.setdefault(sid, asyncio.Lock())  # FIFO: arrival order

    async def video(self, sid: str, data: object) -> None:
        """A MediaRecorder blob: the first opens a session for this connection, each later one
        is its next chunk, in arrival order. Blobs too short to tell the container (a cut inside
        the EBML header) wait for the next one; each is still its own chunk."""
        ns = self.namespace
        async with self._lock(sid):
            classic = await ns.get_session(sid)
            blobs: list[tuple[bytes, Any]] = []  # the chunks to store now: (data, timeMillis)
            mime = None
            try:
                payload = require_dict(data)
                blobs.append((require_bytes(payload, self.max_chunk_bytes, "video blob"), payload.get("timeMillis")))
                if "session" not in classic:  # the stream's first bytes, held until they tell its container
                    blobs = classic.pop("held", []) + blobs
                    mime = sniff_container(b"".join(blob for blob, _ in blobs))
                    if mime is None:  # fewer than SNIFF_BYTES in all
                        if len(blobs) >= SNIFF_BYTES:  # (empty ones: as bounded in number)
                            raise UnsupportedError(f"the first {len(blobs)} video blobs hold no WebM/Matroska header "
                                                   "(the classic client's MediaRecorder)")  # fmt: skip
                        classic["held"] = blobs
                        return await ns.save_session(sid, classic)
            except IngestError as exc:
                if isinstance(data, dict) and isinstance(data.get("data"), bytes):  # for the operator
                    log.info("classic client %s: refused blob of %d bytes starting %s", sid, len(data["data"]),
                             data["data"][:8].hex())  # fmt: skip
                return await self._refused(sid, classic, exc.to_dict())
            if mime is not None:
                ack = await ns.answer(ns.start, sid, {"mime": mime, "meta": {"client": "classic"}})
                if not ack["ok"]:
                    return await self._refused(sid, classic, ack["error"])
                classic["session"] = {"session_id": ack["session_id"], "token": ack["token"]}
                classic["seq"] = 0
            for blob, time_ms in blobs:
                chunk = {**classic["session"], "seq": classic["seq"], "data": blob}
                if isinstance(time_ms, int | float):
                    chunk["t_ms"] = float(time_ms)
                ack = await ns.answer(ns.chunk, sid, chunk)
                if not ack["ok"]:
                    return await self._refused(sid, classic, ack["error"])
                classic["seq"] += 1
            await ns.save_session(sid, classic)

    async def _refused(self, sid: str, classic: dict[str, Any], error: dict[str, str]) -> None:
        """No ack to carry it: tell the page the way sessions are told (session_error)."""
        log.warning("classic client %s: %s", sid, error["message"])
        session_id = classic.get("session", {}).get("session_id")
        await self.namespace.save_session(sid, classic)
        await self.namespace.emit("session_error", {"session_id": session_id, **error}, to=sid)

    async def image(self, sid: str, data: object) -> None:
        """A snapshot of this connection's classic session, in arrival order with its blobs."""
        ns = self.namespace
        async with self._lock(sid):
            classic = await ns.get_session(sid)
            if not isinstance(data, dict):  # (a string is the try-on dialect: classic_images.py)
                log.warning("classic client %s: an image of type %s: ignored", sid, type(data).__name__)
                error = BadRequestError(
                    f'image must be a data URL string ("data:image/jpeg;base64,...") or {{data, timeMillis}} after a '
                    f"video blob, got {type(data).__name__}"
                )
                return await self.namespace.emit("session_error", {"session_id": None, **error.to_dict()}, to=sid)
            if "session" not in classic or not isinstance(data.get("data"), bytes):
                log.warning("classic client %s: an image before any video, or without data: ignored", sid)
                error = BadRequestError(
                    "image must carry its bytes as data, after a video blob opened the session"
                    if "session" in classic else "an image is a snapshot of the video being sent: send a video blob first"
                )
                return await self.namespace.emit("session_error", {"session_id": classic.get("session", {}).get("session_id"),
                                                                   **error.to_dict()}, to=sid)  # fmt: skip
            payload = {**classic["session"], "mime": image_type(data["data"]) or "image/jpeg", "data": data["data"]}
            if isinstance(data.get("timeMillis"), int | float):
                payload["t_ms"] = float(data["timeMillis"])
            ack = await ns.answer(ns.snapshot, sid, payload)
            if not ack["ok"]:
                await self._refused(sid, classic, ack["error"])

    async def disconnected(self, sid: str) -> None:
        """The connection is gone: its classic session ends (blobs still being stored first)."""
        lock = self._locks.pop(sid, None)
        if lock is None:
            return
        async with lock:
            classic = await self.namespace.get_session(sid)
            if "session" in classic:
                await self.end_session(classic["session"]["session_id"])
