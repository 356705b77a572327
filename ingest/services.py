"""What the server's handlers share: settings, store, live sessions, thread pool, analysis.

One ``Services`` object per application (held in the aiohttp app under ``SERVICES``), built and
torn down in ``ingest.server``; handlers receive it, nothing is module-level.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from ingest.config import Settings
from ingest.exceptions import IngestError
from ingest.lifecycle import SessionLifecycle
from ingest.metrics import Metrics
from ingest.session import SessionRegistry, StagedChunk
from storage.store import SessionStore

if TYPE_CHECKING:
    from ingest.exports import Exports
    from ingest.session import LiveSession
    from ingest.snapshots import SnapshotService


class Pipeline(Protocol):
    """Where committed chunks go next (decoding and landmarks, ``ingest.pipeline``)."""

    async def submit_chunk(self, session: LiveSession, staged: StagedChunk) -> None: ...

    async def finish(self, session_id: str) -> None:
        """The session stopped: flush its decoder, then fill the frames without landmarks."""
        ...

    async def fail(self, session_id: str, error: IngestError) -> None: ...

    def fill(self, session_id: str) -> None: ...

    def snapshots_waiting(self) -> int:
        """Snapshots queued for analysis, not yet in a worker."""
        ...

    def forget(self, session_id: str) -> None:
        """The session was deleted: drop its pipe, its decoder in the worker, its queued fill."""
        ...

    def fill_status(self, session_id: str) -> dict[str, Any] | None: ...

    async def close(self) -> None: ...

    def attach(self, registry: SessionRegistry, snapshots: SnapshotService) -> None: ...


class NoAnalysis:
    """Ingest only (``--no-analysis``): chunks are stored and served, frames are not analysed."""

    async def submit_chunk(self, session: LiveSession, staged: StagedChunk) -> None:
        return None

    async def finish(self, session_id: str) -> None:
        return None

    async def fail(self, session_id: str, error: IngestError) -> None:
        return None

    def fill(self, session_id: str) -> None:
        return None

    def snapshots_waiting(self) -> int:
        return 0

    def forget(self, session_id: str) -> None:
        return None

    def fill_status(self, session_id: str) -> dict[str, Any] | None:
        return None

    async def close(self) -> None:
        return None

    def attach(self, registry: SessionRegistry, snapshots: SnapshotService) -> None:
        return None


@dataclass
class Services:
    settings: Settings
    store: SessionStore
    registry: SessionRegistry
    # File writes + fdatasync of chunks; several threads so that fsyncs of different sessions
    # overlap (the index commit is grouped separately, see storage.index).
    io_pool: ThreadPoolExecutor
    # Bounds chunks between "received" and "committed" across all sessions.
    write_slots: asyncio.Semaphore
    pipeline: Pipeline
    snapshots: SnapshotService
    loop_monitor: LoopMonitor
    # MJPEG viewers: each holds one thread of preview_pool while it decodes
    preview_pool: ThreadPoolExecutor
    preview_slots: asyncio.Semaphore
    upload_slots: asyncio.Semaphore
    lifecycle: SessionLifecycle
    metrics: Metrics
    exports: Exports

    def with_fill(self, summary: dict[str, Any]) -> dict[str, Any]:
        """A session summary plus ``fill`` (queued, or filling with frames done/total) while the
        server fills its landmarks (ingest/fill.py)."""
        status = self.pipeline.fill_status(summary["id"])
        if status is not None:
            summary["fill"] = status
        return summary


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


SERVICES = web.AppKey("services", Services)
