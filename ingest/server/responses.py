"""How the HTTP side answers: JSON errors (one builder; the status belongs to the error class),
the middleware that turns every error into one, and byte ranges of stored files.

Errors are ``{"error": {"code", "message"}}`` with the status of their class; a bug is a JSON
500 whose traceback goes to the operator's log only.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

from aiohttp import web

from ingest.exceptions import BadRequestError, CapacityError, IngestError, NotFoundError
from ingest.server.strict_json import StrictJSON

log = logging.getLogger(__name__)
READ_PIECE = 256 * 1024
# ASCII digits, at most 18 (\d also takes other scripts' digits; 5,000 of them overflow int()):
# anything else is not a range we parse, and an unparseable Range is ignored (RFC 9110 14.2)
_RANGE_RE = re.compile(r"\Abytes=([0-9]{0,18})-([0-9]{0,18})\Z")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_STRICT = StrictJSON(0)  # (only its dumps)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Every JSON answer: strict JSON (``allow_nan=False``: a browser's JSON.parse refuses NaN)."""
    return web.json_response(data, status=status, headers=headers, dumps=_STRICT.dumps)


def json_error(exc: IngestError) -> web.Response:
    """The one JSON error body, with the status of the error's class."""
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, CapacityError) else None
    return json_response({"error": exc.to_dict()}, status=exc.http_status, headers=headers)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except IngestError as exc:
        return json_error(exc)
    except web.HTTPException as exc:
        if exc.status >= 400 and request.path.startswith("/api/"):
            error = NotFoundError(exc.reason) if exc.status == 404 else BadRequestError(exc.reason)
            error.http_status = exc.status  # the router's own status (405, 413, ...) with our body
            return json_error(error)
        raise
    except ConnectionResetError:  # the client went away mid-download: not an error of ours
        log.debug("%s %s: the client closed the connection", request.method, request.path)
        return web.Response(status=499)  # never sent; raising would make aiohttp log a traceback
    except Exception:  # a bug: the operator gets the traceback, the client a JSON error
        log.exception("internal error on %s %s", request.method, request.path)
        return json_error(IngestError("internal server error"))


def _pread(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


async def send_range(
    request: web.Request,
    source: BinaryIO,
    length: int,
    content_type: str,
    download_name: str | None = None,
) -> web.StreamResponse:
    """Stream the first ``length`` bytes of ``source`` (an opened stored file, closed here; it may
    be longer than what is acknowledged), honouring a single ``Range: bytes=a-b``."""
    try:
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
        position = start
        while position < end:
            piece = await asyncio.to_thread(_pread, source, position, min(READ_PIECE, end - position))
            if not piece:
                break
            await response.write(piece)
            position += len(piece)
        await response.write_eof()
        return response
    finally:
        await asyncio.to_thread(source.close)
