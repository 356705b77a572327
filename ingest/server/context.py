"""What the server's handlers share: settings, store, live sessions, thread pools, analysis.

One ``ServerContext`` per application (held in the aiohttp app under ``CONTEXT``), built and torn
down in ``ingest/server/app.py``; handlers receive it, nothing is module-level. Each pool and
semaphore here has one owner: this context starts them and ``close`` stops them.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ingest.config import Settings
from ingest.metrics import Metrics
from ingest.recording.analysis_sink import AnalysisSink
from ingest.recording.lifecycle import SessionLifecycle
from ingest.recording.session import SessionRegistry
from ingest.recording.snapshots import SnapshotService
from ingest.server.audit import AuditLog
from ingest.server.classic_images import ImageLane
from ingest.server.clients import Clients, PerClient
from ingest.server.export_jobs import ExportJobs
from ingest.server.principals import TokenAuthority
from ingest.server.webhooks import Webhooks
from storage.store import SessionStore

log = logging.getLogger("camingest")


class LoopMonitor:
    """Measures event-loop lag: how late a 50 ms sleep wakes up. Anything slow on the loop
    shows here (exposed at GET /api/health)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.max_lag_ms = 0.0
        self.last_lag_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            self.last_lag_ms = max(0.0, (loop.time() - before - self.interval) * 1000)
            self.max_lag_ms = max(self.max_lag_ms, self.last_lag_ms)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


@dataclass
class ServerContext:
    settings: Settings
    store: SessionStore
    registry: SessionRegistry
    # File writes + fdatasync of chunks; several threads so that fsyncs of different sessions
    # overlap (the index commit is grouped separately, see storage/index.py).
    io_pool: ThreadPoolExecutor
    # Bounds chunks between "received" and "committed" across all sessions.
    write_slots: asyncio.Semaphore
    pipeline: AnalysisSink
    snapshots: SnapshotService
    loop_monitor: LoopMonitor
    # MJPEG viewers: each holds one thread of preview_pool while it decodes
    preview_pool: ThreadPoolExecutor
    preview_slots: asyncio.Semaphore
    upload_slots: asyncio.Semaphore
    lifecycle: SessionLifecycle
    metrics: Metrics
    exports: ExportJobs
    # thumbnails being decoded (max_thumbnails); others wait
    thumbnail_slots: asyncio.Semaphore
    # who may do what (tokens, the denylist), what the embedding app is told, what is audited
    authority: TokenAuthority
    webhooks: Webhooks
    audit: AuditLog
    # the try-on pages' images to the analysis workers (ingest/live/tryon_lane.py); None: --no-analysis
    tryon: ImageLane | None = None
    # who a client is, for the per-client limits (ingest/server/clients.py)
    clients: Clients = field(default_factory=lambda: Clients(()))
    # MJPEG viewers per client (max_previews_per_client)
    previews: PerClient = field(default_factory=lambda: PerClient(2, "preview viewers", "max_previews_per_client"))

    def with_fill(self, summary: dict[str, Any]) -> dict[str, Any]:
        """A session summary plus ``fill`` (queued, or filling with frames done/total) while the
        server fills its landmarks (ingest/live/backfill.py)."""
        status = self.pipeline.fill_status(summary["id"])
        if status is not None:
            summary["fill"] = status
        return summary

    def pending_writes(self) -> int:
        """Chunks received, not yet committed."""
        return self.settings.max_pending_writes - self.write_slots._value

    async def close(self) -> None:
        """Stop what this context owns, in order (the app's cleanup calls it)."""
        self.loop_monitor.stop()
        await self.lifecycle.close(self.settings.shutdown_grace_s)
        log.info("shutdown: finalizes done")
        await self.snapshots.close()
        await self.pipeline.close()
        log.info("shutdown: analysis workers stopped")
        await asyncio.to_thread(self.io_pool.shutdown, wait=True)
        await asyncio.to_thread(self.exports.close)
        self.preview_pool.shutdown(wait=False, cancel_futures=True)
        await self.webhooks.close()  # what is queued goes into the outbox, before the index closes
        await self.authority.close()
        await asyncio.to_thread(self.audit.close)
        self.registry.close_all()
        await asyncio.to_thread(self.store.close)
        log.info("shutdown: index closed")


CONTEXT = web.AppKey("context", ServerContext)
