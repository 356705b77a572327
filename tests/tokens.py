"""What the tests of issue 24 share: signing keys, tokens minted as an app's backend mints them
(PyJWT, as the README shows), HTTP with a bearer token, and a Socket.IO connect that says why
it was refused."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import socketio

ADMIN = "admin-token-for-the-tests-0123456789"
KEYS = {"k1": "first-key-" + "a" * 40, "k2": "second-key-" + "b" * 40}


def keyfile(folder: Path, name: str = "keys", **keys: str) -> Path:
    """A --secret-file holding ``keys`` (kid=secret lines, in order)."""
    path = folder / name
    path.write_text("# kid=secret, the first mints\n" + "".join(f"{kid}={secret}\n" for kid, secret in keys.items()))
    return path


def mint(secret: str, kid: str, *, role: str = "recorder", sub: str = "participant", ttl_s: float = 600,
         algorithm: str = "HS256", **claims: Any) -> str:  # fmt: skip
    """A token as an app's backend mints one (the README's lines)."""
    now = time.time()
    payload = {"role": role, "sub": sub, "jti": secrets.token_urlsafe(12), "exp": int(now + ttl_s), **claims}
    return jwt.encode(payload, secret, algorithm=algorithm, headers={"kid": kid})


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


async def call(method: str, url: str, token: str | None = None, **kwargs: Any) -> tuple[int, Any]:
    """``method url`` with ``Authorization: Bearer token``: status and body (JSON, or bytes)."""
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=headers, allow_redirects=False,
                                                             **kwargs) as response:  # fmt: skip
        if response.content_type == "application/json":
            return response.status, await response.json()
        if response.content_type.startswith("multipart/"):  # a preview: its first bytes are enough
            return response.status, await response.content.read(64)
        return response.status, await response.read()


def refusal(message: str, code: str = "unauthorized") -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


async def connect_refusal(url: str, token: str | None) -> str:
    """Connect with ``auth={"token"}``; the message the server refused it with."""
    sio = socketio.AsyncClient(reconnection=False)
    said: list[Any] = []
    sio.on("connect_error", lambda data=None: said.append(data))
    try:
        await sio.connect(url, transports=["websocket"], auth={"token": token} if token else None)
    except socketio.exceptions.ConnectionError:
        assert said, "refused without a message"
        data = said[0]
        return str(data.get("message") if isinstance(data, dict) else data)
    await sio.disconnect()
    raise AssertionError("the connection was accepted")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
