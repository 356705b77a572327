"""The Socket.IO server with its hardening: bounds python-socketio and python-engineio do not have.

This subclasses their classes and overrides some of their methods: python-socketio's
``Packet.decode`` / ``add_attachment`` and ``AsyncServer._handle_eio_message`` /
``_handle_eio_connect`` / ``_handle_eio_disconnect`` / ``_handle_connect`` /
``_engineio_server_class``; python-engineio's ``AsyncServer.handle_request`` and its aiohttp
driver's ``WebSocket`` (installed in the server's ``_async`` table) and ``translate_request``;
aiohttp's WebSocket payload parser is wrapped before authentication. When one of them changes,
this is the file to check. What it bounds:

- **Events in flight per connection**: at most ``max_events_in_flight`` events, and
  ``max_event_bytes_in_flight`` bytes of them, are being handled for one connection; past that
  the connection's reader waits (engine.io reads a connection's messages one after another), so
  nothing more is read from its socket and TCP pushes back on the sender. Meanwhile its ping
  clock starts again whenever one of its events is answered (its PONG waits behind them).
- **One event**: its attachments together (``max_message_bytes``) and their count
  (``max_event_attachments``); beyond, the connection is closed and what it still sent dropped.
- **Before authentication** (the Socket.IO CONNECT): at most ``max_unauthenticated_bytes``
  received (WebSocket bytes counted before they are parsed, long-polling bodies by their
  length), within ``auth_timeout_s``, at most ``max_unauthenticated_per_client`` such
  connections per client; anything but a CONNECT, or a refused one, closes the connection.
- **Connections per client** (``max_connections_per_client``, ingest/server/clients.py's key):
  beyond, the handshake is answered 503 ``busy``.
- **Malformed input** (engine.io and Socket.IO packets that do not parse, events that are not
  ``[name, payload]`` of an event we handle) is refused without a traceback: one rate-limited
  log line (ingest/server/log_limits.py), an error ack when the event has an id and its
  connection is authenticated, else the connection is closed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import engineio
import socketio
from aiohttp import WSMsgType, web
from engineio.async_drivers import aiohttp as engineio_aiohttp
from socketio import packet as sio_packet

from ingest.config import Settings
from ingest.exceptions import BadRequestError, IngestError, TooLargeError
from ingest.server.access import socketio_origin_check
from ingest.server.clients import Clients, PerClient
from ingest.server.log_limits import LogLimiter
from ingest.server.payloads import error_ack
from ingest.server.responses import json_error
from ingest.server.strict_json import JSONRefusedError, StrictJSON

log = logging.getLogger("camingest")
clients_log = logging.getLogger("camingest.clients")
# the name a refused event is handed to the namespace under (ingest/server/events.py answers it)
REFUSED_EVENT = "\x00refused"
RESERVED_EVENTS = frozenset({"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener",
                             REFUSED_EVENT})  # fmt: skip
_ENGINEIO_TYPES = frozenset("0123456")  # OPEN .. NOOP: the first character of a text packet
_EVENT_HEAD = re.compile(r"\A[25](?:\d+-)?(/[^,]*,)?(\d{1,15})")  # an EVENT or BINARY_EVENT with an ack id
_BODY = "camingest_body"  # a long-polling POST's body, read and checked before engine.io sees it


class EventTooLargeError(ValueError):
    pass


class MalformedPacketError(ValueError):
    """A client's packet that does not parse or that no handler takes (its message says why)."""


class RefusedEvent(list[Any]):
    """The data of an event whose JSON was refused (strict_json.py) or that is not an event
    (``[name, payload...]``): ``[REFUSED_EVENT, {"event": name or None, "message": ...}]``, so that
    python-socketio hands it to the namespace like any event, and an acked one gets its ack."""

    def __init__(self, event: str | None, message: str) -> None:
        super().__init__([REFUSED_EVENT, {"event": event, "message": message}])


def _refusal(exc: JSONRefusedError) -> RefusedEvent:
    """Where in the event the refused value is: its payload's field (``meta.x``)."""
    document = exc.document
    event = document[0] if isinstance(document, list) and document and isinstance(document[0], str) else None
    path = exc.path
    if not path:
        return RefusedEvent(event, exc.describe(whole="the event's JSON"))
    if path[0] == 1:
        return RefusedEvent(event, exc.describe(path[1:], whole="the payload"))
    return RefusedEvent(event, exc.describe(whole=f"argument {path[0]}" if path[0] else "the event's name"))


