"""A real webhook receiver for the tests (aiohttp, in the test process, on a loopback port it can
leave and come back to) that verifies each delivery as the README tells receivers to, and the
server's /metrics read as numbers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port

SECRET = "whsec-for-the-tests-0123456789abcdef"


def verify(secret: bytes, body: bytes, header: str, tolerance_s: float = 300) -> bool:
    """The README's five lines."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret, parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - int(parts["t"])) < tolerance_s


@dataclass
class Received:
    delivery_id: str
    event: str
    body: dict[str, Any]
    verified: bool
    headers_agree: bool  # Camingest-Delivery / -Event say what the body says


class Receiver:
    """``fail_first`` deliveries answered 500, then 200; ``hang``: never answers."""

    def __init__(self, fail_first: int = 0, hang: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.fail_first = fail_first
        self.hang = hang
        self.attempts = 0  # requests that reached it
        self.failed = 0
        self.going_down = False  # after fail_first: 500 to whatever arrives until it is stopped
        self.received: list[Received] = []  # accepted, in arrival order (duplicates included)
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts += 1
        if self.hang:
            await asyncio.sleep(3600)
        if self.failed < self.fail_first or self.going_down:
            self.failed += 1
            self.going_down = self.failed >= self.fail_first  # then it goes away (the test stops it)
            return web.Response(status=500, text="not now")
        parsed = json.loads(body)
        verified = verify(SECRET.encode(), body, request.headers["Camingest-Signature"])
        agree = (request.headers["Camingest-Delivery"], request.headers["Camingest-Event"]) == (parsed["id"], parsed["event"])
        self.received.append(Received(parsed["id"], parsed["event"], parsed, verified, agree))
        return web.json_response({"ok": True})

    async def start(self) -> Receiver:
        self.going_down = False
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def unique(self) -> dict[str, Received]:
        """Deliveries deduplicated by their id (what an idempotent receiver keeps), first arrival."""
        kept: dict[str, Received] = {}
        for item in self.received:
            kept.setdefault(item.delivery_id, item)
        return kept


def webhook_args(receiver: Receiver) -> tuple[str, ...]:
    return ("--webhook", receiver.url, "--webhook-secret", SECRET)


async def metrics(url: str, token: str | None = None) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics", headers=headers) as response:
        text = await response.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k not in ("le", "node"))
            if "le" not in sample.labels:
                samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples

