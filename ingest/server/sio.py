"""The Socket.IO server with its hardening: bounds python-socketio does not have itself.

This subclasses python-socketio's own classes and overrides two of their methods
(``Packet.decode`` / ``add_attachment`` and ``AsyncServer._handle_eio_message``): when
python-socketio changes, this is the file to check.
"""

from __future__ import annotations

import logging
from typing import Any

import socketio

from ingest.config import Settings
from ingest.server.access import socketio_origin_check
from ingest.server.strict_json import JSONRefusedError, StrictJSON

log = logging.getLogger("camingest")
# the name a refused event is handed to the namespace under (ingest/server/events.py answers it)
REFUSED_EVENT = "\x00refused"
RESERVED_EVENTS = ("connect", "disconnect", "connect_error", REFUSED_EVENT)


class EventTooLargeError(ValueError):
    pass


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


class BoundedServer(socketio.AsyncServer):
    """Closes the connection of a client whose event is over the limits (nothing of it is
    handled or kept); everything else as python-socketio does it."""

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except EventTooLargeError as exc:
            self._binary_packet.pop(eio_sid, None)
            log.warning("closing a connection that sent %s", exc)
            await self.eio.disconnect(eio_sid)
        except ValueError as exc:  # not a Socket.IO packet (python-socketio raises; engine.io logs a traceback)
            self._binary_packet.pop(eio_sid, None)
            log.warning("closing a connection that sent a malformed packet: %s", str(exc)[:200])
            await self.eio.disconnect(eio_sid)


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


def make_socketio(settings: Settings) -> socketio.AsyncServer:
    packet = type(
        "BoundedPacket",
        (_BoundedPacket,),
        {"max_bytes": settings.max_message_bytes, "max_attachments": settings.max_event_attachments},
    )
    clustered: dict[str, Any] = {}
    if settings.redis is not None:
        # several nodes: emits reach the sessions' pages through Redis wherever they are
        # connected; WebSocket only, so no sticky routing is needed behind the load balancer
        clustered = {"client_manager": CountingRedisManager(settings.redis, redis_options=redis_options()), "transports": ["websocket"]}
    return BoundedServer(
        serializer=packet,
        json=StrictJSON(settings.max_json_depth),  # no NaN either way, nothing refused reaches a handler
        async_mode="aiohttp",
        **clustered,
        cors_allowed_origins=socketio_origin_check(settings),
        max_http_buffer_size=settings.max_message_bytes,
        ping_interval=10,
        ping_timeout=20,
    )
