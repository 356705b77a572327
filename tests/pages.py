"""What the page tests share: the page poller (the one way a page test waits) and small
synchronous HTTP helpers (Playwright's sync API holds the test thread's event loop, so the
async helpers of tests/client.py run on a thread of their own: ``in_thread``)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.client import wait_for_summary as wait_for_summary_async

T = TypeVar("T")

PAGE_STATE = """() => JSON.stringify({camingest: window.camingest, sessions: window.camingestSessions,
  result: window.result, sent: window.sent, landmarkFrames: window.landmarkFrames, facesSeen: window.facesSeen,
  answers: window.answers, errors: window.errors, message: document.getElementById("message")?.textContent},
  (key, value) => key === "snapshots" || key === "frames" ? undefined : value)"""


def wait_until(page: Page, condition: str, timeout_ms: int = 60_000) -> None:
    """The page poller: ``condition`` (a JS function) checked every 100 ms in the page; fails
    with what the page knew (its hooks, address and message), not only that time ran out."""
    try:
        page.wait_for_function(condition, timeout=timeout_ms, polling=100)
    except PlaywrightTimeout:
        raise AssertionError(
            f"{condition} still false after {timeout_ms / 1000:g} s at {page.url}; page: {page.evaluate(PAGE_STATE)}"
        ) from None


def wait_for_selector(page: Page, selector: str, timeout_ms: int = 30_000) -> None:
    """Wait (with the page poller) until an element matching ``selector`` is visible."""
    wait_until(page, f"() => !!document.querySelector({json.dumps(selector)})?.checkVisibility()", timeout_ms)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url) as response:
        return json.loads(response.read())


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:
        return response.read()


def in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run an async helper of tests/client.py to its end on a thread with its own event loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def wait_for_summary(
    url: str, done: Callable[[dict[str, Any]], bool], what: str = "the session summary", timeout: float = 120
) -> dict[str, Any]:
    """tests/client.py's ``wait_for_summary``, for a test whose thread Playwright holds."""
    return in_thread(wait_for_summary_async(url, done, what, timeout))


def state(page: Page) -> dict[str, Any]:
    return page.evaluate(
        "() => ({...window.camingest, snapshots: window.camingest.snapshots.map(s => ({id: s.snapshot_id, faces: s.faces}))})"
    )
