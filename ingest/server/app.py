"""The camingest server: aiohttp + python-socketio in one process.

``build_app`` wires the pieces (browser -> Socket.IO -> session -> reader -> store -> pipeline);
``serve`` runs it until SIGINT/SIGTERM and then shuts down in order: stop taking connections,
finish in-flight commits, stop the workers, close the index.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from ingest.config import Settings
from ingest.exceptions import IngestError
from ingest.metrics import Metrics
from ingest.recording.analysis_sink import AnalysisSink, NoAnalysis
from ingest.recording.lifecycle import SessionLifecycle
from ingest.recording.retention import Retention
from ingest.recording.session import SessionRegistry
from ingest.recording.snapshots import SnapshotService
from ingest.server.access import LOOPBACK_NAMES, access_middleware
from ingest.server.audit import AUDIT, AuditLog, audit_streamed
from ingest.server.clients import Clients, PerClient
from ingest.server.cluster import Cluster, NodeHooks
from ingest.server.context import CONTEXT, LoopMonitor, ServerContext
from ingest.server.emitter import Emitter
from ingest.server.enrolment import EnrolmentService
from ingest.server.events import IngestNamespace
from ingest.server.export_jobs import ExportJobs
from ingest.server.gallery_routes import ENROLMENT
from ingest.server.principals import AUTHORITY, TokenAuthority, load_keys
from ingest.server.proxies import Proxies
from ingest.server.responses import errors_as_json
from ingest.server.routes import add_routes
from ingest.server.session_routes import delete_session_data
from ingest.server.sio import make_socketio
from ingest.server.webhooks import Webhooks
from storage.leases import LeaseLostError

log = logging.getLogger("camingest")
NAMESPACE = web.AppKey("namespace", IngestNamespace)
CLUSTER = web.AppKey("cluster", Cluster)


def add_gauges(
    ctx: ServerContext, workers: Sequence[Any], snapshots_waiting: Callable[[], int], images_waiting: Callable[[], int]
) -> None:
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
    metrics.gauge("camingest_classic_frames_waiting", "Try-on images waiting for a worker (one per connection at most)",
                  images_waiting)  # fmt: skip
    metrics.gauge("camingest_workers_busy", "Analysis workers with work in hand",
                  lambda: sum(1 for w in workers if w.outstanding))  # fmt: skip
    metrics.gauge("camingest_workers", "Analysis worker processes", lambda: len(workers))
    metrics.disk_gauge(settings.data_dir)
    replicator = ctx.store.replicator
    if replicator is not None:
        stats = replicator.stats
        replicator.on_upload = metrics.segment_upload.observe
        metrics.gauge("camingest_upload_backlog_bytes", "Acknowledged bytes not yet in object storage",
                      lambda: stats.backlog_bytes)  # fmt: skip
        metrics.gauge("camingest_upload_backlog_sessions", "Sessions with chunks not yet in object storage",
                      lambda: stats.backlog_sessions)  # fmt: skip
        metrics.gauge("camingest_durable_lag_seconds", "How long the oldest acknowledged chunk not in object "
                      "storage has waited", lambda: stats.oldest_pending_s)  # fmt: skip
        metrics.gauge("camingest_object_store_up", "1 while object storage answers", lambda: float(stats.store_ok))
        metrics.gauge("camingest_segment_upload_failures", "Failed passes of uploads (total)", lambda: stats.failures)


def node_hooks(ctx: ServerContext, cluster: Cluster, workers: Sequence[Any]) -> NodeHooks:
    """What the cluster does with this node's sessions."""

    async def hand_over(session_id: str) -> int | None:
        session = ctx.registry.loaded(session_id)
        if session is None:
            await cluster.release(session_id)
            return None
        log.info("session %s: handing over (its tail to the store of record)", session_id)
        async with session.lock:  # no chunk of it in flight here
            if cluster.lease(session_id) is None:  # lost meanwhile (dropped): nothing of it is ours to upload
                drop(session_id)
                return None
            try:
                durable = await asyncio.to_thread(ctx.store.hand_over_data, session_id, ctx.settings.stop_durable_wait_s)
            except LeaseLostError:  # its lease ran out before the request was read (this node was frozen)
                cluster.lease_ran_out(session_id)
                return None
            drop(session_id)
            await cluster.release(session_id)
        log.info("session %s handed over (durable through seq %d)", session_id, durable)
        return durable

    def drop(session_id: str) -> None:
        ctx.registry.forget(session_id)
        ctx.pipeline.forget(session_id)
        ctx.lifecycle.forget_holder(session_id)

    def needed() -> set[str]:
        live = {s.id for s in ctx.registry.live()}
        return live | ctx.lifecycle.finalizing | {sid for sid in cluster.leases if ctx.pipeline.fill_status(sid)}

    def describe() -> dict[str, Any]:
        return {"sessions": len(ctx.registry), "workers": len(workers),
                "busy_workers": sum(1 for w in workers if w.outstanding)}  # fmt: skip

    return NodeHooks(hand_over, drop, needed, describe, ctx.lifecycle.take_unfinished)


