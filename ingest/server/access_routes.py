"""HTTP routes of access: who am I (``GET /api/me``), tokens for an app's backend (``POST
/api/tokens``, ``DELETE /api/tokens/{jti}``: admin), and holds against retention (``PUT`` /
``DELETE /api/sessions/{id}/hold``: admin). The middleware (access.py) has checked the role."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from aiohttp import web

from ingest.exceptions import BadRequestError
from ingest.server.context import CONTEXT
from ingest.server.principals import request_principal
from ingest.server.responses import json_response
from storage.store import validate_session_id


def _iso(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def me(request: web.Request) -> web.StreamResponse:
    """Who this request is (the pages show or hide what the role may not do)."""
    principal = request_principal(request)
    return json_response({
        "role": principal.role, "sub": principal.sub, "jti": principal.jti, "read": principal.read,
        "expires_at": _iso(principal.exp) if principal.exp is not None else None,
        "auth": request.app[CONTEXT].authority.enabled,
    })  # fmt: skip


async def _json_object(request: web.Request, example: str) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequestError(f"send a JSON body like {example}") from None
    if not isinstance(body, dict):
        raise BadRequestError(f"send a JSON object like {example}")
    return body


async def create_token(request: web.Request) -> web.StreamResponse:
    """``{"role", "sub", "ttl_s"?, "meta"?, "max_sessions"?, "read"?}`` -> 201 ``{"token", "jti",
    "role", "sub", "expires_at"}``: a token signed with the server's first key."""
    body = await _json_object(request, '{"role": "recorder", "sub": "participant-17", "ttl_s": 7200}')
    unknown = sorted(set(body) - {"role", "sub", "ttl_s", "meta", "max_sessions", "read"})
    if unknown:
        raise BadRequestError(f"unknown field {unknown[0][:40]!r}; allowed: role, sub, ttl_s, meta, max_sessions, read")
    authority = request.app[CONTEXT].authority
    token, claims = authority.mint(body.get("role", ""), body.get("sub", ""), body.get("ttl_s", 3600), body.get("meta"),
                                   body.get("max_sessions"), body.get("read", False))  # fmt: skip
    request["audit"] = {"minted": {"jti": claims["jti"], "sub": claims["sub"], "role": claims["role"],
                                   "expires_at": _iso(claims["exp"])}}  # fmt: skip
    return json_response({"token": token, "jti": claims["jti"], "role": claims["role"], "sub": claims["sub"],
                              "expires_at": _iso(claims["exp"])}, status=201)  # fmt: skip


async def revoke_token(request: web.Request) -> web.StreamResponse:
    """Deny a token from now on, on every node (within ``revocation_poll_s``)."""
    jti = request.match_info["jti"]
    authority = request.app[CONTEXT].authority
    added = await asyncio.to_thread(authority.revoke, jti, request_principal(request))
    request["audit"] = {"revoked": jti}
    return json_response({"ok": True, "revoked": jti, "already": not added})


async def _hold(request: web.Request, held: bool) -> web.StreamResponse:
    session_id = validate_session_id(request.match_info["session_id"])
    await asyncio.to_thread(request.app[CONTEXT].store.set_hold, session_id, held)
    return json_response({"ok": True, "session_id": session_id, "held": held})


async def put_hold(request: web.Request) -> web.StreamResponse:
    return await _hold(request, True)


async def delete_hold(request: web.Request) -> web.StreamResponse:
    return await _hold(request, False)


def add_access_routes(app: web.Application) -> None:
    app.router.add_get("/api/me", me)
    app.router.add_post("/api/tokens", create_token)
    app.router.add_delete("/api/tokens/{jti}", revoke_token)
    app.router.add_put("/api/sessions/{session_id}/hold", put_hold)
    app.router.add_delete("/api/sessions/{session_id}/hold", delete_hold)
