"""A test client speaking PROTOCOL.md with python-socketio's AsyncClient."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from ingest.client import CamingestClient


class Client(CamingestClient):
    """The package's client (ingest/client.py) plus raw helpers for protocol tests, which send
    exactly the payloads they name (wrong seqs, foreign tokens) and read the acks as sent."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, reconnect=False, **options)

    async def start(self, mime: str = "video/webm;codecs=vp8", **extra: Any) -> dict[str, Any]:  # type: ignore[override]
        ack = await self.call("start", {"mime": mime, **extra})
        assert ack["ok"], ack
        return ack

    async def chunk(self, session: dict[str, Any], seq: int, data: bytes, **extra: Any) -> dict[str, Any]:
        payload = {"session_id": session["session_id"], "token": session["token"], "seq": seq, "data": data}
        return await self.call("chunk", {**payload, **extra})

    async def send_all(self, session: dict[str, Any], chunks: list[bytes], first_seq: int = 0) -> None:
        """Send ``chunks`` as consecutive seqs from ``first_seq``, each one acknowledged."""
        for seq, data in enumerate(chunks, start=first_seq):
            ack = await self.chunk(session, seq, data)
            assert ack["ok"], f"seq {seq}: {ack}"

    async def stop(self, session: dict[str, Any]) -> dict[str, Any]:
        return await self.call("stop", {"session_id": session["session_id"], "token": session["token"]})


async def http_get(url: str) -> tuple[int, bytes, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.read(), response.headers.get("Content-Type", "")


async def http_json(url: str) -> tuple[int, Any]:
    status, body, _ = await http_get(url)
    import json

    return status, json.loads(body)


async def wait_until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 120) -> Any:
    """The one poller of the tests: await ``check()`` every 0.1 s until it returns something
    truthy (returned), else fail loudly with ``what`` and the last value after ``timeout`` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} (after {timeout:g} s; last: {value!r})")
        await asyncio.sleep(0.1)


async def wait_for_summary(url: str, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """Poll a session summary until ``done`` says so (2 minutes at most)."""
    last: dict[str, Any] = {}

    async def check() -> dict[str, Any] | None:
        nonlocal last
        _, last = await http_json(url)
        return last if done(last) else None

    try:
        return await wait_until(check, what)
    except AssertionError:
        raise AssertionError(f"{what}: {last}") from None


def run(coro: Any) -> Any:
    return asyncio.run(coro)
