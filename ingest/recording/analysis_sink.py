"""Where a session's committed chunks go next: the interface the recording side calls, owned
here (the lower layer would otherwise import the upper). ``ingest/live/pipeline.py`` implements
it with worker processes; ``NoAnalysis`` is ``--no-analysis``."""

from __future__ import annotations

from typing import Any, Protocol

from ingest.exceptions import IngestError
from storage.records import ChunkRecord


class AnalysisSink(Protocol):
    async def submit_chunk(self, session_id: str, record: ChunkRecord, unit: bytes) -> None:
        """A committed chunk's standalone unit (the blocks it completed), with its record (its
        frames, keyframe and times: what sending its frames ``skipped`` needs)."""
        ...

    async def finish(self, session_id: str) -> None:
        """The session stopped: flush its decoder, then fill the frames without landmarks."""
        ...

    async def fail(self, session_id: str, error: IngestError) -> None:
        """The stream became unreadable: drop its decoder, tell its pages."""
        ...

    def fill(self, session_id: str) -> None:
        """Landmark a stopped session's frames that have none (an upload's, all of them)."""
        ...

    def forget(self, session_id: str) -> None:
        """The session was deleted: drop its pipe, its decoder in the worker, its queued fill."""
        ...

    def fill_status(self, session_id: str) -> dict[str, Any] | None:
        """``{"state": "queued"}`` or ``{"state": "filling", "frames_done", "frames_total"}``."""
        ...

    async def gallery_changed(self) -> None:
        """The gallery changed on this node: the analysis uses the new one from now on."""
        ...

    async def close(self) -> None: ...


class NoAnalysis:
    """Ingest only (``--no-analysis``): chunks are stored and served, frames are not analysed."""

    async def submit_chunk(self, session_id: str, record: ChunkRecord, unit: bytes) -> None:
        return None

    async def finish(self, session_id: str) -> None:
        return None

    async def fail(self, session_id: str, error: IngestError) -> None:
        return None

    def fill(self, session_id: str) -> None:
        return None

    def forget(self, session_id: str) -> None:
        return None

    def fill_status(self, session_id: str) -> dict[str, Any] | None:
        return None

    async def gallery_changed(self) -> None:
        return None

    async def close(self) -> None:
        return None
