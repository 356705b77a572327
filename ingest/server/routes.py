"""The server's HTTP surface: the pages, their static files, health and metrics, and every
resource's routes (``*_routes.py``), added in one place."""

from __future__ import annotations

import asyncio
from importlib import resources
from pathlib import Path

from aiohttp import web

from ingest.server.access_routes import add_access_routes
from ingest.server.context import CONTEXT
from ingest.server.export_routes import add_export_routes
from ingest.server.exposure import add_files, protect
from ingest.server.gallery_routes import add_gallery_routes
from ingest.server.responses import json_response
from ingest.server.session_routes import add_session_routes
from ingest.server.upload_routes import add_upload_routes

SOCKET_IO_CLIENT = "socket.io-4.8.4.min.js"  # web/vendor/


def web_root() -> Path:
    return Path(str(resources.files("web")))


async def socketio_client(request: web.Request) -> web.StreamResponse:
    """The Socket.IO browser client where Node's socket.io serves it, for pages written for it."""
    return web.FileResponse(web_root() / "vendor" / SOCKET_IO_CLIENT)


async def index_page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(web_root() / "index.html")


async def sessions_page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(web_root() / "sessions.html")


async def favicon(request: web.Request) -> web.StreamResponse:
    """Browsers ask for /favicon.ico on every page: the pages' icon, not a 404."""
    return web.FileResponse(web_root() / "favicon.svg", headers={"Cache-Control": "max-age=86400"})


async def health(request: web.Request) -> web.StreamResponse:
    """Liveness for anyone (``ok`` and the node); the figures only for a viewer or admin (or
    on a server without tokens)."""
    ctx = request.app[CONTEXT]
    ownership = ctx.registry.ownership
    principal = request.get("principal")
    if principal is None or not principal.may_view:
        return json_response({"ok": True, "node": ownership.node if ownership is not None else None})
    monitor = ctx.loop_monitor
    answer: dict[str, object] = {
        "ok": True,
        "sessions_recording": len(ctx.registry),
        "sessions_loading": ctx.registry.loading(),
        "loop_lag_ms": {"last": round(monitor.last_lag_ms, 2), "max": round(monitor.max_lag_ms, 2)},
        "node": None,
    }
    if ownership is not None:
        answer["node"] = ownership.node
        peers = await ownership.peers()
        # Redis away: the node goes on recording (nothing on the ack path waits for it), so it is
        # still ok; what it cannot know is who else is alive
        answer["peers"] = [peer["id"] for peer in peers] if peers is not None else None
        answer["registry"] = "ok" if peers is not None else "unreachable"
    return json_response(answer)


async def client_config(request: web.Request) -> web.StreamResponse:
    """What a page's client needs to connect: the Socket.IO transports (WebSocket only when
    several nodes serve behind one address: no sticky routing)."""
    ownership = request.app[CONTEXT].registry.ownership
    if ownership is None:
        return json_response({"transports": ["polling", "websocket"], "node": None})
    return json_response({"transports": ["websocket"], "node": ownership.node})


async def metrics(request: web.Request) -> web.StreamResponse:
    metrics = request.app[CONTEXT].metrics
    await asyncio.to_thread(metrics.refresh_disk)  # a statvfs: not on the loop
    body = metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def add_routes(app: web.Application, pages_dir: str | None = None) -> None:
    protect(app)  # security headers on every answer
    app.router.add_get("/", index_page)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/sessions", sessions_page)
    app.router.add_get("/favicon.ico", favicon)
    add_files(app, "/static/", web_root())
    app.router.add_get("/socket.io/socket.io.js", socketio_client)
    app.router.add_get("/socket.io/socket.io.min.js", socketio_client)
    if pages_dir is not None:  # files only: no dotfiles (.env), no folder listings
        add_files(app, "/pages/", pages_dir)
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/config", client_config)
    add_upload_routes(app)  # POST /api/sessions, before the session routes
    add_session_routes(app)
    add_export_routes(app)
    add_gallery_routes(app)
    add_access_routes(app)
