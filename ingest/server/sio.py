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

log = logging.getLogger("camingest")


class EventTooLargeError(ValueError):
    pass


class _BoundedPacket(socketio.packet.Packet):
    """A Socket.IO packet whose binary attachments together stay within ``max_bytes``.

    engine.io's ``max_http_buffer_size`` bounds each attachment on its own, and python-socketio
    keeps every attachment of an event in memory until the last one arrives: eight 30 MB ones
    made one 240 MB event. Here the count and the running total are checked as they arrive."""

    max_bytes = 0  # set per server (a subclass per Settings)
    max_attachments = 0

    def decode(self, encoded_packet: str) -> int:
        count = super().decode(encoded_packet)
        if count > self.max_attachments:
            raise EventTooLargeError(f"an event with {count} binary attachments (at most {self.max_attachments})")
        self._attached_bytes = 0
        return count

    def add_attachment(self, attachment: bytes) -> bool:
        self._attached_bytes = getattr(self, "_attached_bytes", 0) + len(attachment)
        if self._attached_bytes > self.max_bytes:
            raise EventTooLargeError(f"an event of more than {self.max_bytes} bytes of attachments")
        return super().add_attachment(attachment)


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


class CountingRedisManager(socketio.AsyncRedisManager):
    """python-socketio's Redis manager, counting what it could not publish (it only logs it):
    a Redis down drops emits to other nodes' clients, and the operator should see how many."""

    failed = 0
    connected: bool

    async def _publish(self, data: Any) -> Any:
        try:
            if not self.connected:
                self._redis_connect()
            return await self.redis.publish(self.channel, self.json.dumps(data))
        except Exception:
            self.connected = False
            CountingRedisManager.failed += 1
            return None


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
        clustered = {"client_manager": CountingRedisManager(settings.redis), "transports": ["websocket"]}
    return BoundedServer(
        serializer=packet,
        async_mode="aiohttp",
        **clustered,
        cors_allowed_origins=socketio_origin_check(settings),
        max_http_buffer_size=settings.max_message_bytes,
        ping_interval=10,
        ping_timeout=20,
    )