async def hand_over_all(ctx: ServerContext, cluster: Cluster) -> None:
    """SIGTERM: every recording session's tail up and its lease released, then the clients go."""
    started = time.monotonic()
    sessions = [s.id for s in ctx.registry.live()]
    hooks = node_hooks(ctx, cluster, [])
    await asyncio.gather(*(hooks.hand_over(sid) for sid in sessions), return_exceptions=True)
    if sessions:
        log.info("shutdown: %d recording sessions handed over in %.1f s", len(sessions), time.monotonic() - started)


def build_app(settings: Settings, holder: str | None = None) -> web.Application:
    """The application; ``holder`` (who serves, where) is written into the data folder's lock,
    so that a second server or command refused by it can say which process holds it."""
    app = web.Application(
        middlewares=[access_middleware(settings), errors_as_json], client_max_size=settings.max_message_bytes
    )
    app.on_response_prepare.append(audit_streamed)  # a preview's audit line as it starts
    clients = Clients(settings.trusted_proxies)  # who a client is, for every per-client limit
    sio = make_socketio(settings, clients)
    sio.attach(app)

    async def context_ctx(app: web.Application) -> AsyncIterator[None]:
        store = await asyncio.to_thread(settings.open_store)  # boto3 reads its configuration files
        cluster = Cluster(settings, store, settings.redis) if settings.redis else None
        for note in await asyncio.to_thread(store.open, True, holder, cluster is not None):
            log.warning("recovery: %s", note)
        metrics = Metrics(node=cluster.node if cluster else None)
        authority = TokenAuthority(settings, await asyncio.to_thread(load_keys, settings), store)
        await asyncio.to_thread(authority.refresh)  # the denylist as it is, before the first request
        audit = AuditLog(settings.audit_log, settings.audit_queue, metrics, Proxies.of(settings.trusted_proxies))
        await asyncio.to_thread(audit.start)  # opens its file
        webhooks = Webhooks(settings, store, metrics, cluster.node if cluster else f"{socket.gethostname()}-{os.getpid()}")
        emitter = Emitter(sio, settings.max_queued_emits, metrics.emits_dropped)
        emitter.start()
        emit = emitter.emit
        registry = SessionRegistry(store, settings, ownership=cluster)
        pipeline: AnalysisSink
        workers: Sequence[Any] = []
        snapshots_waiting: Callable[[], int] = lambda: 0  # noqa: E731
        images_waiting: Callable[[], int] = lambda: 0  # noqa: E731
        analyse = None
        tryon = None
        if settings.analysis:
            from ingest.live.pipeline import LivePipeline  # imports PyAV and starts worker processes

            def failed(session_id: str, message: str) -> None:  # a decoding failure, found by the workers
                registry.mark_failed(session_id, message)
                webhooks.session_event("session.failed", session_id, {"error": message})

            live = LivePipeline(settings, store, metrics, emit, failed, refill_at_start=cluster is None,
                                fence=registry.fence)  # fmt: skip
            pipeline, workers, snapshots_waiting, analyse = live, live.workers, live.snapshots.waiting, live.analyse_image
            tryon, images_waiting = live.tryon, live.tryon.waiting
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
            previews=PerClient(settings.max_previews_per_client, "preview viewers", "max_previews_per_client"),
            upload_slots=asyncio.Semaphore(settings.max_uploads),
            lifecycle=SessionLifecycle(
                settings, store, registry, pipeline, metrics, take=cluster.take_unowned if cluster else None
            ),
            metrics=metrics,
            exports=ExportJobs(store, settings.max_export_s),
            tryon=tryon,
            thumbnail_slots=asyncio.Semaphore(settings.max_thumbnails),
            authority=authority,
            webhooks=webhooks,
            audit=audit,
            clients=clients,
        )
        add_gauges(ctx, workers, snapshots_waiting, images_waiting)
        webhooks.filling = lambda session_id: pipeline.fill_status(session_id) is not None

        def ended(session_id: str, summary: dict[str, Any]) -> None:
            webhooks.session_event("session.stopped", session_id, summary=summary)
            webhooks.watch_analysis(session_id)

        ctx.lifecycle.on_ended = ended
        ctx.exports.on_done = lambda job: webhooks.session_event(
            "export.done", job.session_id, {"export": job.describe()})
        retention = Retention(settings, store, metrics, lambda sid, reason: delete_session_data(ctx, sid, reason))
        app[CONTEXT] = ctx
        app[AUTHORITY] = authority
        app[AUDIT] = audit
        if cluster is not None:
            app[CLUSTER] = cluster
            cluster.start(node_hooks(ctx, cluster, workers))
        enrolment = EnrolmentService(settings, store.gallery, pipeline.gallery_changed)
        app[ENROLMENT] = enrolment
        namespace = IngestNamespace(ctx)
        sio.register_namespace(namespace)
        app[NAMESPACE] = namespace
        ctx.loop_monitor.start()  # after start-up (spawning workers), which happens before serving
        await ctx.lifecycle.recover()
        await ctx.exports.resume()  # exports a crash interrupted are encoded again
        ctx.lifecycle.start()
        authority.start()
        webhooks.start()
        retention.start()
        try:
            yield
        finally:
            await retention.close()
            await asyncio.to_thread(enrolment.close)  # its pool's shutdown joins a process
            await ctx.close()
            await emitter.close()
            if cluster is not None:
                await cluster.close()

    async def close_connections(app: web.Application) -> None:
        # aiohttp waits for open handlers at shutdown, and a Socket.IO websocket stays open until
        # its ping times out (~30 s): close them first (aiohttp's advice for websockets)
        namespace = app.get(NAMESPACE)
        cluster = app.get(CLUSTER)
        if namespace is not None and not namespace.closing:  # aiohttp may signal twice
            if cluster is not None:  # the other nodes take the recording sessions before the clients reconnect
                await hand_over_all(app[CONTEXT], cluster)
            await namespace.close(settings.shutdown_grace_s, reconnect=cluster is not None)
            log.info("shutdown: connections closed")

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
    for flag, path in (("--tls-cert", settings.tls_cert), ("--tls-key", settings.tls_key)):
        if not os.path.isfile(path):  # name the file: the SSL error would not say which
            raise ValueError(f"{flag} {path}: no such file")
        if not os.access(path, os.R_OK):
            raise ValueError(f"{flag} {path}: this user may not read it")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise ValueError(
            f"cannot use the certificate {settings.tls_cert} with the key {settings.tls_key}: {reason} "
            "(both must be PEM files, the key the certificate's own)"
        ) from None
    return context