class _BoundedPacket(socketio.packet.Packet):
    """A Socket.IO packet whose binary attachments together stay within ``max_bytes``.

    engine.io's ``max_http_buffer_size`` bounds each attachment on its own, and python-socketio
    keeps every attachment of an event in memory until the last one arrives: eight 30 MB ones
    made one 240 MB event. Here the count and the running total are checked as they arrive."""

    max_bytes = 0  # set per server (a subclass per Settings)
    max_attachments = 0

    def decode(self, encoded_packet: str) -> int:
        try:
            count = super().decode(encoded_packet)
        except ValueError as exc:  # the JSON (refused, or not JSON): the event is answered with why
            if not (isinstance(encoded_packet, str) and encoded_packet[:1] in ("2", "5")):  # EVENT, BINARY_EVENT
                raise
            # python-socketio read the type, the namespace and the id before the JSON
            count = _attachments(encoded_packet)
            if isinstance(exc, JSONRefusedError):
                self.data = _refusal(exc)
            else:
                self.data = RefusedEvent(None, f"the event is not JSON: {str(exc)[:200]}")
        if self.packet_type in (socketio.packet.EVENT, socketio.packet.BINARY_EVENT):
            data = self.data
            if not (isinstance(data, list) and data and isinstance(data[0], str)):
                self.data = RefusedEvent(None, "an event is a JSON array: its name (a string), then its payload")
            elif data[0] in RESERVED_EVENTS and not isinstance(data, RefusedEvent):
                self.data = RefusedEvent(None, f"{data[0][:40]!r} is not an event a client may send")
        if count > self.max_attachments:
            raise EventTooLargeError(f"an event with {count} binary attachments (at most {self.max_attachments})")
        self._attached_bytes = 0
        return count

    def add_attachment(self, attachment: bytes) -> bool:
        self._attached_bytes = getattr(self, "_attached_bytes", 0) + len(attachment)
        if self._attached_bytes > self.max_bytes:
            raise EventTooLargeError(f"an event of more than {self.max_bytes} bytes of attachments")
        return super().add_attachment(attachment)


def _attachments(encoded_packet: str) -> int:
    """The attachment count of a binary event's header (``51-...``), as python-socketio reads it."""
    head = encoded_packet[1:12]
    dash = head.find("-")
    return int(head[:dash]) if dash > 0 and head[:dash].isdigit() else 0


class Gate:
    """The events of one connection being handled: their count and bytes, bounded."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.events = 0
        self.bytes = 0
        self._freed = asyncio.Event()

    async def enter(self, size: int, progress: Callable[[], None]) -> None:
        """Wait until the event fits (one event always fits when nothing else is in flight);
        ``progress()`` each time one of its events is answered meanwhile."""
        while self.events >= self.max_events or (self.events and self.bytes + size > self.max_bytes):
            self._freed.clear()
            await self._freed.wait()
            progress()
        self.events += 1
        self.bytes += size

    def leave(self, size: int) -> None:
        self.events -= 1
        self.bytes -= size
        self._freed.set()


class ConnectionBounds:
    """What the engine.io and Socket.IO layers share about each connection (engine.io sid):
    its client key, whether it has authenticated, its events in flight, and the counts per
    client."""

    def __init__(self, settings: Settings, clients: Clients) -> None:
        self.settings = settings
        self.clients = clients
        self.log = LogLimiter(clients_log, settings.log_repeat_s)
        self.keys: dict[str, str] = {}  # engine.io sid -> client key
        self.gates: dict[str, Gate] = {}
        self.waiting_auth: dict[str, asyncio.TimerHandle] = {}  # not authenticated yet: its deadline
        self.connections = PerClient(settings.max_connections_per_client, "connections", "max_connections_per_client")
        self.unauthenticated = PerClient(settings.max_unauthenticated_per_client, "connections that have not "
                                         "authenticated yet", "max_unauthenticated_per_client")  # fmt: skip

    def refusal(self, key: str) -> IngestError | None:
        """Why a new connection of ``key`` is refused (None: it is not)."""
        return self.connections.refusal(key) or self.unauthenticated.refusal(key)

    def opened(self, sid: str, key: str, expire: Callable[[str], None]) -> None:
        self.keys[sid] = key
        self.connections.add(key)
        self.unauthenticated.add(key)
        self.gates[sid] = Gate(self.settings.max_events_in_flight, self.settings.max_event_bytes_in_flight)
        self.waiting_auth[sid] = asyncio.get_running_loop().call_later(self.settings.auth_timeout_s, expire, sid)

    def authenticated(self, sid: str) -> None:
        deadline = self.waiting_auth.pop(sid, None)
        if deadline is not None:
            deadline.cancel()
            self.unauthenticated.remove(self.keys[sid])

    def is_authenticated(self, sid: str) -> bool:
        return sid in self.keys and sid not in self.waiting_auth

    def closed(self, sid: str) -> None:
        if sid not in self.keys:
            return
        self.authenticated(sid)  # (its deadline and its count as unauthenticated)
        self.connections.remove(self.keys.pop(sid))
        self.gates.pop(sid, None)

    def key(self, sid: str) -> str:
        return self.keys.get(sid, "unknown")

    def warn(self, sid: str, message: str, *args: object) -> None:
        """A client's bad input, in the operator's log (rate-limited per client key)."""
        key = self.key(sid)
        self.log.warning(key, "client %s: " + message, key, *args)


def engineio_text_problem(data: str) -> str | None:
    """Why an engine.io text packet is malformed (None: it parses)."""
    if not data:
        return "an empty engine.io packet"
    if data[0] == "b":  # base64 binary (long-polling)
        try:
            base64.b64decode(data[1:])
        except (binascii.Error, ValueError):
            return "an engine.io binary packet whose base64 does not decode"
        return None
    if data[0] not in _ENGINEIO_TYPES:
        return f"an engine.io packet of unknown type {data[:1]!r}"
    return None


class _PreAuthGate:
    """aiohttp's WebSocket parser, fed at most ``limit`` bytes until the connection has
    authenticated: past it the connection is closed, the bytes never parsed nor held."""

    def __init__(self, parser: Any, limit: int, authenticated: Callable[[], bool], exceeded: Callable[[], None]) -> None:
        self.parser = parser
        self.limit = limit
        self.authenticated = authenticated
        self.exceeded = exceeded
        self.seen = 0
        self.open = False

    def feed_data(self, data: bytes) -> Any:
        if not self.open:
            if self.authenticated():
                self.open = True
            else:
                self.seen += len(data)
                if self.seen > self.limit:
                    self.exceeded()
                    return False, b""
        return self.parser.feed_data(data)

    def feed_eof(self) -> Any:
        return self.parser.feed_eof()


class BoundedWebSocket(engineio_aiohttp.WebSocket):
    """engine.io's aiohttp WebSocket: bytes before authentication bounded, text frames that are
    not engine.io packets refused (engine.io would raise on them outside its error handling)."""

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        request = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size)
        await self._sock.prepare(request)
        self.environ = environ
        socket = getattr(self.handler, "__self__", None)
        bounds: ConnectionBounds = self.server.bounds
        sid = getattr(socket, "sid", "")
        protocol = request.protocol
        if sid and not bounds.is_authenticated(sid) and protocol is not None and protocol._payload_parser is not None:

            key = bounds.key(sid)  # (the connection may be closed already when its bytes come)

            def exceeded() -> None:
                bounds.log.warning(key, "client %s: closed: it sent more than %d bytes before authenticating "
                                   "(max_unauthenticated_bytes)", key, bounds.settings.max_unauthenticated_bytes)  # fmt: skip
                if request.transport is not None:
                    request.transport.abort()

            protocol._payload_parser = _PreAuthGate(protocol._payload_parser, bounds.settings.max_unauthenticated_bytes,
                                                    lambda: bounds.is_authenticated(sid), exceeded)  # fmt: skip
        self._sid = sid
        await self.handler(self)
        return self._sock

    async def wait(self) -> str | bytes:
        msg = await self._sock.receive()
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            raise OSError()  # closed (engine.io ends the connection on it)
        data = msg.data
        if isinstance(data, str):
            problem = engineio_text_problem(data)
            if problem is not None:
                self.server.bounds.warn(getattr(self, "_sid", ""), "closed: it sent %s", problem)
                raise OSError()
        return data


class _Body:
    """A long-polling POST body already read (and checked), as engine.io reads it."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, length: int = -1) -> bytes:
        data, self.data = self.data, b""
        return data


