"""What the server's handlers share: settings, store, live sessions, thread pool, analysis.

One ``Services`` object per application (held in the aiohttp app under ``SERVICES``), built and
torn down in ``ingest.server``; handlers receive it, nothing is module-level.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from ingest.config import Settings
from ingest.exceptions import IngestError
from ingest.session import SessionRegistry, StagedChunk
from storage.store import SessionStore

if TYPE_CHECKING:
    from ingest.session import LiveSession
    from ingest.snapshots import SnapshotService


class Pipeline(Protocol):
    """Where committed chunks go next (decoding and landmarks, ``ingest.pipeline``)."""

    async def submit_chunk(self, session: LiveSession, staged: StagedChunk) -> None: ...

    async def finish(self, session_id: str) -> None: ...

    async def fail(self, session_id: str, error: IngestError) -> None: ...

    async def close(self) -> None: ...


class NoAnalysis:
    """Ingest only (``--no-analysis``): chunks are stored and served, frames are not analysed."""

    async def submit_chunk(self, session: LiveSession, staged: StagedChunk) -> None:
        return None

    async def finish(self, session_id: str) -> None:
        return None

    async def fail(self, session_id: str, error: IngestError) -> None:
        return None

    async def close(self) -> None:
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


SERVICES = web.AppKey("services", Services)
