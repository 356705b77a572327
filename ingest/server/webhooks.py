"""Webhooks to the app that embeds camingest: what happened to its sessions, signed, at least once.

Events: ``session.started``, ``session.stopped`` (its summary says ``ended_by``),
``session.analysed`` (every frame has landmarks: counts and ``people``, who appears),
``session.failed``, ``session.deleted`` (``reason``: ``deleted``, ``retention``, ``prune``),
``export.done``, ``gallery.changed``. Each is one JSON body per ``--webhook`` URL:
``{"id": DELIVERY_ID, "event", "created_at", "session": SUMMARY, ...}``, POSTed with
``Camingest-Signature: t=UNIX,v1=HEX`` (HMAC-SHA256 of ``f"{t}.{body}"`` with
``webhook_secret``, as Stripe signs theirs), ``Camingest-Delivery`` and ``Camingest-Event``.

Durable and never in the way: an event is put on a bounded in-memory queue (``webhook_queue``;
full: the oldest dropped and counted), from which one task writes it into the outbox in the
index (storage/outbox.py; bounded by ``webhook_max_outbox``, oldest dropped and counted) in the
order the events happened; another task claims due rows and delivers them (``webhook_concurrency``
at once, ``webhook_timeout_s`` each), deletes a row on any 2xx, and otherwise tries it again
with exponential backoff until it is ``webhook_max_age_s`` old, then drops and counts it. Acks
and landmarks never wait for any of it. A kill -9 loses only events not yet written (the
queue, milliseconds); a delivery whose answer was lost is sent again with the same id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client import Counter

from ingest.config import Settings
from ingest.metrics import Metrics
from storage.errors import StoreUnavailableError, UnknownSessionError
from storage.outbox import Delivery, NewDelivery, OutboxStats
from storage.store import SessionStore, utc_now

log = logging.getLogger("camingest.webhooks")
EVENTS = ("session.started", "session.stopped", "session.analysed", "session.failed", "session.deleted",
          "export.done", "gallery.changed")  # fmt: skip
SIGNATURE_HEADER = "Camingest-Signature"
STATS_EVERY_S = 0.5
MAX_POLL_S = 1.0  # rows written by other nodes (or commands) are seen within this
ANALYSED_POLL_S = 1.0


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The signature header's value: ``t=TIMESTAMP,v1=HMAC-SHA256(secret, "TIMESTAMP." + body)``."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, tolerance_s: float = 300, now: float | None = None) -> bool:
    """What a receiver does (the README's five lines): the signature matches and is recent."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    expected = hmac.new(secret, parts.get("t", "").encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = parts.get("t", "").isdigit() and abs((time.time() if now is None else now) - int(parts["t"])) < tolerance_s
    return hmac.compare_digest(expected, parts.get("v1", "")) and fresh


def deliveries(settings: Settings, event: str, data: dict[str, Any], ordering: str, now: float) -> list[NewDelivery]:
    """One outbox row per configured URL for ``event`` (each its own delivery id)."""
    assert event in EVENTS, event
    rows = []
    for url in settings.webhooks:
        delivery_id = "dlv_" + secrets.token_hex(12)
        body = {"id": delivery_id, "event": event, "created_at": utc_now(), **data}
        rows.append(NewDelivery(delivery_id, url, event, ordering, json.dumps(body, separators=(",", ":")), now))
    return rows


def offline_event(settings: Settings, store: SessionStore, event: str, data: dict[str, Any], ordering: str = "") -> None:
    """An event from a command (``camingest prune``): written into the outbox, delivered by a
    running server (blocking)."""
    if settings.webhooks:
        store.outbox.add(deliveries(settings, event, data, ordering, time.time()), settings.webhook_max_outbox)


@dataclass
class _Event:
    event: str
    session_id: str | None
    data: dict[str, Any]
    summary: dict[str, Any] | None  # taken now (a deleted session's), else read when written


class Webhooks:
    """The events of one node, their outbox writer and their deliveries."""

    def __init__(self, settings: Settings, store: SessionStore, metrics: Metrics, node: str,
                 filling: Callable[[str], bool] = lambda _: False) -> None:  # fmt: skip
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.node = node
        self.filling = filling  # whether the server is still filling a session's landmarks
        self.enabled = bool(settings.webhooks)
        self.secret = (settings.webhook_secret or "").encode()
        self._queue: asyncio.Queue[_Event] = asyncio.Queue(settings.webhook_queue)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._watching: dict[str, asyncio.Task[None]] = {}
        self._failed: collections.OrderedDict[str, None] = collections.OrderedDict()  # sessions said failed
        self.stats = OutboxStats(0, None, None)
        self._stats_at = 0.0
        r = metrics.registry
        self.delivered = Counter("camingest_webhook_deliveries", "Webhook deliveries a receiver accepted (2xx)", registry=r)
        self.failures = Counter("camingest_webhook_failures", "Webhook delivery attempts that failed (retried later)",
                                registry=r)  # fmt: skip
        self.dropped = Counter("camingest_webhook_dropped", "Webhook deliveries dropped, by why (expired: older than "
                               "webhook_max_age_s; full: the outbox or its queue was full)", ["reason"], registry=r)  # fmt: skip
        metrics.gauge("camingest_webhook_outbox_depth", "Webhook deliveries in the outbox (all nodes)",
                      lambda: self.stats.depth)  # fmt: skip
        metrics.gauge("camingest_webhook_oldest_age_seconds", "Age of the oldest delivery in the outbox",
                      lambda: 0.0 if self.stats.oldest_created_at is None else max(0.0, time.time() - self.stats.oldest_created_at))  # fmt: skip

    # -- events (never block, never raise) ----------------------------------------------------
    def session_event(self, event: str, session_id: str, data: dict[str, Any] | None = None,
                      summary: dict[str, Any] | None = None) -> None:  # fmt: skip
        if event == "session.failed":
            if session_id in self._failed:
                return
            self._failed[session_id] = None
            while len(self._failed) > 10_000:
                self._failed.popitem(last=False)
        self._put(_Event(event, session_id, data or {}, summary))

    def event(self, event: str, data: dict[str, Any]) -> None:
        self._put(_Event(event, None, data, None))

    def _put(self, item: _Event) -> None:
        if not self.enabled:
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            dropped = self._queue.get_nowait()
            self.dropped.labels("full").inc(len(self.settings.webhooks))
            log.warning("webhooks: the queue is full (webhook_queue=%d): %s dropped", self.settings.webhook_queue,
                        dropped.event)  # fmt: skip
            self._queue.put_nowait(item)

    def watch_analysis(self, session_id: str) -> None:
        """The session stopped: say ``session.analysed`` once every frame has landmarks (or
        ``session.failed`` if its video turns out not to decode)."""
        if not self.enabled or not self.settings.analysis or session_id in self._watching:
            return
        if len(self._watching) >= self.settings.max_open_sessions:
            log.warning("webhooks: %d sessions awaiting their landmarks already; %s is not followed",
                        len(self._watching), session_id)  # fmt: skip
            return
        task = asyncio.get_running_loop().create_task(self._analysed(session_id), name=f"analysed {session_id}")
        self._watching[session_id] = task
        task.add_done_callback(lambda _: self._watching.pop(session_id, None))

    async def _analysed(self, session_id: str) -> None:
        deadline = time.monotonic() + self.settings.webhook_max_age_s
        while time.monotonic() < deadline:
            try:
                summary = await asyncio.to_thread(self.store.summary, session_id)
            except UnknownSessionError:
                return  # deleted meanwhile
            except (StoreUnavailableError, OSError):
                summary = None
            if summary is not None:
                if summary["state"] == "failed":
                    self.session_event("session.failed", session_id, summary=summary)
                    return
                complete = (summary["analysed_frames"] >= summary["frames"] and summary["skipped_frames"] == 0
                            and not self.filling(session_id))  # fmt: skip
                if complete or summary.get("landmarks_error"):
                    try:
                        people = (await asyncio.to_thread(self.store.digest, session_id))["people"]
                    except UnknownSessionError:
                        return
                    self.session_event("session.analysed", session_id, {"people": people}, summary)
                    return
            await asyncio.sleep(ANALYSED_POLL_S)

    # -- the outbox writer ------------------------------------------------------------------------
    def start(self) -> None:
        if not self.enabled:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._write(), name="webhook outbox writer"),
                       loop.create_task(self._deliver_loop(), name="webhook deliveries")]  # fmt: skip

    async def _write(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 256:
                batch.append(self._queue.get_nowait())
            while True:
                try:
                    dropped = await asyncio.to_thread(self._write_batch, batch)
                    break
                except (StoreUnavailableError, OSError) as exc:  # the index away: the same batch again
                    log.warning("webhooks: events not written into the outbox yet (%s); again in 1 s", exc)
                    await asyncio.sleep(1.0)
            if dropped:
                self.dropped.labels("full").inc(dropped)
                log.warning("webhooks: the outbox is full (webhook_max_outbox=%d): the %d oldest deliveries dropped",
                            self.settings.webhook_max_outbox, dropped)  # fmt: skip
            self._wake.set()

    def _write_batch(self, batch: list[_Event]) -> int:
        rows: list[NewDelivery] = []
        now = time.time()
        for item in batch:
            data = dict(item.data)
            if item.session_id is not None:
                summary = item.summary
                if summary is None:
                    try:
                        summary = self.store.summary(item.session_id)
                    except UnknownSessionError:
                        summary = {"id": item.session_id}
                data["session"] = summary
            rows += deliveries(self.settings, item.event, data, item.session_id or "", now)
        return self.store.outbox.add(rows, self.settings.webhook_max_outbox)

    # -- deliveries ----------------------------------------------------------------------------
    async def _deliver_loop(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                try:
                    await self._pass(http)
                except (StoreUnavailableError, OSError) as exc:
                    log.warning("webhooks: the outbox cannot be read (%s); again in 1 s", exc)
                except Exception:
                    log.exception("webhooks: a delivery pass failed")
                self._wake.clear()
                wait = MAX_POLL_S
                if self.stats.next_due is not None:
                    wait = min(wait, max(0.02, self.stats.next_due - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    async def _pass(self, http: aiohttp.ClientSession) -> None:
        now = time.time()
        if now - self._stats_at >= STATS_EVERY_S or self._wake.is_set():
            self.stats = await asyncio.to_thread(self.store.outbox.stats)
            self._stats_at = now
        free = self.settings.webhook_concurrency - len(self._in_flight)
        if free <= 0 or not self.stats.depth or (self.stats.next_due or 0) > now:
            return
        hold = self.settings.webhook_timeout_s + 30  # then another node may take it
        rows = await asyncio.to_thread(self.store.outbox.claim, self.node, now, free, hold)
        for row in rows:
            task = asyncio.get_running_loop().create_task(self._deliver(http, row), name=f"webhook {row.delivery_id}")
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        if rows:  # more may be due behind these: look again at once
            self.stats = await asyncio.to_thread(self.store.outbox.stats)
            self._stats_at = time.time()

    async def _deliver(self, http: aiohttp.ClientSession, row: Delivery) -> None:
        body = row.body.encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.secret, body, int(time.time())),
                   "Camingest-Delivery": row.delivery_id, "Camingest-Event": row.event}  # fmt: skip
        error = None
        try:
            async with http.post(row.url, data=body, headers=headers, allow_redirects=False) as response:
                if not 200 <= response.status < 300:
                    error = f"HTTP {response.status}"
        except TimeoutError:
            error = f"no answer within {self.settings.webhook_timeout_s:g} s (webhook_timeout_s)"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
        try:
            if error is None:
                await asyncio.to_thread(self.store.outbox.delivered, [row.id])
                self.delivered.inc()
                return
            self.failures.inc()
            age = time.time() - row.created_at
            if age >= self.settings.webhook_max_age_s:
                await asyncio.to_thread(self.store.outbox.delivered, [row.id])
                self.dropped.labels("expired").inc()
                log.warning("webhooks: %s (%s to %s) dropped after %d attempts over %.0f s: %s", row.delivery_id,
                            row.event, row.url, row.attempts + 1, age, error)  # fmt: skip
                return
            delay = min(self.settings.webhook_max_retry_s, self.settings.webhook_retry_s * 2 ** min(row.attempts, 30))
            delay *= random.uniform(0.8, 1.2)  # clients of one dead receiver do not all retry at once
            await asyncio.to_thread(self.store.outbox.retry_later, row.id, time.time() + delay, error)
            log.info("webhooks: %s (%s) failed (%s); attempt %d again in %.1f s", row.delivery_id, row.event, error,
                     row.attempts + 2, delay)  # fmt: skip
        finally:
            self._wake.set()

    async def close(self) -> None:
        """Stop delivering; events still queued are written into the outbox (delivered after
        the restart, or by another node)."""
        for task in [*self._tasks, *self._in_flight, *self._watching.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._in_flight, *self._watching.values(), return_exceptions=True)
        left = []
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        if left:
            try:
                await asyncio.to_thread(self._write_batch, left)
            except (StoreUnavailableError, OSError) as exc:
                log.warning("webhooks: %d events not written into the outbox at shutdown (%s)", len(left), exc)