class BoundedEngineIO(engineio.AsyncServer):
    """engine.io's server: connections per client, long-polling bodies before authentication,
    and malformed long-polling payloads refused before engine.io parses them."""

    bounds: ConnectionBounds  # set per server (a subclass per socket.io server)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        drivers: dict[str, Any] = getattr(self, "_async")  # noqa: B009 -- untyped in engine.io
        translate = drivers["translate_request"]

        def translate_request(request: web.Request) -> dict[str, Any]:
            environ: dict[str, Any] = translate(request)
            body = request.get(_BODY)
            if body is not None:
                environ["wsgi.input"] = _Body(body)
            return environ

        setattr(self, "_async", {**drivers, "websocket": BoundedWebSocket, "translate_request": translate_request})  # noqa: B010

    async def handle_request(self, *args: Any, **kwargs: Any) -> web.StreamResponse:
        request: web.Request = args[0]
        sid = request.query.get("sid")
        bounds = self.bounds
        if request.method == "GET" and sid is None:  # a new connection
            key = bounds.clients.key(request)
            refusal = bounds.refusal(key)
            if refusal is not None:
                bounds.log.warning(key, "client %s: connection refused: %s", key, refusal.message)
                return json_error(refusal)
        elif request.method == "POST" and sid is not None and sid in self.sockets:
            limit = bounds.settings.max_unauthenticated_bytes
            if not bounds.is_authenticated(sid) and (request.content_length or 0) > limit:
                bounds.warn(sid, "closed: it sent %s bytes before authenticating (max_unauthenticated_bytes is %d)",
                            request.content_length, limit)  # fmt: skip
                await self.disconnect(sid)
                return json_error(TooLargeError(f"{request.content_length} bytes before authenticating; "
                                                f"at most {limit} (max_unauthenticated_bytes)"))  # fmt: skip
            body = await request.read()
            problem = _payload_problem(body)
            if problem is not None:
                bounds.warn(sid, "closed: it sent %s", problem)
                await self.disconnect(sid)
                return json_error(BadRequestError(f"not an engine.io payload: {problem}"))
            request[_BODY] = body
        return await super().handle_request(*args, **kwargs)


