"""Who may talk to the server: Host allow-list, Origin checks, the access token.

- **Host** (``allowed_hosts``): a DNS-rebinding page reaches the server under its own name
  (``Host: evil.example``) and would be same-origin with it; requests naming a host the server
  is not meant to be reached by get 421, Socket.IO included (it runs on the same aiohttp app).
- **Origin**: a state-changing request (POST, PUT, PATCH, DELETE) from another site's page is a
  CSRF attempt: 403 ``unauthorized``. Requests without Origin (curl, scripts) are not browsers'.
- **Token** (``token``): every route but ``GET /api/health`` and the static scripts needs ``Authorization: Bearer TOKEN``
  or the ``camingest_token`` cookie, which opening any page with ``?token=TOKEN`` sets (HttpOnly,
  SameSite=Strict). Socket.IO connects with ``auth={"token": TOKEN}`` or the cookie (checked in
  the namespace's connect handler: the token travels in the CONNECT packet, not in HTTP).
Comparisons are constant-time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from ingest.config import Settings
from ingest.exceptions import ForbiddenOriginError, MisdirectedError, UnauthorizedError
from ingest.server.responses import json_error

COOKIE = "camingest_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def host_name(host_header: str) -> str:
    """``Host`` without its port; IPv6 literals without brackets."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The Host names served (None: any). Default: the --host address and loopback names."""
    if "*" in settings.allowed_hosts:
        return None
    names = settings.allowed_hosts or (settings.host, *LOOPBACK_NAMES)
    return frozenset(host_name(name) for name in names)


def token_matches(settings: Settings, candidate: object) -> bool:
    return (
        settings.token is not None
        and isinstance(candidate, str)
        and hmac.compare_digest(candidate.encode(), settings.token.encode())
    )


def _request_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :].strip()
    return request.cookies.get(COOKIE)


def _same_site(request: web.Request, settings: Settings) -> bool:
    origin = request.headers.get("Origin")
    if origin is None or "*" in settings.cors_origins or origin in settings.cors_origins:
        return True
    return origin == f"{request.scheme}://{request.host}"


def access_middleware(settings: Settings) -> Middleware:
    hosts = allowed_hosts(settings)

    @web.middleware
    async def check_access(request: web.Request, handler: Handler) -> web.StreamResponse:
        if hosts is not None and host_name(request.host) not in hosts:
            return json_error(MisdirectedError(f"host {request.host[:100]!r} is not served here (setting allowed_hosts)"))
        if request.method in UNSAFE_METHODS and not _same_site(request, settings):
            origin = request.headers.get("Origin", "")[:100]
            return json_error(ForbiddenOriginError(f"requests from origin {origin} may not change anything here"))
        if request.path.startswith("/static/") or request.path == "/api/config":
            # the pages' scripts (the same files as in the package: no data) are public, and
            # pages of origins in cors_origins may import them (camingest-client.js)
            response = await handler(request)
            page_origin = request.headers.get("Origin")
            if page_origin is not None and ("*" in settings.cors_origins or page_origin in settings.cors_origins):
                response.headers["Access-Control-Allow-Origin"] = page_origin
                response.headers["Vary"] = "Origin"
            return response
        if settings.token is None or request.path == "/api/health" or request.path.startswith("/socket.io/"):
            return await handler(request)
        offered = request.query.get("token")
        if offered is not None and request.method == "GET" and not request.path.startswith("/api/"):
            if not token_matches(settings, offered):
                return json_error(UnauthorizedError("wrong token"))
            # a page opened with ?token=: the cookie carries it from now on; the URL drops it
            query = {k: v for k, v in request.query.items() if k != "token"}
            response = web.HTTPSeeOther(request.rel_url.with_query(query))
            response.set_cookie(COOKIE, offered, httponly=True, samesite="Strict", secure=request.secure, path="/")
            return response
        if not token_matches(settings, _request_token(request)):
            return json_error(UnauthorizedError(
                "this server needs its access token (Authorization: Bearer, or open a page with ?token=)"
            ))
        return await handler(request)

    return check_access


def socketio_origin_check(settings: Settings) -> Callable[[str | None, dict[str, Any]], bool]:
    """engine.io's ``cors_allowed_origins`` as a function: the same rule as for HTTP. (Its own
    same-origin check takes the scheme from ``X-Forwarded-Proto`` or assumes http, so a page
    served over --tls-cert would be refused as another origin.)"""

    def allowed(origin: str | None, environ: dict[str, Any]) -> bool:
        if origin is None or "*" in settings.cors_origins or origin in settings.cors_origins:
            return True
        request = environ.get("aiohttp.request")
        if request is None:
            return False
        return origin == f"{'https' if request.secure else 'http'}://{request.host}"

    return allowed


def socketio_allowed(settings: Settings, environ: dict[str, Any], auth: object) -> bool:
    """Whether a Socket.IO connection may open: with a token configured, ``auth={"token"}`` or
    the cookie of the HTTP handshake."""
    if settings.token is None:
        return True
    if isinstance(auth, dict) and token_matches(settings, auth.get("token")):
        return True
    request = environ.get("aiohttp.request")
    return request is not None and token_matches(settings, request.cookies.get(COOKIE))
