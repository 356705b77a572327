"""Canvas snapshots: validated from their header, stored durably, then analysed.

Order matters: size limit (bytes), magic bytes and declared type, declared pixel count — all
before anything decodes the image. Only then is it stored and handed to the analysis.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ingest.background import BackgroundTasks
from ingest.config import Settings
from ingest.exceptions import BadRequestError, IngestError, InvalidMediaError, TooLargeError
from ingest.media.image_headers import EXTENSIONS, probe_image
from storage.store import SessionStore

log = logging.getLogger(__name__)

# analyse(stored image) -> faces: the live pipeline's snapshot lane (full detection in a worker)
Analyse = Callable[[str], Awaitable[list[dict[str, Any]]]]
Emit = Callable[[str, dict[str, Any], str], Awaitable[None]]


def validate_snapshot(data: bytes, mime: object, settings: Settings, what: str = "snapshot") -> tuple[str, int, int]:
    """(mime, width, height) of an acceptable snapshot (or try-on ``image``), or the contract error."""
    if mime not in EXTENSIONS:
        raise BadRequestError(f"mime must be one of {', '.join(EXTENSIONS)}")
    if len(data) > settings.max_snapshot_bytes:
        raise TooLargeError(f"{what} of {len(data)} bytes exceeds max_snapshot_bytes={settings.max_snapshot_bytes}")
    info = probe_image(data)
    if info.mime != mime:
        raise InvalidMediaError(f"declared {mime} but the bytes are {info.mime}")
    if info.pixels > settings.max_snapshot_pixels:
        raise TooLargeError(
            f"{what} declares {info.width}x{info.height} = {info.pixels} pixels, "
            f"more than max_snapshot_pixels={settings.max_snapshot_pixels}"
        )
    return info.mime, info.width, info.height


class SnapshotService:
    def __init__(self, store: SessionStore, settings: Settings, analyse: Analyse | None, emit: Emit) -> None:
        self.store = store
        self.settings = settings
        self.analyse = analyse  # None: --no-analysis, snapshots are stored only
        self.emit = emit
        self._tasks = BackgroundTasks(log)

    async def store_snapshot(self, session_id: str, mime: object, data: bytes, t_ms: float | None) -> str:
        mime, width, height = validate_snapshot(data, mime, self.settings)
        snapshot_id = await asyncio.to_thread(self.store.add_snapshot, session_id, mime, width, height, data, t_ms)
        if self.analyse is not None:
            self._tasks.spawn(self._analyse(session_id, snapshot_id), f"analyse snapshot {snapshot_id}")
        return snapshot_id

    async def store_analysed(
        self, session_id: str, mime: str, width: int, height: int, data: bytes, t_ms: float | None,
        faces: list[dict[str, Any]],
    ) -> str:  # fmt: skip
        """Store a validated image whose faces are already known (a try-on page's image, found by
        the worker that recoloured it), listed with its landmarks; its id."""
        return await asyncio.to_thread(self.store.add_snapshot, session_id, mime, width, height, data, t_ms, faces)

    async def _analyse(self, session_id: str, snapshot_id: str) -> None:
        assert self.analyse is not None
        try:
            path = await asyncio.to_thread(self.store.snapshot_file, session_id, snapshot_id)
            faces = await self.analyse(path)
        except IngestError as exc:  # stored all the same; `reprocess` does not cover snapshots
            log.warning("snapshot %s of %s not analysed: %s", snapshot_id, session_id, exc.message)
            error = {"session_id": session_id, "snapshot_id": snapshot_id, "faces": [], "error": exc.to_dict()}
            await self.emit("snapshot_landmarks", error, session_id)
            return
        await asyncio.to_thread(self.store.write_snapshot_landmarks, session_id, snapshot_id, faces)
        result = {"session_id": session_id, "snapshot_id": snapshot_id, "faces": faces}
        await self.emit("snapshot_landmarks", result, session_id)

    async def close(self) -> None:
        await self._tasks.cancel()
