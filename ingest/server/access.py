"""Who may talk to the server: Host allow-list, Origin checks, the access token.

- **Host** (``allowed_hosts``): a DNS-rebinding page reaches the server under its own name
  (``Host: evil.example``) and would be same-origin with it; requests naming a host the server
  is not meant to be reached by get 421, Socket.IO included (it runs on the same aiohttp app).
- **Origin**: a state-changing request (POST, PUT, PATCH, DELETE) from another site's page is a
  CSRF attempt: 403 ``unauthorized``. Requests without Origin (curl, scripts) are not browsers'.
- **Who** (``token``, signed tokens: ingest/server/principals.py): every route but ``GET
  /api/health`` (a bare liveness answer; counts only for a viewer or admin) and the static
  scripts needs ``Authorization: Bearer TOKEN`` or the ``camingest_token`` cookie. Opening any
  page with ``?token=TOKEN`` sets that cookie, holding a short-lived token signed for the same
  principal (never the token itself; HttpOnly, SameSite=Strict, Secure over https, as
  ingest/server/proxies.py says, an expiry), and redirects to the address without it. The
  principal is resolved here once per request and its role checked against the route; a
  recorder asking for another's session is told it is unknown. Socket.IO connects with
  ``auth={"token": TOKEN}`` or the cookie (the namespace's connect handler: the token travels in
  the CONNECT packet, not in HTTP). Every request to session data, and every gallery or token
  change, leaves an audit line (ingest/server/audit.py).
Comparisons are constant-time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from ingest.config import Settings
from ingest.exceptions import CapacityError, ForbiddenOriginError, IngestError, MisdirectedError, UnauthorizedError
from ingest.server.audit import AUDIT, AUDIT_PENDING
from ingest.server.principals import (
    AUTHORITY,
    Principal,
    TokenAuthority,
    check_route,
    check_sees,
    check_session_route,
)
from ingest.server.proxies import Proxies, request_secure
from ingest.server.responses import json_error
from storage.store import validate_session_id

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


def route_of(request: web.Request) -> str:
    """The request's route as registered (``/api/sessions/{session_id}/raw.webm``), or its path
    when no route matched."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


async def authorize(authority: TokenAuthority, request: web.Request, principal: Principal, route: str) -> None:
    """Whether ``principal`` may make this request: its role, then (a session's route) whether
    the session is one it may know of."""
    if check_route(principal, request.method, route) == "session" and principal.role == "recorder":
        session_id = validate_session_id(request.match_info.get("session_id"))
        assert authority.store is not None
        check_sees(principal, session_id, await asyncio.to_thread(authority.store.session_sub, session_id))
        check_session_route(principal, request.method, route)


def access_middleware(settings: Settings) -> Middleware:
    hosts = allowed_hosts(settings)
    proxies = Proxies.of(settings.trusted_proxies)

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
        if request.path.startswith("/socket.io/"):  # checked at the connection's CONNECT (events.py)
            return await handler(request)
        authority = request.app.get(AUTHORITY)
        if authority is None:
            return json_error(CapacityError("the server is starting; retry in a moment"))
        if request.path == "/api/health":  # liveness for anyone; its figures for a viewer or admin
            try:
                request["principal"] = authority.resolve(_request_token(request))
            except UnauthorizedError:
                request["principal"] = None
            return await handler(request)
        offered = request.query.get("token")
        if offered is not None and request.method == "GET" and not request.path.startswith("/api/") and authority.enabled:
            try:
                principal = authority.resolve(offered)
            except UnauthorizedError as exc:
                return json_error(exc)
            # a page opened with ?token=: a cookie of its own carries the principal from now
            # on (never the token itself); the address drops the token before anything logs it
            value, max_age = authority.cookie_token(principal)
            query = {k: v for k, v in request.query.items() if k != "token"}
            response = web.HTTPSeeOther(request.rel_url.with_query(query), headers={"Referrer-Policy": "no-referrer"})
            response.set_cookie(COOKIE, value, httponly=True, samesite="Strict", path="/", max_age=max_age,
                                secure=request_secure(proxies, request))  # fmt: skip
            return response
        audit = request.app.get(AUDIT)
        route = route_of(request)
        try:
            principal = authority.resolve(_request_token(request))
        except IngestError as exc:
            return json_error(exc)
        try:
            await authorize(authority, request, principal, route)
        except IngestError as exc:
            if audit is not None:
                audit.http(principal, request, route, exc.http_status)
            return json_error(exc)
        request["principal"] = principal
        if audit is not None:
            # written when the answer starts (a preview streams for as long as it is watched:
            # its line must not wait for the end), or here if the handler answered otherwise
            request[AUDIT_PENDING] = (principal, route)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if audit is not None and request.pop(AUDIT_PENDING, None) is not None:
                audit.http(principal, request, route, status, request.get("audit"))

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


def socketio_principal(authority: TokenAuthority, environ: dict[str, Any], auth: object) -> Principal:
    """Who a Socket.IO connection is: ``auth={"token"}``, else the cookie of its HTTP handshake.
    An expired token still connects (its principal says so): a recording in progress is never
    cut by its token's expiry, and its client must be able to reconnect and resume; a new
    session needs a valid one (events.py). UnauthorizedError otherwise."""
    token = auth.get("token") if isinstance(auth, dict) else None
    if token is None:
        request = environ.get("aiohttp.request")
        token = request.cookies.get(COOKIE) if request is not None else None
    return authority.resolve(token, allow_expired=True)