def _payload_problem(body: bytes) -> str | None:
    """Why a long-polling POST body is not an engine.io payload (None: it is)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "a long-polling body that is not UTF-8"
    if text.startswith("d="):
        return "a JSONP long-polling body (not served)"
    packets = text.split("\x1e") if text else []
    if len(packets) > engineio.payload.Payload.max_decode_packets:
        return f"a long-polling body of {len(packets)} packets"
    for packet in packets:
        problem = engineio_text_problem(packet)
        if problem is not None:
            return problem
    return None


class BoundedServer(socketio.AsyncServer):
    """python-socketio's server with the bounds above; everything else as it does it."""

    def __init__(self, bounds: ConnectionBounds, **kwargs: Any) -> None:
        self.bounds = bounds
        super().__init__(**kwargs)
        self._handling: set[asyncio.Task[Any]] = set()

    def _engineio_server_class(self) -> type:
        return type("BoundedEngineIOServer", (BoundedEngineIO,), {"bounds": self.bounds})

    # -- connections -----------------------------------------------------------------------------
    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        await super()._handle_eio_connect(eio_sid, environ)
        bounds = self.bounds
        key = bounds.clients.environ_key(environ)
        refusal = bounds.refusal(key)  # (checked at the handshake too: this covers handshakes side by side)
        if refusal is not None:
            self.environ.pop(eio_sid, None)
            return refusal.message
        bounds.opened(eio_sid, key, self._auth_expired)
        return None

    def _auth_expired(self, eio_sid: str) -> None:
        if self.bounds.is_authenticated(eio_sid) or eio_sid not in self.eio.sockets:
            return
        self.bounds.warn(eio_sid, "closed: it did not authenticate within %g s (auth_timeout_s)",
                         self.bounds.settings.auth_timeout_s)  # fmt: skip
        self._close_later(eio_sid)

    def _close_later(self, eio_sid: str) -> None:
        task = asyncio.ensure_future(self.eio.disconnect(eio_sid))
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        try:
            await super()._handle_eio_disconnect(eio_sid, reason)
        finally:
            self._binary_packet.pop(eio_sid, None)
            self.bounds.closed(eio_sid)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        await super()._handle_connect(eio_sid, namespace, data)
        if self.manager.sid_from_eio_sid(eio_sid, namespace or "/") is not None:
            self.bounds.authenticated(eio_sid)
        elif not self.bounds.is_authenticated(eio_sid):  # refused (a wrong token): no second try on it
            self.bounds.warn(eio_sid, "closed: its connection to %s was refused", namespace or "/")
            self._close_later(eio_sid)

    # -- messages --------------------------------------------------------------------------------
    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or socket.closing or socket.closed:
            self._binary_packet.pop(eio_sid, None)  # being closed: what it still sent is dropped
            return
        try:
            parsed = self._parse(eio_sid, data)
        except EventTooLargeError as exc:
            self._binary_packet.pop(eio_sid, None)
            self.bounds.warn(eio_sid, "closed: it sent %s", exc)
            await self.eio.disconnect(eio_sid)
            return
        except MalformedPacketError as exc:
            await self._malformed(eio_sid, str(exc), data)
            return
        if parsed is None:
            return  # an attachment is still to come
        pkt, size = parsed
        kind = pkt.packet_type
        if kind == sio_packet.CONNECT:
            await self._handle_connect(eio_sid, pkt.namespace, pkt.data)
        elif kind == sio_packet.DISCONNECT:
            await self._handle_disconnect(eio_sid, pkt.namespace, self.reason.CLIENT_DISCONNECT)
        elif kind in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
            await self._event(eio_sid, pkt, size)
        else:  # ACK, BINARY_ACK
            await self._handle_ack(eio_sid, pkt.namespace, pkt.id, pkt.data)

    def _parse(self, eio_sid: str, data: Any) -> tuple[Any, int] | None:
        """The packet ``data`` completes and its size (None: it awaits an attachment); raises
        ``MalformedPacketError`` for what does not parse, ``EventTooLargeError`` beyond the limits."""
        connected = self.bounds.is_authenticated(eio_sid)
        pending = self._binary_packet.get(eio_sid)
        try:
            if pending is not None:
                if not isinstance(data, bytes):
                    raise MalformedPacketError("a text message where a binary attachment was due")
                if not pending.add_attachment(data):
                    return None
                del self._binary_packet[eio_sid]
                return pending, getattr(pending, "_attached_bytes", 0)
            if not isinstance(data, str):
                raise MalformedPacketError("a binary message that no event announced")
            pkt = self.packet_class(encoded_packet=data)
        except (EventTooLargeError, MalformedPacketError):
            self._binary_packet.pop(eio_sid, None)
            raise
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, RecursionError) as exc:
            self._binary_packet.pop(eio_sid, None)
            raise MalformedPacketError(f"a Socket.IO packet that does not parse ({type(exc).__name__})") from None
        kind = pkt.packet_type
        if not isinstance(kind, int) or kind not in range(7) or kind == sio_packet.CONNECT_ERROR:
            raise MalformedPacketError(f"a Socket.IO packet of unknown type {str(kind)[:20]!r}")
        if not connected and kind != sio_packet.CONNECT:
            raise MalformedPacketError("a Socket.IO packet other than CONNECT before authenticating")
        if kind in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK):
            if pkt.attachment_count < 1:
                raise MalformedPacketError("a binary Socket.IO packet without attachments")
            self._binary_packet[eio_sid] = pkt
            return None
        return pkt, len(data)

    def _event_problem(self, namespace: str, data: Any) -> str | None:
        """Why an event is not one this server handles (None: it is)."""
        if isinstance(data, list) and data and data[0] == REFUSED_EVENT:
            # refused while decoding (its JSON, or a reserved name: no client's event gets this
            # name, see _BoundedPacket.decode); the namespace answers why (events.py)
            return None
        if not isinstance(data, list) or not data:
            return "an event must be [name, payload]"
        name = data[0]
        if not isinstance(name, str):
            return f"an event's name must be a string, got {type(name).__name__}"
        if name in RESERVED_EVENTS:
            return f"event {name[:100]!r} is reserved"
        handler = self.namespace_handlers.get(namespace)
        if name not in self.handlers.get(namespace, {}) and not (
            handler is not None and hasattr(handler, "on_" + name.replace("-", "_"))
        ):
            return f"unknown event {name[:100]!r}"
        return None

    async def _event(self, eio_sid: str, pkt: Any, size: int) -> None:
        namespace = pkt.namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            await self._malformed(eio_sid, f"an event for namespace {namespace[:100]!r} it is not connected to", None)
            return
        problem = self._event_problem(namespace, pkt.data)
        if problem is not None:
            await self._refuse(eio_sid, namespace, pkt.id, problem)
            return
        gate = self.bounds.gates.get(eio_sid)
        if gate is not None:  # past the bound this connection's reader waits here: TCP pushes back
            await gate.enter(size, lambda: self._reader_held(eio_sid))
            if not self.manager.is_connected(sid, namespace):
                gate.leave(size)
                return  # gone while it waited
        task = asyncio.ensure_future(self._run_event(sid, eio_sid, pkt.data, namespace, pkt.id, gate, size))
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

    def _reader_held(self, eio_sid: str) -> None:
        """Its reader is held here while its events are answered: its PONG is behind its own
        events, so its ping clock starts again (engine.io would close it for not answering)."""
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None and socket.last_ping:
            socket.last_ping = time.time()

    async def _run_event(self, sid: str, eio_sid: str, data: list[Any], namespace: str, ack_id: int | None,
                         gate: Gate | None, size: int) -> None:  # fmt: skip
        try:
            await self._handle_event_internal(self, sid, eio_sid, data, namespace, ack_id)
        finally:
            if gate is not None:
                gate.leave(size)

    async def _malformed(self, eio_sid: str, problem: str, raw: Any) -> None:
        """A packet that does not parse: an error ack if it is an event with an id from an
        authenticated connection, else the connection is closed (a line in the log, limited)."""
        head = _EVENT_HEAD.match(raw) if isinstance(raw, str) else None
        if self.bounds.is_authenticated(eio_sid) and head is not None:
            namespace = head.group(1)[:-1] if head.group(1) else "/"
            await self._refuse(eio_sid, namespace, int(head.group(2)), problem)
            return
        if self.bounds.is_authenticated(eio_sid):
            self.bounds.warn(eio_sid, "ignored %s", problem)
            return
        self.bounds.warn(eio_sid, "closed: it sent %s", problem)
        await self.eio.disconnect(eio_sid)

    async def _refuse(self, eio_sid: str, namespace: str, ack_id: int | None, problem: str) -> None:
        """A malformed event of an authenticated connection: answered ``bad_request`` (if it
        asked for an ack), logged (limited); the connection stays."""
        self.bounds.warn(eio_sid, "%s%s", problem, " (answered with an error ack)" if ack_id is not None else "")
        if ack_id is not None:
            ack = error_ack(BadRequestError(problem))
            await self._send_packet(eio_sid, self.packet_class(sio_packet.ACK, namespace=namespace, id=ack_id, data=[ack]))


