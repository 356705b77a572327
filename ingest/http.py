"""HTTP routes of PROTOCOL.md: pages, session listing, raw and per-chunk media, landmarks.

Errors are JSON (``{"error": {"code", "message"}}``) with a matching status. Files are read in
threads and streamed in pieces; byte ranges are honoured so browsers can seek in recordings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from ingest.exceptions import BadRequestError, IngestError, UnknownChunkError
from ingest.overlay import OVERLAYS
from ingest.preview import BOUNDARY, WAIT, annotated_frames, part
from ingest.services import SERVICES, Services
from ingest.upload import upload_session
from ingest.webm import build_unit
from storage.store import validate_session_id

log = logging.getLogger(__name__)
READ_PIECE = 256 * 1024
SOCKET_IO_CLIENT = "socket.io-4.8.4.min.js"  # web/vendor/
STATUS = {
    "bad_request": 400,
    "unauthorized": 403,
    "unknown_session": 404,
    "unknown_chunk": 404,
    "unknown_snapshot": 404,
    "not_found": 404,
    "conflict": 409,
    "gap": 409,
    "session_closed": 409,
    "too_large": 413,
    "unsupported": 415,
    "invalid_media": 422,
    "internal": 500,
    "timeout": 408,
    "busy": 503,
    "storage_full": 507,
}
# ASCII digits, at most 18 (\d also takes other scripts' digits; 5,000 of them overflow int()):
# anything else is not a range we parse, and an unparseable Range is ignored (RFC 9110 14.2)
_RANGE_RE = re.compile(r"\Abytes=([0-9]{0,18})-([0-9]{0,18})\Z")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(code: str, message: str, status: int | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status or STATUS.get(code, 400))


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except IngestError as exc:
        return json_error(exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status >= 400 and request.path.startswith("/api/"):
            return json_error("not_found" if exc.status == 404 else "bad_request", exc.reason, exc.status)
        raise
    except ConnectionResetError:  # the client went away mid-download: not an error of ours
        log.debug("%s %s: the client closed the connection", request.method, request.path)
        return web.Response(status=499)  # never sent; raising would make aiohttp log a traceback
    except Exception:  # a bug: the operator gets the traceback, the client a JSON error
        log.exception("internal error on %s %s", request.method, request.path)
        return json_error("internal", "internal server error", 500)


def web_root() -> Path:
    return Path(str(resources.files("web")))


async def send_bytes_range(
    request: web.Request, path: Path, length: int, content_type: str, download_name: str | None = None
) -> web.StreamResponse:
    """Stream the first ``length`` bytes of ``path`` (a file may be longer than what is
    acknowledged), honouring a single ``Range: bytes=a-b``."""
    start, end, status = 0, length, 200
    match = _RANGE_RE.match(request.headers.get("Range", ""))
    if match and (match.group(1) or match.group(2)):
        if match.group(1):
            start = int(match.group(1))
            end = min(length, int(match.group(2)) + 1) if match.group(2) else length
        else:
            start = max(0, length - int(match.group(2)))
        if start >= end:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{length}"})
        status = 206
    response = web.StreamResponse(status=status)
    response.content_type = content_type
    response.content_length = end - start
    response.headers["Accept-Ranges"] = "bytes"
    if status == 206:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{length}"
    if download_name:
        response.headers["Content-Disposition"] = f'attachment; filename="{download_name}"'
    await response.prepare(request)
    with open(path, "rb") as f:
        position = start
        while position < end:
            piece = await asyncio.to_thread(_pread, f, position, min(READ_PIECE, end - position))
            if not piece:
                break
            await response.write(piece)
            position += len(piece)
    await response.write_eof()
    return response


def _pread(f: Any, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


def _session_id(request: web.Request) -> str:
    return validate_session_id(request.match_info["session_id"])


def _seq(request: web.Request) -> int:
    raw = request.match_info["seq"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:  # "²".isdigit() is True
        raise BadRequestError(f"seq must be a non-negative integer, got {raw[:20]!r}")
    return int(raw)


async def socketio_client(request: web.Request) -> web.StreamResponse:
    """The Socket.IO browser client where Node's socket.io serves it, for pages written for it."""
    return web.FileResponse(web_root() / "vendor" / SOCKET_IO_CLIENT)


async def index_page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(web_root() / "index.html")


async def sessions_page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(web_root() / "sessions.html")


