"""What the HTTP side shows of itself: security headers on every answer, and static folders that
serve files only (no dotfiles, no folder listings).

- **Headers** (every response, errors and Socket.IO's included): ``X-Content-Type-Options:
  nosniff`` (a stored file is never run as a script because a browser guessed its type),
  ``Referrer-Policy: same-origin`` (addresses, which hold session ids, stay on this site;
  ``no-referrer`` would also blank the Origin of the pages' own POSTs, which the Origin check
  needs), ``X-Frame-Options: SAMEORIGIN`` and a Content-Security-Policy. The pages of camingest
  load only their own scripts and styles, so theirs is strict (``PAGE_POLICY``); the pages of
  ``--pages DIR`` are the user's own (tutorial pages with inline scripts and CDN clients), so they
  get only ``frame-ancestors 'self'``: nobody else's site can frame them either.
- **Static folders** (``/static/``, ``/pages/``): a path with a part starting with ``.``
  (``.env``, ``.git/config``) is not found, and a folder is not listed (403). aiohttp's own checks
  (no ``..`` out of the folder, symlinks not followed) stay.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from aiohttp import web
from aiohttp.web_urldispatcher import StaticResource

PAGE_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",  # snapshots shown from blobs
    "media-src 'self' blob:",
    "connect-src 'self'",  # fetches and Socket.IO (ws: and wss: of this host count as 'self')
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'self'",
])  # fmt: skip
USER_PAGES_POLICY = "frame-ancestors 'self'"
USER_PAGES = "/pages/"
HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "X-Frame-Options": "SAMEORIGIN"}


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer's headers (a handler's own choice is kept)."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    policy = USER_PAGES_POLICY if request.path.startswith(USER_PAGES) else PAGE_POLICY
    response.headers.setdefault("Content-Security-Policy", policy)


class FilesOnly(StaticResource):
    """A static folder that serves its files, never its dotfiles nor a listing of a folder."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        filename = request.match_info["filename"]
        if any(part.startswith(".") for part in PurePosixPath(filename.replace("\\", "/")).parts):
            raise web.HTTPNotFound()
        return await super()._handle(request)


def add_files(app: web.Application, prefix: str, folder: str | Path) -> None:
    """Serve ``folder``'s files at ``prefix`` (``/pages/``)."""
    app.router.register_resource(FilesOnly(prefix.rstrip("/"), folder, show_index=False, follow_symlinks=False))


def protect(app: web.Application) -> None:
    app.on_response_prepare.append(security_headers)
