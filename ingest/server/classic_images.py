"""The lipstick try-on tutorial's client (PROTOCOL v1.2 in the README): ``image`` with a data URL
string in, ``response_back`` with the image, lips recoloured, out; ``catch-frame`` echoed.

Per connection (latest wins, answers in order, ingest/live/tryon_lane.py): an image is checked
here before anything decodes it (its text length, the data URL's type, strict base64, then the
image header: type and declared pixels, as snapshots are), recoloured by an analysis worker
(decode, faces + 68 points, the export's lips overlay, JPEG quality 40: one round trip), sent
back to that connection only, then stored as a snapshot of the connection's session
(``meta.client = "classic-images"``, opened by its first answered image, ended when the
connection closes) with the faces found, up to ``max_classic_images``. Refusals are
``session_error`` events to that connection (the page has no acks) and rate-limited lines in
the operator's log; nothing of them reaches another connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ingest.config import Settings
from ingest.exceptions import CapacityError, IngestError, UnsupportedError, storage_error
from ingest.metrics import Metrics
from ingest.recording.snapshots import SnapshotService, validate_snapshot
from ingest.server.payloads import decode_base64, split_data_url

log = logging.getLogger(__name__)
CLIENT = "classic-images"  # the sessions' meta.client
LOG_EVERY_S = 10.0  # one operator line per connection and this long for its refused images
THREAD_DECODE_CHARS = 256 * 1024  # base64 longer than this is decoded in a thread (~0.2 ms beyond)


class Answer(Protocol):
    """A worker's answer (``ingest.live.messages.Recoloured``)."""

    @property
    def faces(self) -> list[dict[str, Any]]: ...
    @property
    def data_url(self) -> str: ...


class ImageLane(Protocol):
    """The workers' side (ingest/live/tryon_lane.py): one image in hand per key, latest wins."""

    def frame(self, key: str, data: bytes) -> contextlib.AbstractAsyncContextManager[Answer | None]: ...
    def forget(self, key: str) -> None: ...


class Namespace(Protocol):
    closing: bool

    async def open_session(self, sid: str, mime: str, meta: dict[str, Any]) -> str: ...
    async def emit(self, event: str, data: Any = None, to: str | None = None) -> None: ...


@dataclass
class _Connection:
    arrived: int = 0  # images received (their order)
    latest: int = 0  # the newest image handed to the lane
    session_id: str | None = None
    stored: int = 0
    storing: bool = True  # False once the session could not be opened or is full
    said: set[str] = field(default_factory=set)  # storage problems said once
    first_at: float | None = None  # monotonic time of the first image answered (t_ms counts from it)
    closed: bool = False
    answering: asyncio.Lock = field(default_factory=asyncio.Lock)  # an answer being sent and stored
    logged_at: float = -LOG_EVERY_S
    unlogged: int = 0


