"""HTTP routes of a session (PROTOCOL.md): listing, detail, raw and per-chunk media, the
recording, landmarks, snapshots, the MJPEG preview, deletion.

Everything is read from the store in threads and streamed in pieces; byte ranges are honoured so
browsers can seek in recordings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from typing import Any

from aiohttp import web

from ingest.exceptions import BadRequestError, CapacityError, ConflictError, NotFoundError, UnknownChunkError
from ingest.media.overlay import check_overlay
from ingest.media.thumbnail import frame_jpeg
from ingest.media.webm import build_unit
from ingest.server.context import CONTEXT, ServerContext
from ingest.server.preview import CONTENT_TYPE, Preview
from ingest.server.principals import request_principal
from ingest.server.responses import json_response, send_range
from storage.store import STATES, SessionFilter, SessionStore, decode_cursor, encode_cursor, validate_session_id

sessions_log = logging.getLogger("camingest.sessions")


def context(request: web.Request) -> ServerContext:
    return request.app[CONTEXT]


def session_id_of(request: web.Request) -> str:
    return validate_session_id(request.match_info["session_id"])


def _seq(request: web.Request) -> int:
    raw = request.match_info["seq"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:  # "²".isdigit() is True
        raise BadRequestError(f"seq must be a non-negative integer, got {raw[:20]!r}")
    return int(raw)


def _instant(raw: str, name: str, end_of_day: bool) -> str:
    """An ISO 8601 date or time from the query as the index writes ``created_at`` (UTC, ms, Z);
    a bare date means its midnight (UTC), or the next one for ``until`` (the day is included)."""
    try:
        if len(raw) == 10:
            when = dt.datetime.combine(dt.date.fromisoformat(raw), dt.time(), dt.UTC)
            if end_of_day:
                when += dt.timedelta(days=1)
        else:
            when = dt.datetime.fromisoformat(raw)
            when = when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
    except ValueError:
        raise BadRequestError(f"{name}={raw[:40]!r} is not a date (2026-12-01) or a time (2026-12-01T14:30:00Z)") from None
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def session_filter(request: web.Request) -> tuple[SessionFilter, tuple[str, str] | None, int]:
    """``GET /api/sessions``' query: ``state``, ``since`` / ``until`` (created; dates or times),
    ``person`` (a name who appears, or "unknown"), ``meta=key=value``, ``cursor`` (a page's
    ``next_cursor``), ``limit``. Each bad value is named with what is allowed."""
    query, settings = request.query, context(request).settings
    state = query.get("state") or None
    if state is not None and state not in STATES:
        raise BadRequestError(f"state={state[:40]!r} is not one of {', '.join(STATES)}")
    meta = None
    if query.get("meta"):
        key, sep, value = query["meta"].partition("=")
        if not sep or not key:
            raise BadRequestError(f"meta={query['meta'][:60]!r}: give it as key=value (e.g. meta=app=my-app)")
        meta = (key, value)
    cursor = None
    if query.get("cursor"):
        cursor = decode_cursor(query["cursor"])
        if cursor is None:
            raise BadRequestError("cursor is not one this server gave (use next_cursor of the previous page)")
    raw_limit = query.get("limit", str(settings.sessions_page))
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= settings.max_sessions_page:
        raise BadRequestError(f"limit={raw_limit[:20]!r}: allowed 1-{settings.max_sessions_page} (max_sessions_page)")
    where = SessionFilter(
        state=state,
        since=_instant(query["since"], "since", False) if query.get("since") else None,
        until=_instant(query["until"], "until", True) if query.get("until") else None,
        person=query.get("person") or None,
        meta=meta,
    )
    return where, cursor, int(raw_limit)


async def list_sessions(request: web.Request) -> web.StreamResponse:
    """``{"sessions": [...], "next_cursor"}``: one page, newest first (``next_cursor`` is null
    on the last); filters in the query (``session_filter``)."""
    ctx = context(request)
    where, cursor, limit = session_filter(request)
    principal = request_principal(request)
    if principal.role == "recorder":  # with the read grant (the middleware checked): its own only
        where = dataclasses.replace(where, sub=principal.sub)
    try:
        sessions, last = await asyncio.to_thread(ctx.store.list_page, where, cursor, limit)
    except ValueError as exc:
        raise BadRequestError(str(exc)) from None
    return json_response({
        "sessions": [ctx.with_fill(s) for s in sessions],
        "next_cursor": encode_cursor(*last) if last is not None else None,
    })  # fmt: skip


def session_thumbnail(store: SessionStore, session_id: str) -> bytes:
    """The session's thumbnail (a frame with a face: the digest's), made once and stored
    (blocking: decodes)."""
    row = store.get_row(session_id)
    if not row["frames"]:
        why = f": it failed while recording ({row['error']})" if row["state"] == "failed" and row["error"] else ""
        raise NotFoundError(f"session {session_id} has no frames to show{why}")
    frame = store.digest(session_id)["thumbnail_frame"] or 0
    cached = store.thumbnail(session_id, frame)
    if cached is not None:
        return cached
    data = frame_jpeg(store.stream_source(session_id).path, frame)
    store.save_thumbnail(session_id, frame, data)
    return data


async def thumbnail(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    session_id = session_id_of(request)
    async with ctx.thumbnail_slots:
        data = await asyncio.to_thread(session_thumbnail, ctx.store, session_id)
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "no-cache"})


async def get_session(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    return json_response(ctx.with_fill(await asyncio.to_thread(ctx.store.detail, session_id_of(request))))


async def raw_webm(request: web.Request) -> web.StreamResponse:
    store = context(request).store
    source, length = await asyncio.to_thread(store.open_stream, session_id_of(request))
    return await send_range(request, source, length, "video/webm")


async def recording_webm(request: web.Request) -> web.StreamResponse:
    store = context(request).store
    session_id = session_id_of(request)

    def open_recording() -> tuple[Any, int]:
        row = store.get_row(session_id)
        finalized = store.open_recording(session_id) if row["state"] == "stopped" else None
        # until finalized, the recording is the stream as sent (plays, but has no Duration or Cues)
        return finalized if finalized is not None else store.open_stream(session_id)

    source, length = await asyncio.to_thread(open_recording)
    return await send_range(request, source, length, "video/webm")


async def _chunk_row(request: web.Request) -> tuple[str, dict[str, Any]]:
    store = context(request).store
    session_id, seq = session_id_of(request), _seq(request)
    await asyncio.to_thread(store.get_row, session_id)  # 404 for unknown sessions first
    row = await asyncio.to_thread(store.chunk_row, session_id, seq)
    if row is None:
        raise UnknownChunkError(f"session {session_id} has no chunk {seq}")
    return session_id, row


async def chunk_raw(request: web.Request) -> web.StreamResponse:
    session_id, row = await _chunk_row(request)
    data = await asyncio.to_thread(context(request).store.read_stream, session_id, row["offset"], row["size"])
    return web.Response(body=data, content_type="application/octet-stream")


async def chunk_webm(request: web.Request) -> web.StreamResponse:
    """The chunk's standalone unit, rebuilt from the block locations stored with it."""
    session_id, row = await _chunk_row(request)
    store = context(request).store

    def unit() -> bytes | None:
        init = store.init_segment(session_id)
        return None if init is None else build_unit(init, store.chunk_runs(session_id, row))

    data = await asyncio.to_thread(unit)
    if data is None:
        raise NotFoundError(f"session {session_id} has no complete init segment yet")
    return web.Response(body=data, content_type="video/webm")


