"""Canvas snapshots: validated from their header, stored durably, then analysed.

Order matters: size limit (bytes), magic bytes and declared type, declared pixel count — all
before anything decodes the image. Only then is it stored and handed to the analysis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ingest.config import Settings
from ingest.exceptions import BadRequestError, IngestError, InvalidMediaError, TooLargeError, UnknownSnapshotError
from ingest.images import EXTENSIONS, probe_image
from storage.store import SNAPSHOT_ID_RE, SessionStore, utc_now, write_durably

log = logging.getLogger(__name__)

# analyse(image path) -> faces; provided by the live pipeline (full detection in a worker)
Analyse = Callable[[Path], Awaitable[list[dict[str, Any]]]]
Emit = Callable[[str, dict[str, Any], str], Awaitable[None]]


def validate_snapshot(data: bytes, mime: object, settings: Settings) -> tuple[str, int, int]:
    """(mime, width, height) of an acceptable snapshot, or the contract error."""
    if mime not in EXTENSIONS:
        raise BadRequestError(f"mime must be one of {', '.join(EXTENSIONS)}")
    if len(data) > settings.max_snapshot_bytes:
        raise TooLargeError(f"snapshot of {len(data)} bytes exceeds max_snapshot_bytes={settings.max_snapshot_bytes}")
    info = probe_image(data)
    if info.mime != mime:
        raise InvalidMediaError(f"declared {mime} but the bytes are {info.mime}")
    if info.pixels > settings.max_snapshot_pixels:
        raise TooLargeError(
            f"snapshot declares {info.width}x{info.height} = {info.pixels} pixels, "
            f"more than max_snapshot_pixels={settings.max_snapshot_pixels}"
        )
    return info.mime, info.width, info.height


class SnapshotService:
    def __init__(self, store: SessionStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.analyse: Analyse | None = None
        self.emit: Emit | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def landmarks_path(self, session_id: str, snapshot_id: str) -> Path:
        return self.store.paths(session_id).snapshots / f"{snapshot_id}.landmarks.json"

    def image_path(self, session_id: str, snapshot_id: str) -> Path:
        if not SNAPSHOT_ID_RE.match(snapshot_id):
            raise UnknownSnapshotError(f"session {session_id} has no snapshot {snapshot_id[:40]!r}")
        self.store.get_row(session_id)  # an unknown session is unknown_session, first
        try:
            row = self.store.snapshot_row(session_id, snapshot_id)
        except LookupError:
            raise UnknownSnapshotError(f"session {session_id} has no snapshot {snapshot_id[:40]!r}") from None
        return self.store.paths(session_id).snapshots / f"{snapshot_id}.{EXTENSIONS[row['mime']]}"

    async def store_snapshot(self, session_id: str, mime: object, data: bytes, t_ms: float | None) -> str:
        mime, width, height = validate_snapshot(data, mime, self.settings)
        snapshot_id = await asyncio.to_thread(self._write, session_id, mime, width, height, data, t_ms)
        if self.analyse is not None:
            task = asyncio.create_task(self._analyse(session_id, snapshot_id, mime))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return snapshot_id

    def _write(self, session_id: str, mime: str, width: int, height: int, data: bytes, t_ms: float | None) -> str:
        folder = self.store.paths(session_id).snapshots
        folder.mkdir(exist_ok=True)
        number = self.store.index.read(
            lambda c: c.execute("SELECT COUNT(*) FROM snapshots WHERE session_id=?", (session_id,)).fetchone()[0]
        )
        snapshot_id = f"{number:06d}-{secrets.token_hex(3)}"
        fd = os.open(folder / f"{snapshot_id}.{EXTENSIONS[mime]}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_durably(fd, 0, data)
        finally:
            os.close(fd)
        self.store.index.write(
            lambda c: c.execute(
                "INSERT INTO snapshots VALUES (?,?,?,?,?,?,?,?)",
                (session_id, snapshot_id, mime, t_ms, len(data), width, height, utc_now()),
            )
        )
        return snapshot_id

    async def _analyse(self, session_id: str, snapshot_id: str, mime: str) -> None:
        assert self.analyse is not None
        path = self.store.paths(session_id).snapshots / f"{snapshot_id}.{EXTENSIONS[mime]}"
        try:
            faces = await self.analyse(path)
        except IngestError as exc:  # stored all the same; `reprocess` does not cover snapshots
            log.warning("snapshot %s of %s not analysed: %s", snapshot_id, session_id, exc.message)
            if self.emit is not None:
                error = {"session_id": session_id, "snapshot_id": snapshot_id, "faces": [], "error": exc.to_dict()}
                await self.emit("snapshot_landmarks", error, session_id)
            return
        result = {"session_id": session_id, "snapshot_id": snapshot_id, "faces": faces}
        out = self.landmarks_path(session_id, snapshot_id)
        await asyncio.to_thread(_write_json_atomically, out, {"faces": faces})
        if self.emit is not None:
            await self.emit("snapshot_landmarks", result, session_id)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _write_json_atomically(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
