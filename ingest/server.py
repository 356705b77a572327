"""The camingest server: aiohttp + python-socketio in one process.

``build_app`` wires the pieces (browser -> Socket.IO -> session -> reader -> store -> pipeline);
``serve`` runs it until SIGINT/SIGTERM and then shuts down in order: stop taking connections,
finish in-flight commits, stop the workers, close the index.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import socketio
from aiohttp import web

from ingest.access import LOOPBACK_NAMES, access_middleware, socketio_origin_check
from ingest.config import Settings
from ingest.exceptions import IngestError
from ingest.exports import Exports
from ingest.gallery import GalleryService
from ingest.gallery_routes import GALLERY, MAX_PHOTO_BYTES, add_gallery_routes
from ingest.http import add_routes, errors_as_json
from ingest.lifecycle import SessionLifecycle
from ingest.metrics import Metrics
from ingest.protocol import IngestNamespace
from ingest.services import SERVICES, LoopMonitor, NoAnalysis, Pipeline, Services
from ingest.session import SessionRegistry
from ingest.snapshots import SnapshotService
from ingest.upload import clear_leftovers
from storage.store import SessionStore

log = logging.getLogger("camingest")
NAMESPACE = web.AppKey("namespace", IngestNamespace)

# Threads writing and fsyncing chunk files; overlapping fsyncs is what lets one disk keep up
# with hundreds of recorders (see BENCHMARKS.md).
IO_THREADS = 16


MAX_ATTACHMENTS = 4  # binary attachments of one event; ours carry one (chunk or snapshot data)


class EventTooLargeError(ValueError):
    pass


class _BoundedPacket(socketio.packet.Packet):
    """A Socket.IO packet whose binary attachments together stay within ``max_bytes``.

    engine.io's ``max_http_buffer_size`` bounds each attachment on its own, and python-socketio
    keeps every attachment of an event in memory until the last one arrives: eight 30 MB ones
    made one 240 MB event. Here the count and the running total are checked as they arrive."""

    max_bytes = 0  # set per server (a subclass per Settings)

    def decode(self, encoded_packet: str) -> int:
        count = super().decode(encoded_packet)
        if count > MAX_ATTACHMENTS:
            raise EventTooLargeError(f"an event with {count} binary attachments (at most {MAX_ATTACHMENTS})")
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
            self._binary_packet.pop(eio_sid, None)  # type: ignore[attr-defined]
            log.warning("closing a connection that sent %s", exc)
            await self.eio.disconnect(eio_sid)


def make_socketio(settings: Settings) -> socketio.AsyncServer:
    packet = type("BoundedPacket", (_BoundedPacket,), {"max_bytes": settings.max_message_bytes})
    return BoundedServer(
        serializer=packet,
        async_mode="aiohttp",
        cors_allowed_origins=socketio_origin_check(settings),
        max_http_buffer_size=settings.max_message_bytes,
        ping_interval=10,
        ping_timeout=20,
    )


def add_gauges(services: Services) -> None:
    """Gauges read when /metrics is scraped: nothing is counted on the hot paths for them."""
    metrics, settings, pipeline = services.metrics, services.settings, services.pipeline
    workers = getattr(pipeline, "workers", [])
    metrics.gauge("camingest_sessions_recording", "Sessions recording in this process", lambda: len(services.registry))
    metrics.gauge("camingest_event_loop_lag_seconds", "How late a 50 ms timer fired, last sample",
                  lambda: services.loop_monitor.last_lag_ms / 1000)  # fmt: skip
    metrics.gauge("camingest_pending_writes", "Chunks received, not yet committed (max_pending_writes bounds it)",
                  lambda: settings.max_pending_writes - services.write_slots._value)  # fmt: skip
    metrics.gauge("camingest_held_bytes", "Incomplete frames held back by the sessions' readers",
                  lambda: services.registry.held_total)  # fmt: skip
    metrics.gauge("camingest_snapshot_queue", "Snapshots waiting for analysis", pipeline.snapshots_waiting)
    metrics.gauge("camingest_workers_busy", "Analysis workers with work in hand",
                  lambda: sum(1 for w in workers if w.outstanding))  # fmt: skip
    metrics.gauge("camingest_workers", "Analysis worker processes", lambda: len(workers))
    metrics.disk_gauge(settings.data_dir)


def make_pipeline(settings: Settings, store: SessionStore, sio: socketio.AsyncServer, metrics: Metrics) -> Pipeline:
    if not settings.analysis:
        return NoAnalysis()
    from ingest.pipeline import LivePipeline  # imports PyAV and starts worker processes

    return LivePipeline(settings, store, sio, metrics)


def build_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[access_middleware(settings), errors_as_json], client_max_size=settings.max_message_bytes
    )
    sio = make_socketio(settings)
    sio.attach(app)

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        store = SessionStore(settings.data_dir, settings.max_pending_writes)
        for note in await asyncio.to_thread(store.open):
            log.warning("recovery: %s", note)
        await asyncio.to_thread(clear_leftovers, settings.data_dir)
        io_pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="chunk-io")
        metrics = Metrics()
        pipeline = make_pipeline(settings, store, sio, metrics)
        snapshots = SnapshotService(store, settings)
        loop_monitor = LoopMonitor()
        registry = SessionRegistry(store, settings)
        lifecycle = SessionLifecycle(settings, store, registry, pipeline, metrics)
        services = Services(
            settings=settings,
            store=store,
            registry=registry,
            io_pool=io_pool,
            write_slots=asyncio.Semaphore(settings.max_pending_writes),
            pipeline=pipeline,
            snapshots=snapshots,
            loop_monitor=loop_monitor,
            preview_pool=ThreadPoolExecutor(settings.max_previews, thread_name_prefix="preview"),
            preview_slots=asyncio.Semaphore(settings.max_previews),
            upload_slots=asyncio.Semaphore(settings.max_uploads),
            lifecycle=lifecycle,
            metrics=metrics,
            exports=Exports(store),
        )
        add_gauges(services)
        pipeline.attach(services.registry, snapshots)
        app[SERVICES] = services
        namespace = IngestNamespace(services)
        sio.register_namespace(namespace)
        app[NAMESPACE] = namespace
        loop_monitor.start()  # after start-up (spawning workers), which happens before serving
        await lifecycle.recover()
        lifecycle.start()
        try:
            yield
        finally:
            loop_monitor.stop()
            await lifecycle.close(settings.shutdown_grace_s)
            log.info("shutdown: finalizes done")
            await snapshots.close()
            await pipeline.close()
            log.info("shutdown: analysis workers stopped")
            io_pool.shutdown(wait=True)
            await asyncio.to_thread(services.exports.close)
            services.preview_pool.shutdown(wait=False, cancel_futures=True)
            services.registry.close_all()
            await asyncio.to_thread(store.close)
            log.info("shutdown: index closed")

    async def close_connections(app: web.Application) -> None:
        # aiohttp waits for open handlers at shutdown, and a Socket.IO websocket stays open until
        # its ping times out (~30 s): close them first (aiohttp's advice for websockets)
        namespace = app.get(NAMESPACE)
        if namespace is not None and not namespace.closing:  # aiohttp may signal twice
            await namespace.close(settings.shutdown_grace_s)
            log.info("shutdown: connections closed")

    gallery = GalleryService(settings.data_dir, settings.landmark_engine, settings.max_snapshot_pixels)
    app[GALLERY] = gallery
    app[MAX_PHOTO_BYTES] = settings.max_snapshot_bytes

    async def close_gallery(app: web.Application) -> None:
        gallery.close()

    app.on_cleanup.append(close_gallery)
    app.cleanup_ctx.append(services_ctx)
    app.on_shutdown.append(close_connections)
    add_routes(app, settings.pages_dir)
    add_gallery_routes(app)
    return app


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """https/wss with the configured certificate, or None for plain http."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ValueError("give both --tls-cert and --tls-key, or neither")
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use the certificate {settings.tls_cert} with the key {settings.tls_key}: {exc}") from None
    return context


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; prints the URL once listening."""
    app = build_app(settings)
    # aiohttp's own wait for open handlers: short, because close_connections has already let the
    # events in hand finish (up to shutdown_grace_s) and closed every connection
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
    ssl_context = tls_context(settings)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:  # a bad --host, a port in use or reserved: say which, not errno
        await runner.cleanup()
        raise IngestError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
    port = sockets[0].getsockname()[1] if sockets else settings.port
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    scheme = "https" if ssl_context is not None else "http"
    print(f"camingest serving {scheme}://{host}:{port}/ (data: {settings.data_dir})", flush=True)
    if settings.token is None and settings.host not in LOOPBACK_NAMES:
        print(
            f"camingest: warning: serving on {settings.host} without an access token: anyone who can reach it can "
            "read and delete every recording (set --token or CAMINGEST_TOKEN)",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stop.is_set():
            stop.set()
            return
        # a second one: out now. Nothing is lost: every acked chunk is already fsynced and
        # committed, and the next start repairs the rest as after kill -9 (workers see EOF).
        print("camingest: second signal, exiting now", file=sys.stderr, flush=True)
        os._exit(130)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await stop.wait()
    finally:
        print("camingest shutting down", flush=True)
        await runner.shutdown()
        await runner.cleanup()