def _listen_problem(exc: OSError, settings: Settings) -> str:
    """Why a listening socket could not be had, in the user's terms, and what to do."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {settings.port} is in use (another camingest serve, or another program); "
            "choose another with --port (--port 0 picks a free one)"
        )
    if exc.errno == errno.EACCES:
        return f"port {settings.port} needs privileges this user lacks (ports below 1024); choose another with --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{settings.host} is not an address of this machine; choose one with --host (default 127.0.0.1)"
    if isinstance(exc, socket.gaierror):
        return f"the host name {settings.host} does not resolve; give an address with --host (default 127.0.0.1)"
    return exc.strerror or str(exc)


def listen_socket(settings: Settings) -> socket.socket:
    """The server's listening socket, bound before anything else starts (workers, the data
    folder, its lock): a port in use is said at once, and nothing was created for it."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise IngestError(f"cannot listen on {settings.host}:{settings.port}: {_listen_problem(exc, settings)}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does: restarts need no wait
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise IngestError(f"cannot listen on {settings.host}:{settings.port}: {_listen_problem(exc, settings)}") from None
    sock.setblocking(False)
    return sock


async def serve(settings: Settings, sock: socket.socket | None = None) -> None:
    """Run until SIGINT/SIGTERM on ``sock`` (bound by ``listen_socket``; made here if not
    given); prints the URL once listening."""
    ssl_context = await asyncio.to_thread(tls_context, settings)  # reads the certificate files
    sock = sock or listen_socket(settings)
    port = sock.getsockname()[1]  # the bound port, for --port 0
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    scheme = "https" if ssl_context is not None else "http"
    url = f"{scheme}://{host}:{port}/"
    app = build_app(settings, holder=f"camingest serve, pid {os.getpid()}, {url}")
    # aiohttp's own wait for open handlers: short, because close_connections has already let the
    # events in hand finish (up to shutdown_grace_s) and closed every connection
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
    try:
        await runner.setup()
    except BaseException:
        sock.close()
        raise
    site = web.SockSite(runner, sock, ssl_context=ssl_context)
    await site.start()
    print(f"camingest serving {url} (data: {settings.data_dir})", flush=True)
    if settings.token is None and not (settings.secret or settings.secret_file) and settings.host not in LOOPBACK_NAMES:
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