async def landmarks(request: web.Request) -> web.StreamResponse:
    body = await asyncio.to_thread(context(request).store.landmarks_json, session_id_of(request))
    return web.Response(body=body, content_type="application/json")


async def snapshot_image(request: web.Request) -> web.StreamResponse:
    store = context(request).store
    snapshot_id = request.match_info["snapshot_id"]
    source, size, mime = await asyncio.to_thread(store.open_snapshot, session_id_of(request), snapshot_id)
    return await send_range(request, source, size, mime)


async def snapshot_landmarks(request: web.Request) -> web.StreamResponse:
    store = context(request).store
    snapshot_id = request.match_info["snapshot_id"]
    body = await asyncio.to_thread(store.snapshot_landmarks, session_id_of(request), snapshot_id)
    if body is None:
        raise NotFoundError(f"snapshot {snapshot_id} is not analysed yet")
    return web.Response(body=body, content_type="application/json")


async def preview_mjpg(request: web.Request) -> web.StreamResponse:
    """multipart/x-mixed-replace JPEGs of annotated frames; ends when the client goes away, when
    it does not take a part within ``preview_write_timeout_s``, or when the recording it follows
    receives nothing for ``preview_idle_s``. At most ``max_previews`` viewers, and
    ``max_previews_per_client`` of one client."""
    ctx = context(request)
    settings = ctx.settings
    session_id = session_id_of(request)
    await asyncio.to_thread(ctx.store.get_row, session_id)
    overlay = check_overlay(request.query.get("overlay", "landmarks"))
    client = ctx.clients.key(request)
    ctx.previews.check(client)
    if ctx.preview_slots.locked():
        raise CapacityError("too many preview viewers (max_previews); try again later")
    ctx.previews.add(client)
    try:
        async with ctx.preview_slots:
            preview = Preview(ctx.store, session_id, overlay, ctx.preview_pool, settings.preview_idle_s)
            response = web.StreamResponse(headers={"Cache-Control": "no-store"})
            response.content_type = CONTENT_TYPE
            try:
                await response.prepare(request)
                async for part in preview:
                    await asyncio.wait_for(response.write(part), settings.preview_write_timeout_s)
            except TimeoutError:  # the viewer does not read: dropped, its slot freed
                sessions_log.info("preview of %s: a viewer (%s) took no part for %g s (preview_write_timeout_s); "
                                  "dropped", session_id, client, settings.preview_write_timeout_s)  # fmt: skip
                if request.transport is not None:
                    request.transport.abort()
            except (ConnectionResetError, asyncio.CancelledError):
                pass  # the viewer went away
            finally:
                await preview.aclose()
    finally:
        ctx.previews.remove(client)
    return response