def redis_options() -> dict[str, Any]:
    """Options for every redis-py client of the server: redis-py 8 reads its own package metadata
    (a file) for CLIENT SETINFO at each new connection, on the event loop, unless the version is
    given: it is, from the module."""
    import redis

    return {"lib_name": "redis-py", "lib_version": redis.__version__}


class CountingRedisManager(socketio.AsyncRedisManager):
    """python-socketio's Redis manager, whose publish failures are raised instead of only logged
    (python-socketio retries once, then logs and drops): the server's Emitter counts each event
    lost so (``camingest_emits_dropped_total``) and says once per outage what happened."""

    connected: bool

    async def _publish(self, data: Any) -> Any:
        try:
            if not self.connected:
                self._redis_connect()
            return await self.redis.publish(self.channel, self.json.dumps(data))
        except Exception as exc:
            self.connected = False
            raise ConnectionError(f"Redis: {exc}") from None


def make_socketio(settings: Settings, clients: Clients) -> BoundedServer:
    packet = type(
        "BoundedPacket",
        (_BoundedPacket,),
        {"max_bytes": settings.max_message_bytes, "max_attachments": settings.max_event_attachments},
    )
    clustered: dict[str, Any] = {}
    if settings.redis is not None:
        # several nodes: emits reach the sessions' pages through Redis wherever they are
        # connected; WebSocket only, so no sticky routing is needed behind the load balancer
        clustered = {"client_manager": CountingRedisManager(settings.redis, redis_options=redis_options()),
                     "transports": ["websocket"]}  # fmt: skip
    return BoundedServer(
        ConnectionBounds(settings, clients),
        serializer=packet,
        json=StrictJSON(settings.max_json_depth),  # no NaN either way, nothing refused reaches a handler
        async_mode="aiohttp",
        **clustered,
        cors_allowed_origins=socketio_origin_check(settings),
        max_http_buffer_size=settings.max_message_bytes,
        ping_interval=10,
        ping_timeout=20,
    )
