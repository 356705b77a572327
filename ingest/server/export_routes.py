"""HTTP routes of a session's exports: start one, follow its progress, download the file,
cancel or delete it."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ingest.exceptions import NotFoundError
from ingest.server.export_jobs import export_name
from ingest.server.payloads import export_request, json_body
from ingest.server.responses import json_response, send_range
from ingest.server.session_routes import context, session_id_of


async def list_exports(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    return json_response({"exports": await asyncio.to_thread(ctx.exports.list, session_id_of(request))})


async def start_export(request: web.Request) -> web.StreamResponse:
    """``POST .../exports`` with ``{"overlay": "landmarks"|"lips"|"none", "format": "mp4"|"webm"}``:
    202 and the export's state; poll ``GET .../exports`` for progress, then download its ``url``."""
    ctx = context(request)
    session_id = session_id_of(request)
    example = '{"overlay": "landmarks", "format": "mp4"}'
    body = export_request(json_body(await request.read(), ctx.settings.max_json_depth, example))
    return json_response(await ctx.exports.start(session_id, body.overlay, body.format), status=202)


async def export_file(request: web.Request) -> web.StreamResponse:
    store = context(request).store
    session_id = session_id_of(request)
    overlay, fmt = request.match_info["overlay"], request.match_info["format"]
    name = export_name(overlay, fmt)
    found = await asyncio.to_thread(store.open_export, session_id, name)
    if found is None:
        await asyncio.to_thread(store.get_row, session_id)  # unknown_session first
        raise NotFoundError(f"no {overlay} export as {fmt} of session {session_id}; start one first")
    source, size = found
    return await send_range(request, source, size, f"video/{fmt}", f"{session_id}-{overlay}.{fmt}")


async def delete_export(request: web.Request) -> web.StreamResponse:
    """``DELETE .../exports/OVERLAY.FORMAT``: cancel its encoding (200 with its state, once it
    stopped) or remove its file (200 ``deleted``)."""
    ctx = context(request)
    overlay, fmt = request.match_info["overlay"], request.match_info["format"]
    return json_response(await ctx.exports.cancel(session_id_of(request), overlay, fmt))


def add_export_routes(app: web.Application) -> None:
    base = "/api/sessions/{session_id}/exports"
    app.router.add_get(base, list_exports)
    app.router.add_post(base, start_export)
    app.router.add_get(base + "/{overlay:[a-z]+}.{format:[a-z0-9]+}", export_file)
    app.router.add_delete(base + "/{overlay:[a-z]+}.{format:[a-z0-9]+}", delete_export)
