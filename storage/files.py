"""The data folder on the local disk: one folder per session, and how bytes reach the disk durably.

    DATA/sessions/<id>/stream.webm          the acknowledged chunks concatenated, as sent
    DATA/sessions/<id>/landmarks.jsonl      one JSON line per frame (storage/landmarks.py)
    DATA/sessions/<id>/landmarks.meta.json  how they were made (storage/landmarks_meta.py)
    DATA/sessions/<id>/recording.webm       the seekable remux, after stop
    DATA/sessions/<id>/snapshots/           <snapshot_id>.<ext> and <snapshot_id>.landmarks.json
    DATA/sessions/<id>/exports/             <overlay>.<format>
    DATA/sessions/<id>/thumbnail-<frame>.jpg  the sessions page's picture of it (a frame with a face)
    DATA/uploads/                           uploads being received (never acknowledged)
    DATA/tmp/                               imports being remuxed (never acknowledged)

Only storage/ knows these names; the rest of camingest asks the store for what it needs.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from storage.errors import UnknownSessionError

SESSION_ID_RE = re.compile(r"\A[0-9]{8}-[0-9]{6}-[0-9a-f]{8}\Z")
SNAPSHOT_ID_RE = re.compile(r"\A[0-9]{6}-[0-9a-f]{6}\Z")
IMAGE_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}


def validate_session_id(session_id: object) -> str:
    """The id, if it has the server's form; nothing else ever reaches a path."""
    if not isinstance(session_id, str) or not SESSION_ID_RE.match(session_id):
        raise UnknownSessionError(f"unknown session {str(session_id)[:80]!r}")
    return session_id


@dataclass(frozen=True)
class SessionFiles:
    """Where one session's files lie in the data folder."""

    root: Path

    @property
    def stream(self) -> Path:
        return self.root / "stream.webm"

    @property
    def landmarks(self) -> Path:
        return self.root / "landmarks.jsonl"

    @property
    def landmarks_meta(self) -> Path:
        return self.root / "landmarks.meta.json"

    @property
    def recording(self) -> Path:
        return self.root / "recording.webm"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    def thumbnail(self, frame: int) -> Path:
        return self.root / f"thumbnail-{int(frame)}.jpg"

    def thumbnails(self) -> list[Path]:
        return sorted(self.root.glob("thumbnail-*.jpg"))

    def snapshot(self, snapshot_id: str, mime: str) -> Path:
        return self.snapshots / f"{snapshot_id}.{IMAGE_EXTENSIONS[mime]}"

    def snapshot_landmarks(self, snapshot_id: str) -> Path:
        return self.snapshots / f"{snapshot_id}.landmarks.json"


@dataclass(frozen=True)
class LocalStream:
    """Read access to a session's raw stream that a worker process can be handed (picklable):
    the file's path and the acknowledged length (the file may be longer after a crash)."""

    path: str
    length: int

    def open(self) -> BinaryIO:
        return open(self.path, "rb")

    def read_spans(self, spans: list[tuple[int, int]]) -> list[bytes]:
        out = []
        with open(self.path, "rb") as f:
            for offset, length in spans:
                f.seek(offset)
                data = f.read(length)
                if len(data) != length:
                    raise OSError(f"the stored stream is shorter than its index ({offset}+{length})")
                out.append(data)
        return out


class StreamWriter:
    """Appends a session's chunks to its raw stream, each flushed to the disk before returning
    (``fdatasync``): a chunk is acknowledged only once it would survive a power loss."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def write_at(self, offset: int, data: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        write_durably(self._fd, offset, data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_durably(fd: int, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` and flush it to the disk before returning."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
    os.fdatasync(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist) with ``data``, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_durably(fd, 0, data)
    finally:
        os.close(fd)


def replace_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader (or a crash) sees the old or the new file."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new file into; it replaces ``path`` (after
    an fsync) when the block ends without an error, and is removed otherwise."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def is_leftover(name: str) -> bool:
    """A temporary file some writer of this module left when it was killed mid-way."""
    return name.endswith(".tmp")
