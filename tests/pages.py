"""What the page tests share: the page poller (the one way a page test waits) and small
synchronous HTTP helpers (Playwright's sync API holds the test thread's event loop)."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

PAGE_STATE = """() => JSON.stringify({camingest: window.camingest, sessions: window.camingestSessions,
  result: window.result, sent: window.sent, landmarkFrames: window.landmarkFrames, facesSeen: window.facesSeen,
  answers: window.answers, errors: window.errors},
  (key, value) => key === "snapshots" || key === "frames" ? undefined : value)"""


def wait_until(page: Page, condition: str, timeout_ms: int = 60_000) -> None:
    """The page poller: fails with what the page knew, not only that time ran out."""
    try:
        page.wait_for_function(condition, timeout=timeout_ms, polling=100)
    except PlaywrightTimeout:
        raise AssertionError(f"{condition} still false after {timeout_ms / 1000:g} s; page: {page.evaluate(PAGE_STATE)}") from None


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url) as response:
        return json.loads(response.read())


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:
        return response.read()


def wait_for_summary(url: str, done: Any, timeout_s: float = 120) -> dict[str, Any]:
    """Poll a session summary (from a thread without an event loop) until ``done`` says so."""
    deadline = time.monotonic() + timeout_s
    while not done(summary := get_json(url)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last summary: {summary}")
        time.sleep(0.2)
    return summary


def state(page: Page) -> dict[str, Any]:
    return page.evaluate(
        "() => ({...window.camingest, snapshots: window.camingest.snapshots.map(s => ({id: s.snapshot_id, faces: s.faces}))})"
    )
