"""Uploads: ``POST /api/sessions`` stores an existing video (WebM, MP4, MOV, MKV) as a session;
the sessions page's upload form, ``camingest import`` from a browser.

The body, raw (``?filename=`` names it) or the ``file`` field of a multipart form, is streamed
in 1 MiB pieces to a temporary file in the data folder, each piece written off the event loop.
A declared Content-Length over ``max_import_bytes`` is refused before reading; an undeclared
one is cut off with ``too_large`` as soon as it passes the limit. Then the importer of the CLI
runs in a thread, and the session's frames are queued for the workers (``ingest/live/backfill.py``):
the response does not wait for landmarks; the session's ``analysed_frames`` tells when they
are done. ``max_uploads`` uploads run at once; more get 503.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import BinaryIO

from aiohttp import BodyPartReader, StreamReader, web

from ingest.exceptions import BadRequestError, CapacityError, TooLargeError, UploadTooSlowError
from ingest.recording.importer import import_video
from ingest.server.context import CONTEXT
from ingest.server.responses import json_response

PIECE = 1024 * 1024

async def _body(request: web.Request) -> tuple[str, StreamReader | BodyPartReader]:
    """The uploaded file's name and a reader of its bytes."""
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name == "file":
                return part.filename or "upload", part
            if part is not None:
                await part.release()
        raise BadRequestError("the form has no 'file' field")
    return request.query.get("filename", "upload"), request.content


async def _save(
    source: StreamReader | BodyPartReader, out: BinaryIO, limit: int, idle_s: float, min_rate: int
) -> int:
    """Copy the body to ``out``. A slow sender holds an upload slot: the body must keep pace,
    ``idle_s`` plus one second per ``min_rate`` bytes received so far (a trickle of one byte
    every few seconds would pass any per-read timeout)."""
    loop = asyncio.get_running_loop()
    started, size = loop.time(), 0
    while True:
        remaining = started + idle_s + size / min_rate - loop.time()
        read = source.read_chunk(PIECE) if isinstance(source, BodyPartReader) else source.read(PIECE)
        try:
            if remaining <= 0:
                raise TimeoutError
            piece = await asyncio.wait_for(read, remaining)
        except TimeoutError:
            read.close()
            raise UploadTooSlowError(
                f"the upload came too slowly ({size} bytes in {loop.time() - started:.0f} s; "
                f"upload_idle_s={idle_s:g}, upload_min_bytes_per_s={min_rate}); send it again"
            ) from None
        if not piece:
            return size
        size += len(piece)
        if size > limit:
            raise TooLargeError(f"the upload is larger than max_import_bytes={limit}")
        await asyncio.to_thread(out.write, piece)


async def upload_session(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    settings = ctx.settings
    if request.content_length is not None and request.content_length > settings.max_import_bytes:
        raise TooLargeError(f"the upload is {request.content_length} bytes, max_import_bytes={settings.max_import_bytes}")
    if ctx.upload_slots.locked():
        raise CapacityError(f"{settings.max_uploads} uploads are running; retry later")
    async with ctx.upload_slots:
        name, source = await _body(request)
        name = Path(name).name[:200] or "upload"  # a label only: never part of a path
        incoming = ctx.store.incoming_file()
        out, tmp = await asyncio.to_thread(incoming.__enter__)
        try:
            size = await _save(
                source, out, settings.max_import_bytes, settings.upload_idle_s, settings.upload_min_bytes_per_s
            )
            await asyncio.to_thread(out.flush)
            await asyncio.to_thread(os.fsync, out.fileno())
            if size == 0:
                raise BadRequestError("the upload is empty")
            session_id = await asyncio.to_thread(import_video, ctx.store, tmp, settings.max_import_bytes, name=name,
                                                 limits=settings.reader_limits())  # fmt: skip
        finally:
            await asyncio.to_thread(incoming.__exit__, None, None, None)
    ctx.pipeline.fill(session_id)
    ctx.webhooks.session_event("session.started", session_id)
    ctx.webhooks.session_event("session.stopped", session_id)
    ctx.webhooks.watch_analysis(session_id)
    summary = await asyncio.to_thread(ctx.store.summary, session_id)
    return json_response(ctx.with_fill(summary), status=201)


def add_upload_routes(app: web.Application) -> None:
    app.router.add_post("/api/sessions", upload_session)
