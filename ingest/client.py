"""A Python client for a camingest server (asyncio, python-socketio): send a file or a live byte
stream as chunks, resume after a lost connection or a server restart, receive landmarks.

    async with CamingestClient("http://127.0.0.1:8080", token=None) as client:
        session = await client.start("video/webm;codecs=vp8")
        await session.send_file("clip.webm")           # or: await session.send_stream(async_iterable)
        summary = await session.stop(wait="analysed")  # returns once every frame has landmarks
        frames = await session.landmarks(summary["frames"])   # every frame's landmarks, by index

Live analysis skips frames rather than fall behind (a file sent faster than real time has many
skipped); the server fills them after ``stop``. ``stop(wait="analysed")`` waits for that: it
returns the summary once ``analysed_frames == frames`` and ``skipped_frames == 0``, with
``session.frames`` holding the final landmarks (the filled ones in place of the skipped).

Each chunk is sent with its seq and kept until the server's ``durable_seq`` covers it (in the
store of record: object storage behind a cluster, else the server's disk, then at its ack), at
most ``max_unreplicated_bytes`` of them (past it ``send`` waits); ``gap`` resends from the
server's ``next_seq``; a lost connection (or an ack that does not come) waits for python-socketio's
reconnect, resumes the session (maybe on another node) and resends from the ``next_seq`` the
resume answers, from memory.
Refusals (``too_large``, ``unsupported``, ...) raise :class:`CamingestError` with the server's
code and message. Needs ``python-socketio[asyncio_client]`` (aiohttp is already a dependency).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections import deque
from collections.abc import AsyncIterable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import socketio

from ingest.media.image_headers import image_type

# A 250 ms MediaRecorder blob of 640x480 VP8 is ~30-60 KB; files are cut into pieces of this size
# (the server's reader takes any byte boundaries).
FILE_PIECE_BYTES = 256 * 1024
# Refusals worth retrying as they are (after a pause): the server is busy, its disk full.
RETRYABLE = frozenset({"busy", "storage_full", "timeout", "internal"})
# ``internal`` is the server's own fault: tried again this many times in a row (a passing I/O
# error), not for the whole ``retry_for`` (a session it cannot load would be asked for ever)
INTERNAL_RETRIES = 3
SERVER_EVENTS = ("landmarks", "landmarks_filled", "snapshot_landmarks", "session_error")
WAITS = ("analysed",)  # what ``Session.stop(wait=...)`` can wait for
# while waiting for complete landmarks, the summary is read again after an event or this long
# (events can be missed across a reconnect: the summary is the truth)
SUMMARY_POLL_S = 1.0


def _complete(summary: dict[str, Any]) -> bool:
    """Every frame of a stopped session has landmarks: none missing, skipped or being filled."""
    return (
        summary.get("state") == "stopped"
        and summary["analysed_frames"] == summary["frames"]
        and summary["skipped_frames"] == 0
        and "fill" not in summary
    )


class CamingestError(Exception):
    """The server refused something; ``code`` is PROTOCOL.md's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class CamingestClient:
    """One Socket.IO connection to a camingest server; reconnects by itself."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        ack_timeout: float = 30.0,
        reconnect: bool = True,
        retry_for: float = 300.0,
        max_unreplicated_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.url = url
        # acknowledged chunks kept until durable_seq covers them (a node lost with its disk
        # answers a resume with an earlier next_seq: they are resent from here)
        self.max_unreplicated_bytes = max_unreplicated_bytes
        self.token = token
        self.ack_timeout = ack_timeout
        self.retry_for = retry_for  # how long a chunk may wait for a lost server before failing
        # the handshake bounded by ack_timeout: through a load balancer, a node that is frozen or
        # cut off accepts the TCP connection and never answers the upgrade; the next attempt
        # reaches another node (after the upgrade, aiohttp lifts the read timeout off the socket)
        handshake = aiohttp.ClientTimeout(total=None, sock_connect=ack_timeout, sock_read=ack_timeout)
        self.sio = socketio.AsyncClient(
            reconnection=reconnect, reconnection_delay=0.25, reconnection_delay_max=2,
            http_session=lambda: aiohttp.ClientSession(timeout=handshake),
        )  # fmt: skip
        self.connected = asyncio.Event()
        self._dropped = asyncio.Event()  # set when the current connection drops (a new one per connection)
        self.sessions: dict[str, Session] = {}
        # every server event as received (tests and tools read them); bounded per event name
        self.events: dict[str, deque[Any]] = {name: deque(maxlen=10_000) for name in SERVER_EVENTS}
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        for name in SERVER_EVENTS:
            self.sio.on(name, self._dispatcher(name))

    async def __aenter__(self) -> CamingestClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        auth = {"token": self.token} if self.token else None
        try:
            await self.sio.connect(self.url, transports=["websocket"], auth=auth, wait_timeout=self.ack_timeout)
        except socketio.exceptions.ConnectionError as exc:
            raise CamingestError("unreachable", f"cannot connect to {self.url}: {exc}") from None
        self.connected.set()

    async def close(self) -> None:
        await self.sio.disconnect()

    def drop_stalled(self) -> None:
        """An ack did not come: the server may be frozen or cut off, and a half-open TCP
        connection (behind a load balancer, too) would answer nothing until engine.io's ping
        timeout (~45 s). Shut the socket down: python-socketio then reconnects as after any
        network drop (through the load balancer: maybe to another node) and the sessions resume."""
        ws = getattr(self.sio.eio, "ws", None)
        sock = ws.get_extra_info("socket") if ws is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def call(self, event: str, payload: Any, timeout: float | None = None) -> dict[str, Any]:
        """Emit ``event`` and return its ack (a dict with ``ok``), as the server sent it. If the
        connection drops before the ack came, ``socketio.exceptions.DisconnectedError`` at once:
        that ack can no longer come (python-socketio alone would wait out the whole timeout, and a
        recorder whose node died would send nothing for ``ack_timeout``)."""
        dropped = self._dropped
        answer = asyncio.ensure_future(self.sio.call(event, payload, timeout=timeout or self.ack_timeout))
        gone = asyncio.ensure_future(dropped.wait())
        try:
            await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not answer.done():  # the connection dropped (or this call was cancelled)
                answer.cancel()
        if answer.done():
            return answer.result()
        raise socketio.exceptions.DisconnectedError(f"the connection dropped before {event!r} was answered")

    async def start(self, mime: str = "video/webm;codecs=vp8", meta: dict[str, Any] | None = None) -> Session:
        """Open a new session."""
        ack = await self.call("start", {"mime": mime, "meta": meta or {}})
        if not ack["ok"]:
            raise CamingestError(ack["error"]["code"], ack["error"]["message"])
        return self._session(ack)

    async def resume(self, session_id: str, token: str) -> Session:
        """Reattach a session started earlier (by this process or another, before a restart)."""
        ack = await self.call("start", {"resume": {"session_id": session_id, "token": token}})
        if not ack["ok"]:
            raise CamingestError(ack["error"]["code"], ack["error"]["message"])
        return self._session(ack)

    def _session(self, ack: dict[str, Any]) -> Session:
        session = Session(self, ack["session_id"], ack["token"], ack["next_seq"])
        self.sessions[session.session_id] = session
        return session

    async def _on_connect(self) -> None:
        self._dropped = asyncio.Event()
        self.connected.set()
        for session in list(self.sessions.values()):
            if not session.stopped:
                session.resume_needed = True  # the next send resumes first (in its own task)

    async def _on_disconnect(self, *reason: object) -> None:
        self.connected.clear()
        self._dropped.set()  # the acks awaited over it: not coming

    def _dispatcher(self, name: str):
        async def dispatch(data: Any) -> None:
            self.events[name].append(data)
            session = self.sessions.get(data.get("session_id", "")) if isinstance(data, dict) else None
            if session is not None:
                session._on_event(name, data)

        return dispatch


class Session:
    """One recording on the server. ``next_seq`` is the next seq to send."""

    def __init__(self, client: CamingestClient, session_id: str, token: str, next_seq: int) -> None:
        self.client = client
        self.session_id = session_id
        self.token = token
        self.next_seq = next_seq
        self.stopped = False
        self.resume_needed = False
        self.frames: dict[int, dict[str, Any]] = {}  # landmark frames by index
        self.snapshot_faces: dict[str, list[dict[str, Any]]] = {}
        self.errors: list[dict[str, Any]] = []
        self.filled: dict[str, Any] | None = None
        self.durable_seq = next_seq - 1 if next_seq else -1
        self.unreplicated: dict[int, tuple[bytes, float | None]] = {}  # acked, not yet durable
        self.waits_for_durable = 0  # how often send() waited for durable_seq (max_unreplicated_bytes)
        self._changed = asyncio.Event()

    @property
    def ids(self) -> dict[str, str]:
        return {"session_id": self.session_id, "token": self.token}

    @property
    def unreplicated_bytes(self) -> int:
        return sum(len(data) for data, _ in self.unreplicated.values())

    async def send(self, data: bytes, t_ms: float | None = None) -> dict[str, Any]:
        """Send the next chunk and return its ack once stored; retried across reconnects. Waits
        first while ``max_unreplicated_bytes`` wait for the store of record."""
        if self.unreplicated and self.unreplicated_bytes + len(data) > self.client.max_unreplicated_bytes:
            await self._wait_durable()
        seq = self.next_seq
        payload: dict[str, Any] = {**self.ids, "seq": seq, "data": data}
        if t_ms is not None:
            payload["t_ms"] = t_ms
        self.unreplicated[seq] = (data, t_ms)
        ack = await self._call_retrying("chunk", payload)
        self.next_seq = max(self.next_seq, ack["next_seq"])
        self._durable(ack.get("durable_seq", seq))
        return ack

    def _durable(self, durable_seq: int) -> None:
        """The server has everything through ``durable_seq`` in its store of record."""
        self.durable_seq = max(self.durable_seq, durable_seq)
        for seq in [s for s in self.unreplicated if s <= self.durable_seq]:
            del self.unreplicated[seq]

    async def _wait_durable(self, timeout: float = 300.0) -> None:
        """Ask (``status``) until some of what is kept is durable: the server's store is slow
        or away, and the client keeps at most ``max_unreplicated_bytes``."""
        self.waits_for_durable += 1
        deadline = asyncio.get_running_loop().time() + timeout
        pause = 0.1
        while self.unreplicated and self.unreplicated_bytes >= self.client.max_unreplicated_bytes:
            ack = await self._call_retrying("status", self.ids)
            self._durable(ack["durable_seq"])
            if asyncio.get_running_loop().time() > deadline:
                raise CamingestError("timeout", f"the server made nothing durable for {timeout:g} s")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def send_stream(self, source: AsyncIterable[bytes] | Iterable[bytes]) -> int:
        """Send every piece of ``source`` (a live byte stream: bytes objects as they come) as the
        next chunks; returns how many were sent."""
        sent = 0
        if isinstance(source, AsyncIterable):
            async for piece in source:
                await self.send(piece)
                sent += 1
        else:
            for piece in source:
                await self.send(piece)
                sent += 1
        return sent

    async def send_file(self, path: str | os.PathLike[str], piece_bytes: int = FILE_PIECE_BYTES) -> int:
        """Send a WebM file (as MediaRecorder writes it) in pieces of ``piece_bytes``."""

        async def pieces() -> AsyncIterable[bytes]:
            with open(Path(path), "rb") as f:
                while piece := await asyncio.to_thread(f.read, piece_bytes):
                    yield piece

        return await self.send_stream(pieces())

    async def snapshot(self, data: bytes, mime: str | None = None, t_ms: float | None = None) -> str:
        """Store a still image (JPEG, PNG or WebP; the type read from the bytes unless given) with
        the session; returns its snapshot id (its faces arrive in ``snapshot_faces``)."""
        payload: dict[str, Any] = {**self.ids, "mime": mime or image_type(data) or "image/jpeg", "data": data}
        if t_ms is not None:
            payload["t_ms"] = t_ms
        return (await self._call_retrying("snapshot", payload))["snapshot_id"]

    async def stop(self, wait: str | None = None, timeout: float = 600.0) -> dict[str, Any]:
        """End the session; returns its summary. ``wait="analysed"``: return only once every
        frame has landmarks (live analysis done and the frames it skipped filled by the server),
        with the summary as it is then and ``frames`` holding the final landmarks; raises
        :class:`CamingestError` if they cannot be completed, ``TimeoutError`` after ``timeout`` s."""
        if wait is not None and wait not in WAITS:
            raise ValueError(f"wait={wait!r}; allowed: None (the stop only) or {', '.join(map(repr, WAITS))}")
        ack = await self._call_retrying("stop", self.ids)
        self.stopped = True
        self._durable(ack["session"].get("durable_seq", self.next_seq - 1))
        if wait is None:
            return ack["session"]
        return await self.analysed(timeout)

    async def analysed(self, timeout: float = 600.0) -> dict[str, Any]:
        """Wait until the stopped session's landmarks are complete (``analysed_frames ==
        frames``, nothing skipped or being filled); returns its summary then and puts the
        stored landmarks into ``frames``. Hears ``landmarks`` and ``landmarks_filled`` and reads
        the summary after each (and every ``SUMMARY_POLL_S``)."""
        headers = {"Authorization": f"Bearer {self.client.token}"} if self.client.token else {}
        base = f"{self.client.url.rstrip('/')}/api/sessions/{self.session_id}"
        summary: dict[str, Any] = {}
        async with aiohttp.ClientSession(headers=headers) as http:
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        self._changed.clear()
                        summary = await self._get(http, base)
                        if summary.get("state") == "failed":
                            raise CamingestError("invalid_media", summary.get("error") or "the session failed")
                        if summary.get("landmarks_error"):
                            raise CamingestError("invalid_media", summary["landmarks_error"])
                        if _complete(summary):
                            break
                        with contextlib.suppress(TimeoutError):  # the poll's pause
                            await asyncio.wait_for(self._changed.wait(), SUMMARY_POLL_S)
                    body = await self._get(http, base + "/landmarks")
            except TimeoutError:
                done = f"{summary.get('analysed_frames', 0) - summary.get('skipped_frames', 0)} of {summary.get('frames')}"
                raise TimeoutError(
                    f"the landmarks of {self.session_id} were not complete within {timeout:g} s ({done} frames "
                    "analysed); is the server running with --no-analysis?"
                ) from None
        for frame in body["frames"]:
            self.frames[frame["index"]] = frame
        return summary

    async def _get(self, http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
        async with http.get(url) as response:
            data = await response.read()
            if response.status != 200:
                try:
                    error = json.loads(data)["error"]
                except (ValueError, KeyError, TypeError):
                    error = {"code": "internal", "message": f"HTTP {response.status} from {url}"}
                raise CamingestError(error["code"], error["message"])
            result: dict[str, Any] = json.loads(data)
            return result

    async def landmarks(self, frames: int, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Wait until live landmarks for frames 0..frames-1 arrived; returns them in index order
        (a frame live analysis had no time for is ``{"skipped": true}``)."""

        def complete() -> bool:
            return all(i in self.frames for i in range(frames))

        await self._wait(complete, timeout, f"landmarks of {frames} frames")
        return [self.frames[i] for i in range(frames)]

    async def _wait(self, condition: Any, timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"{what} did not arrive within {timeout:g} s") from None

    def _on_event(self, name: str, data: dict[str, Any]) -> None:
        if name == "landmarks":
            for frame in data["frames"]:
                self.frames[frame["index"]] = frame
        elif name == "snapshot_landmarks":
            self.snapshot_faces[data["snapshot_id"]] = data["faces"]
        elif name == "landmarks_filled":
            self.filled = data
        elif name == "session_error":
            self.errors.append(data)
        self._changed.set()

    async def _call_retrying(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Emit until acknowledged: retryable refusals after a pause, a lost connection after the
        reconnect and a resume, ``gap`` by resending from ``next_seq`` (a chunk the server
        already has is acked again without being stored twice)."""
        client = self.client
        deadline = asyncio.get_running_loop().time() + client.retry_for
        pause = 0.25
        internal = 0  # refusals ``internal`` in a row
        while True:
            try:
                if self.resume_needed or not client.connected.is_set():
                    await asyncio.wait_for(client.connected.wait(), max(0.0, deadline - asyncio.get_running_loop().time()))
                    await self._resume_before(event)
                ack = await client.call(event, payload)
            except (TimeoutError, socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError,
                    socketio.exceptions.DisconnectedError) as exc:  # fmt: skip
                ack = {"ok": False, "error": {"code": "timeout", "message": "no answer from the server"}}
                self.resume_needed = True
                stalled = isinstance(exc, (TimeoutError, socketio.exceptions.TimeoutError))
                if stalled and client.connected.is_set():
                    client.drop_stalled()  # connected, yet no answer: a stalled connection
            except CamingestError as exc:  # the resume (or a resend in it) was refused
                if exc.code not in RETRYABLE:
                    raise
                ack = {"ok": False, "error": {"code": exc.code, "message": exc.message}}
                self.resume_needed = True
            if ack["ok"]:
                return ack
            code, message = ack["error"]["code"], ack["error"]["message"]
            if code == "gap" and event == "chunk":
                raise CamingestError(code, f"{message} (the server has chunks up to {ack.get('next_seq')})")
            internal = internal + 1 if code == "internal" else 0
            if code not in RETRYABLE or asyncio.get_running_loop().time() > deadline or internal > INTERNAL_RETRIES:
                raise CamingestError(code, message)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    async def _resume_before(self, event: str) -> None:
        """The resume before a retried ``event``. Before a stop, a session already stopped is no
        error: that stop (or another client's) got through and its ack was lost; the stop sent
        again answers the summary (a stop is idempotent)."""
        try:
            await self._resume()
        except CamingestError as exc:
            if event != "stop" or exc.code != "session_closed":
                raise
            self.resume_needed = False

    async def _resume(self) -> None:
        if not self.resume_needed:
            return
        ack = await self.client.call("start", {"resume": self.ids})
        if not ack["ok"]:
            raise CamingestError(ack["error"]["code"], ack["error"]["message"])
        self.resume_needed = False
        sent, self.next_seq = self.next_seq, ack["next_seq"]
        self._durable(ack.get("durable_seq", ack["next_seq"] - 1))
        # a server that lost what it acked (a node gone with its disk) restarts from durable_seq:
        # what it lost is resent from memory, in order, before anything new
        for seq in range(ack["next_seq"], sent):
            if seq not in self.unreplicated:
                break  # the chunk being sent now (or a stream restarted by the caller)
            data, t_ms = self.unreplicated[seq]
            payload: dict[str, Any] = {**self.ids, "seq": seq, "data": data}
            if t_ms is not None:
                payload["t_ms"] = t_ms
            resent = await self.client.call("chunk", payload)
            if not resent["ok"]:
                self.resume_needed = True
                raise CamingestError(resent["error"]["code"], resent["error"]["message"])
            self.next_seq = resent["next_seq"]
            self._durable(resent.get("durable_seq", seq))
