"""What the async tests share: a test client speaking PROTOCOL.md (python-socketio's
AsyncClient), the one poller (``wait_until``) and the waits built on it, ``record`` (a fixture
recording sent as a browser would), ``export_mp4`` and small HTTP helpers."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from ingest.client import CamingestClient

if TYPE_CHECKING:
    from tests.conftest import Recording


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


def chunk_ack(ack: dict[str, Any], seq: int, durable_on_ack: bool = True) -> dict[str, Any]:
    """The ack of chunk ``seq`` as PROTOCOL v1.2 has it. ``durable_seq`` equals ``seq`` when the store
    of record is the server's disk (``durable_on_ack``); on object storage it may trail, never lead.
    Returns the ack expected, so that ``assert ack == chunk_ack(ack, ...)`` shows every field."""
    durable = ack.get("durable_seq")
    if not durable_on_ack and isinstance(durable, int) and -1 <= durable <= seq:
        return {"ok": True, "seq": seq, "next_seq": seq + 1, "durable_seq": durable}
    return {"ok": True, "seq": seq, "next_seq": seq + 1, "durable_seq": seq}


async def http_get(url: str) -> tuple[int, bytes, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.read(), response.headers.get("Content-Type", "")


async def http_json(url: str) -> tuple[int, Any]:
    status, body, _ = await http_get(url)
    return status, json.loads(body)


async def wait_until(
    check: Callable[[], Any], what: str, timeout: float = 120, *, seen: Callable[[], Any] | None = None,
    interval: float = 0.1,
) -> Any:
    """The one poller of the tests: call ``check()`` (a function or a coroutine function) every
    ``interval`` s until it returns something truthy, which is returned. After ``timeout`` s it
    fails loudly: ``what`` was awaited, and the state it saw (``seen()`` if given, else the last
    value ``check`` returned)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            state = seen() if seen is not None else value
            raise AssertionError(f"{what}: still not so after {timeout:g} s; last seen: {state!r}")
        await asyncio.sleep(interval)


async def export_mp4(url: str, session_id: str) -> None:
    """Ask for the session's MP4 export without overlay (202: accepted) and wait until its list
    of exports has one done."""
    exports = f"{url}/api/sessions/{session_id}/exports"
    async with aiohttp.ClientSession() as http:
        async with http.post(exports, json={"overlay": "none", "format": "mp4"}) as r:
            assert r.status == 202

        async def exported() -> bool:
            async with http.get(exports) as r:
                return any(e["state"] == "done" for e in (await r.json())["exports"])

        await wait_until(exported, "the export")


async def wait_for_summary(
    url: str, done: Callable[[dict[str, Any]], bool], what: str = "the session summary", timeout: float = 120
) -> dict[str, Any]:
    """Poll a session summary (GET ``url``) until ``done(summary)``; returns that summary, or
    fails with ``what`` and the last summary seen. tests/pages.py's runs this one in a thread."""
    last: dict[str, Any] = {}

    async def check() -> dict[str, Any] | None:
        nonlocal last
        _, last = await http_json(url)
        return last if done(last) else None

    return await wait_until(check, what, timeout, seen=lambda: last)


def live_frames(client: CamingestClient) -> list[dict[str, Any]]:
    """Every frame of the ``landmarks`` events ``client`` received, in arrival order."""
    return [frame for event in client.events.get("landmarks", []) for frame in event["frames"]]


async def wait_for_frames(client: CamingestClient, count: int, timeout: float = 120) -> list[dict[str, Any]]:
    """Wait until ``client`` received live landmarks (or ``skipped``) for ``count`` frames."""

    def enough() -> list[dict[str, Any]] | None:
        frames = live_frames(client)
        return frames if len(frames) >= count else None

    return await wait_until(enough, f"live landmarks of {count} frames", timeout,
                            seen=lambda: f"{len(live_frames(client))} frames")  # fmt: skip


async def wait_for_event(client: CamingestClient, name: str, count: int = 1, timeout: float = 60) -> list[Any]:
    """Wait until ``client`` received ``count`` server events ``name``; returns them all."""
    return await wait_until(lambda: len(client.events.get(name, [])) >= count and list(client.events[name]),
                            f"{count} {name!r} event(s)", timeout,
                            seen=lambda: {k: len(v) for k, v in client.events.items() if v})  # fmt: skip


async def record(
    server_url: str, recording: Recording, pace: float = 0.05, *, client: Client | None = None,
    session: dict[str, Any] | None = None, first: int = 0, last: int | None = None, stop: bool = True,
) -> dict[str, Any]:
    """Send ``recording``'s chunks [first, last) as a browser would, each acknowledged, ``pace`` s
    apart (0: as fast as acks come back), on ``client`` (else a connection of its own) into
    ``session`` (else a new one, with the recording's mime), then stop it unless ``stop`` is
    False. Returns the session (its ``start`` ack)."""
    if client is None:
        async with Client(server_url) as own:
            return await record(server_url, recording, pace, client=own, session=session, first=first, last=last,
                                stop=stop)  # fmt: skip
    session = session or await client.start(recording.meta["mime"])
    for seq, data in enumerate(recording.chunks[first:last], start=first):
        ack = await client.chunk(session, seq, data)
        assert ack["ok"], f"seq {seq}: {ack}"
        if pace:
            await asyncio.sleep(pace)
    if stop:
        stopped = await client.stop(session)
        assert stopped["ok"], stopped
    return session


def run(coro: Any) -> Any:
    return asyncio.run(coro)
