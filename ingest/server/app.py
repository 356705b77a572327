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
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from ingest.config import Settings
from ingest.exceptions import IngestError
from ingest.metrics import Metrics
from ingest.recording.analysis_sink import AnalysisSink, NoAnalysis
from ingest.recording.lifecycle import SessionLifecycle
from ingest.recording.session import SessionRegistry
from ingest.recording.snapshots import SnapshotService
from ingest.server.access import LOOPBACK_NAMES, access_middleware
from ingest.server.context import CONTEXT, LoopMonitor, ServerContext
from ingest.server.enrolment import EnrolmentService
from ingest.server.events import IngestNamespace
from ingest.server.export_jobs import ExportJobs
from ingest.server.gallery_routes import ENROLMENT
from ingest.server.responses import errors_as_json
from ingest.server.routes import add_routes
from ingest.server.sio import make_socketio
from storage.store import SessionStore

log = logging.getLogger("camingest")
NAMESPACE = web.AppKey("namespace", IngestNamespace)


def add_gauges(ctx: ServerContext, workers: Sequence[Any], snapshots_waiting: Callable[[], int]) -> None:
    """Gauges read when /metrics is scraped: nothing is counted on the hot paths for them."""
    metrics, settings = ctx.metrics, ctx.settings
    metrics.gauge("camingest_sessions_recording", "Sessions recording in this process", lambda: len(ctx.registry))
    metrics.gauge("camingest_event_loop_lag_seconds", "How late a 50 ms timer fired, last sample",
                  lambda: ctx.loop_monitor.last_lag_ms / 1000)  # fmt: skip
    metrics.gauge("camingest_pending_writes", "Chunks received, not yet committed (max_pending_writes bounds it)",
                  ctx.pending_writes)  # fmt: skip
    metrics.gauge("camingest_held_bytes", "Incomplete frames held back by the sessions' readers",
                  lambda: ctx.registry.held_total)  # fmt: skip
    metrics.gauge("camingest_snapshot_queue", "Snapshots waiting for analysis", snapshots_waiting)
    metrics.gauge("camingest_workers_busy", "Analysis workers with work in hand",
                  lambda: sum(1 for w in workers if w.outstanding))  # fmt: skip
    metrics.gauge("camingest_workers", "Analysis worker processes", lambda: len(workers))
    metrics.disk_gauge(settings.data_dir)


def build_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[access_middleware(settings), errors_as_json], client_max_size=settings.max_message_bytes
    )
    sio = make_socketio(settings)
    sio.attach(app)

    async def emit(event: str, data: dict[str, Any], room: str) -> None:
        await sio.emit(event, data, room=room)

    async def context_ctx(app: web.Application) -> AsyncIterator[None]:
        store = SessionStore(settings.data_dir, settings.max_pending_writes)
        for note in await asyncio.to_thread(store.open):
            log.warning("recovery: %s", note)
        metrics = Metrics()
        registry = SessionRegistry(store, settings)
        pipeline: AnalysisSink
        workers: Sequence[Any] = []
        snapshots_waiting: Callable[[], int] = lambda: 0  # noqa: E731
        analyse = None
        if settings.analysis:
            from ingest.live.pipeline import LivePipeline  # imports PyAV and starts worker processes

            live = LivePipeline(settings, store, metrics, emit, registry.mark_failed)
            pipeline, workers, snapshots_waiting, analyse = live, live.workers, live.snapshots.waiting, live.analyse_image
        else:
            pipeline = NoAnalysis()
        ctx = ServerContext(
            settings=settings,
            store=store,
            registry=registry,
            io_pool=ThreadPoolExecutor(settings.io_threads, thread_name_prefix="chunk-io"),
            write_slots=asyncio.Semaphore(settings.max_pending_writes),
            pipeline=pipeline,
            snapshots=SnapshotService(store, settings, analyse, emit),
            loop_monitor=LoopMonitor(),
            preview_pool=ThreadPoolExecutor(settings.max_previews, thread_name_prefix="preview"),
            preview_slots=asyncio.Semaphore(settings.max_previews),
            upload_slots=asyncio.Semaphore(settings.max_uploads),
            lifecycle=SessionLifecycle(settings, store, registry, pipeline, metrics),
            metrics=metrics,
            exports=ExportJobs(store),
        )
        add_gauges(ctx, workers, snapshots_waiting)
        app[CONTEXT] = ctx
        namespace = IngestNamespace(ctx)
        sio.register_namespace(namespace)
        app[NAMESPACE] = namespace
        ctx.loop_monitor.start()  # after start-up (spawning workers), which happens before serving
        await ctx.lifecycle.recover()
        ctx.lifecycle.start()
        try:
            yield
        finally:
            await ctx.close()

    async def close_connections(app: web.Application) -> None:
        # aiohttp waits for open handlers at shutdown, and a Socket.IO websocket stays open until
        # its ping times out (~30 s): close them first (aiohttp's advice for websockets)
        namespace = app.get(NAMESPACE)
        if namespace is not None and not namespace.closing:  # aiohttp may signal twice
            await namespace.close(settings.shutdown_grace_s)
            log.info("shutdown: connections closed")

    async def enrolment_ctx(app: web.Application) -> AsyncIterator[None]:
        enrolment = EnrolmentService(settings)
        app[ENROLMENT] = enrolment
        try:
            yield
        finally:
            await asyncio.to_thread(enrolment.close)

    app.cleanup_ctx.append(enrolment_ctx)
    app.cleanup_ctx.append(context_ctx)
    app.on_shutdown.append(close_connections)
    add_routes(app, settings.pages_dir)
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
    sockets = getattr(site._server, "sockets", None) or []  # the bound socket, for --port 0
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