async def delete_session(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    session_id = session_id_of(request)
    row = await asyncio.to_thread(ctx.store.get_row, session_id)
    if row["state"] == "recording":
        last = await asyncio.to_thread(ctx.store.last_chunk_at, session_id)
        # a session still "recording" but idle this long was abandoned (tab closed without stop)
        if time.time() - (last or 0) < ctx.settings.abandoned_after_s:
            raise ConflictError(f"session {session_id} is recording; stop it first")
    await delete_session_data(ctx, session_id, "deleted")
    return json_response({"ok": True, "deleted": session_id})


async def delete_session_data(ctx: ServerContext, session_id: str, reason: str) -> bool:
    """Delete a session with everything of it (bytes, landmarks, snapshots, exports) and tell the
    webhooks (``session.deleted`` with ``reason``); False if it was gone already."""
    summary = await asyncio.to_thread(ctx.store.summary, session_id)
    ctx.registry.forget(session_id)
    ctx.lifecycle.forget(session_id)
    ctx.exports.forget(session_id)
    deleted = await asyncio.to_thread(ctx.store.delete, session_id)
    if deleted:
        sessions_log.info("session %s deleted (%s)", session_id, reason)
        ctx.webhooks.session_event("session.deleted", session_id, {"reason": reason}, summary)
    return deleted


def add_session_routes(app: web.Application) -> None:
    app.router.add_get("/api/sessions", list_sessions)
    base = "/api/sessions/{session_id}"
    app.router.add_get(base, get_session)
    app.router.add_delete(base, delete_session)
    app.router.add_get(base + "/raw.webm", raw_webm)
    app.router.add_get(base + "/recording.webm", recording_webm)
    app.router.add_get(base + "/chunks/{seq:\\d+}.webm", chunk_webm)
    app.router.add_get(base + "/chunks/{seq}", chunk_raw)
    app.router.add_get(base + "/landmarks", landmarks)
    app.router.add_get(base + "/preview.mjpg", preview_mjpg)
    app.router.add_get(base + "/thumbnail.jpg", thumbnail)
    app.router.add_get(base + "/snapshots/{snapshot_id}", snapshot_image)
    app.router.add_get(base + "/snapshots/{snapshot_id}/landmarks", snapshot_landmarks)