async def list_sessions(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    sessions = await asyncio.to_thread(services.store.list_summaries)
    return web.json_response({"sessions": [services.with_fill(s) for s in sessions]})


async def get_session(request: web.Request) -> web.StreamResponse:
    store = _services(request).store
    session_id = _session_id(request)

    def detail() -> dict[str, Any]:
        result = store.summary(session_id)
        result["snapshots"] = store.snapshot_rows(session_id)
        return result

    return web.json_response(_services(request).with_fill(await asyncio.to_thread(detail)))


async def raw_webm(request: web.Request) -> web.StreamResponse:
    store = _services(request).store
    session_id = _session_id(request)
    row = await asyncio.to_thread(store.get_row, session_id)
    return await send_bytes_range(request, store.paths(session_id).stream, row["bytes"], "video/webm")


async def recording_webm(request: web.Request) -> web.StreamResponse:
    store = _services(request).store
    session_id = _session_id(request)
    row = await asyncio.to_thread(store.get_row, session_id)
    finalized = store.paths(session_id).recording
    if row["state"] == "stopped" and finalized.exists():
        return await send_bytes_range(request, finalized, finalized.stat().st_size, "video/webm")
    # Until finalized, the recording is the stream as sent (plays, but has no Duration or Cues).
    return await send_bytes_range(request, store.paths(session_id).stream, row["bytes"], "video/webm")


async def _chunk_row(request: web.Request) -> tuple[str, dict[str, Any]]:
    store = _services(request).store
    session_id, seq = _session_id(request), _seq(request)
    await asyncio.to_thread(store.get_row, session_id)  # 404 for unknown sessions first
    row = await asyncio.to_thread(store.chunk_row, session_id, seq)
    if row is None:
        raise UnknownChunkError(f"session {session_id} has no chunk {seq}")
    return session_id, row


async def chunk_raw(request: web.Request) -> web.StreamResponse:
    session_id, row = await _chunk_row(request)
    data = await asyncio.to_thread(_services(request).store.read_stream, session_id, row["offset"], row["size"])
    return web.Response(body=data, content_type="application/octet-stream")


async def chunk_webm(request: web.Request) -> web.StreamResponse:
    """The chunk's standalone unit, rebuilt from the block locations stored with it."""
    session_id, row = await _chunk_row(request)
    store = _services(request).store

    def unit() -> bytes | None:
        init = store.init_segment(session_id)
        return None if init is None else build_unit(init, store.chunk_runs(session_id, row))

    data = await asyncio.to_thread(unit)
    if data is None:
        return json_error("not_found", f"session {session_id} has no complete init segment yet", 404)
    return web.Response(body=data, content_type="video/webm")


async def landmarks(request: web.Request) -> web.StreamResponse:
    store = _services(request).store
    session_id = _session_id(request)
    await asyncio.to_thread(store.get_row, session_id)
    path = store.paths(session_id).landmarks

    def frames_json() -> bytes:
        # the stored lines already are the frames' JSON: join them without re-encoding
        lines = path.read_bytes().splitlines() if path.exists() else []
        body = b",".join(line for line in lines if line.endswith(b"}"))
        return b'{"session_id":' + json.dumps(session_id).encode() + b',"frames":[' + body + b"]}"

    return web.Response(body=await asyncio.to_thread(frames_json), content_type="application/json")


async def snapshot_image(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    session_id = _session_id(request)
    snapshot_id = request.match_info["snapshot_id"]
    path = await asyncio.to_thread(services.snapshots.image_path, session_id, snapshot_id)
    row = await asyncio.to_thread(services.store.snapshot_row, session_id, snapshot_id)
    return await send_bytes_range(request, path, row["bytes"], row["mime"])


async def snapshot_landmarks(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    session_id = _session_id(request)
    snapshot_id = request.match_info["snapshot_id"]
    await asyncio.to_thread(services.snapshots.image_path, session_id, snapshot_id)  # 404s first
    path = services.snapshots.landmarks_path(session_id, snapshot_id)
    if not path.exists():
        return json_error("not_found", f"snapshot {snapshot_id} is not analysed yet", 404)
    return web.Response(body=await asyncio.to_thread(path.read_bytes), content_type="application/json")


async def preview_mjpg(request: web.Request) -> web.StreamResponse:
    """multipart/x-mixed-replace JPEGs of annotated frames; ends when the client goes away."""
    services = _services(request)
    session_id = _session_id(request)
    await asyncio.to_thread(services.store.get_row, session_id)
    overlay = request.query.get("overlay", "landmarks")
    if overlay not in OVERLAYS:
        raise BadRequestError(f"overlay must be one of {', '.join(OVERLAYS)}")
    if services.preview_slots.locked():
        return json_error("busy", "too many preview viewers (max_previews); try again later", 503)
    async with services.preview_slots:
        loop = asyncio.get_running_loop()
        frames = annotated_frames(services.store, session_id, overlay)
        response = web.StreamResponse(headers={"Cache-Control": "no-store"})
        response.content_type = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        await response.prepare(request)
        started, first_pts = loop.time(), None
        try:
            while True:
                item = await loop.run_in_executor(services.preview_pool, next, frames, StopIteration)
                if item is StopIteration:
                    break
                if item is WAIT:
                    await asyncio.sleep(0.1)
                    continue
                pts_ms, jpeg = item
                first_pts = pts_ms if first_pts is None else first_pts
                delay = started + (pts_ms - first_pts) / 1000 - loop.time()
                if delay > 0:  # replay at the recording's own pace
                    await asyncio.sleep(delay)
                await response.write(part(jpeg))
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the viewer went away
        finally:
            await loop.run_in_executor(services.preview_pool, frames.close)
    return response


# A session still "recording" but idle this long was abandoned (tab closed without stop).
ABANDONED_AFTER_S = 600


async def delete_session(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    session_id = _session_id(request)
    row = await asyncio.to_thread(services.store.get_row, session_id)
    if row["state"] == "recording":
        last = await asyncio.to_thread(
            services.store.index.read,
            lambda c: c.execute("SELECT MAX(received_at) FROM chunks WHERE session_id=?", (session_id,)).fetchone()[0],
        )
        idle = time.time() - (last or 0)
        if idle < ABANDONED_AFTER_S:
            return json_error("conflict", f"session {session_id} is recording; stop it first", 409)
    services.registry.forget(session_id)
    services.lifecycle.forget(session_id)
    services.exports.forget(session_id)
    await asyncio.to_thread(services.store.delete, session_id)
    logging.getLogger("camingest.sessions").info("session %s deleted", session_id)
    return web.json_response({"ok": True, "deleted": session_id})


async def list_exports(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    session_id = _session_id(request)
    return web.json_response({"exports": await asyncio.to_thread(services.exports.list, session_id)})


async def start_export(request: web.Request) -> web.StreamResponse:
    """``POST .../exports`` with ``{"overlay": "landmarks"|"lips"|"none", "format": "mp4"|"webm"}``:
    202 and the export's state; poll ``GET .../exports`` for progress, then download its ``url``."""
    services = _services(request)
    session_id = _session_id(request)
    try:
        body = await request.json()
    except ValueError:
        raise BadRequestError('send a JSON body like {"overlay": "landmarks", "format": "mp4"}') from None
    if not isinstance(body, dict):
        raise BadRequestError('send a JSON object like {"overlay": "landmarks", "format": "mp4"}')
    overlay, fmt = str(body.get("overlay", "landmarks")), str(body.get("format", "mp4"))
    return web.json_response(await services.exports.start(session_id, overlay, fmt), status=202)


async def export_file(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    session_id = _session_id(request)
    overlay, fmt = request.match_info["overlay"], request.match_info["format"]
    path = services.exports.file(session_id, overlay, fmt)
    size = await asyncio.to_thread(lambda: path.stat().st_size if path.is_file() else None)
    if size is None:
        await asyncio.to_thread(services.store.get_row, session_id)  # unknown_session first
        return json_error("not_found", f"no {overlay} export as {fmt} of session {session_id}; start one first", 404)
    return await send_bytes_range(request, path, size, f"video/{fmt}", f"{session_id}-{overlay}.{fmt}")


async def health(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    monitor = services.loop_monitor
    return web.json_response(
        {
            "ok": True,
            "sessions_recording": len(services.registry),
            "sessions_loading": services.registry.loading(),
            "loop_lag_ms": {"last": round(monitor.last_lag_ms, 2), "max": round(monitor.max_lag_ms, 2)},
        }
    )


async def metrics(request: web.Request) -> web.StreamResponse:
    body = _services(request).metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def add_routes(app: web.Application, pages_dir: str | None = None) -> None:
    app.router.add_get("/", index_page)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/sessions", sessions_page)
    app.router.add_static("/static/", web_root(), show_index=False, follow_symlinks=False)
    app.router.add_get("/socket.io/socket.io.js", socketio_client)
    app.router.add_get("/socket.io/socket.io.min.js", socketio_client)
    if pages_dir is not None:
        app.router.add_static("/pages/", pages_dir, show_index=True, follow_symlinks=False)
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/sessions", list_sessions)
    app.router.add_post("/api/sessions", upload_session)
    base = "/api/sessions/{session_id}"
    app.router.add_get(base, get_session)
    app.router.add_delete(base, delete_session)
    app.router.add_get(base + "/raw.webm", raw_webm)
    app.router.add_get(base + "/recording.webm", recording_webm)
    app.router.add_get(base + "/chunks/{seq:\\d+}.webm", chunk_webm)
    app.router.add_get(base + "/chunks/{seq}", chunk_raw)
    app.router.add_get(base + "/landmarks", landmarks)
    app.router.add_get(base + "/preview.mjpg", preview_mjpg)
    app.router.add_get(base + "/exports", list_exports)
    app.router.add_post(base + "/exports", start_export)
    app.router.add_get(base + "/exports/{overlay:[a-z]+}.{format:[a-z0-9]+}", export_file)
    app.router.add_get(base + "/snapshots/{snapshot_id}", snapshot_image)
    app.router.add_get(base + "/snapshots/{snapshot_id}/landmarks", snapshot_landmarks)