class ClassicImages:
    def __init__(
        self,
        namespace: Namespace,
        settings: Settings,
        lane: ImageLane | None,
        snapshots: SnapshotService,
        metrics: Metrics,
        end_session: Callable[[str], Awaitable[Any]],
    ) -> None:
        self.namespace = namespace
        self.settings = settings
        self.lane = lane  # None: --no-analysis
        self.snapshots = snapshots
        self.metrics = metrics
        self.end_session = end_session
        self._connections: dict[str, _Connection] = {}

    async def image(self, sid: str, text: str) -> None:
        """One image of the page: checked, recoloured, answered, stored."""
        received = time.monotonic()
        conn = self._connections.setdefault(sid, _Connection())
        if conn.closed:
            return
        conn.arrived += 1
        order = conn.arrived
        try:
            if self.namespace.closing:
                raise CapacityError("the server is shutting down; reconnect in a moment")
            lane = self.lane
            if lane is None:
                if "no-analysis" in conn.said:
                    return
                conn.said.add("no-analysis")
                raise UnsupportedError(
                    "this server runs without analysis (--no-analysis): images are not recoloured (said once)"
                )
            mime, encoded = split_data_url(text, self.settings.max_snapshot_bytes)
            if len(encoded) > THREAD_DECODE_CHARS:
                data = await asyncio.to_thread(decode_base64, encoded)
            else:
                data = decode_base64(encoded)
            mime, width, height = validate_snapshot(data, mime, self.settings, what="image")
        except IngestError as exc:
            return await self._refuse(sid, conn, exc)
        if conn.closed:
            return
        if order < conn.latest:  # a later (smaller) image overtook it while this one decoded
            self.metrics.classic_frames_dropped.inc()
            return
        conn.latest = order
        try:
            async with lane.frame(sid, data) as answer:
                if answer is None:  # dropped for a newer image, or the connection is gone
                    return
                async with conn.answering:
                    if conn.closed:
                        return
                    await self.namespace.emit("response_back", answer.data_url, to=sid)
                    self.metrics.classic_frames.inc()
                    self.metrics.classic_response.observe(time.monotonic() - received)
                    await self._keep(sid, conn, mime, width, height, data, answer.faces)
        except IngestError as exc:  # from the worker: the image does not decode, or it crashed
            await self._refuse(sid, conn, exc)

    async def catch_frame(self, sid: str, data: object) -> None:
        """The tutorial's ``catch-frame``: its payload comes back as ``response_back``."""
        await self.namespace.emit("response_back", data, to=sid)

    async def _keep(
        self, sid: str, conn: _Connection, mime: str, width: int, height: int, data: bytes, faces: list[dict[str, Any]]
    ) -> None:
        """Store an answered image with its faces in the connection's session, while it may."""
        if not conn.storing:
            return
        if conn.session_id is None:
            try:
                conn.session_id = await self.namespace.open_session(sid, mime, {"client": CLIENT})
            except (IngestError, OSError) as exc:  # busy (open sessions), the disk
                error = exc if isinstance(exc, IngestError) else storage_error(exc, "session")
                conn.storing = False
                message = f"images are recoloured and answered but not stored: {error.message}"
                return await self._say(sid, conn, {"code": error.code, "message": message})
            conn.first_at = time.monotonic()
            log.info("classic image client %s: session %s", sid, conn.session_id)
        if conn.stored >= self.settings.max_classic_images:
            conn.storing = False
            message = (
                f"session {conn.session_id} stored {conn.stored} images, the limit (max_classic_images); later images "
                "are recoloured and answered but not stored (reconnect for a new session)"
            )
            return await self._say(sid, conn, {"code": CapacityError.code, "message": message})
        assert conn.first_at is not None
        t_ms = round((time.monotonic() - conn.first_at) * 1000, 3)
        try:
            await self.snapshots.store_analysed(conn.session_id, mime, width, height, data, t_ms, faces)
        except OSError as exc:  # the disk (full): said once, tried again with the next images
            log.error("classic image of %s not stored: %r", conn.session_id, exc)  # the path: for the operator
            if "disk" not in conn.said:
                conn.said.add("disk")
                await self._say(sid, conn, storage_error(exc, "image").to_dict(), logged=True)
            return
        except IngestError as exc:  # the session was deleted meanwhile
            conn.storing = False
            return await self._say(sid, conn, exc.to_dict())
        conn.stored += 1

    async def _refuse(self, sid: str, conn: _Connection, error: IngestError) -> None:
        self.metrics.classic_refused.labels(error.code).inc()
        await self._say(sid, conn, error.to_dict())

    async def _say(self, sid: str, conn: _Connection, error: dict[str, str], logged: bool = False) -> None:
        """No ack to carry it: a ``session_error`` to that connection; the operator's log gets
        one line per connection per ``LOG_EVERY_S`` (with the count of those it left out)."""
        now = time.monotonic()
        if not logged and now - conn.logged_at >= LOG_EVERY_S:
            more = f" (and {conn.unlogged} more not logged in the last {LOG_EVERY_S:g} s)" if conn.unlogged else ""
            log.warning("classic image client %s: %s%s", sid, error["message"], more)
            conn.logged_at, conn.unlogged = now, 0
        elif not logged:
            conn.unlogged += 1
        await self.namespace.emit("session_error", {"session_id": conn.session_id, **error}, to=sid)

    async def disconnected(self, sid: str) -> None:
        """The connection is gone: its images are dropped, the one being answered is stored,
        then its session ends."""
        conn = self._connections.pop(sid, None)
        if conn is None:
            return
        conn.closed = True
        if self.lane is not None:
            self.lane.forget(sid)
        async with conn.answering:  # the answer being sent is stored first
            pass
        if conn.unlogged:
            log.warning("classic image client %s: %d more session errors not logged", sid, conn.unlogged)
        if conn.session_id is not None:
            await self.end_session(conn.session_id)
