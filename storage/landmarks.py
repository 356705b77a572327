"""The landmarks.jsonl file of a session: one JSON object per frame, in index order.

Every writer (live pipeline, batch reprocess) and every reader (export, MJPEG preview, restart
priming) goes through here, so the encoding and the handling of a torn last line (a crash in the
middle of an append) are defined once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def frame_lines(frames: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(frame, separators=(",", ":")) + "\n" for frame in frames)


def append_frames(path: Path, frames: list[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(frame_lines(frames))


def count_frames(path: Path) -> int:
    """Frames in the file, after cutting a torn last line."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return data.count(b"\n", 0, end)


class LandmarkTail:
    """Faces by frame index, read incrementally as the file grows (a torn or still-being-written
    last line is left for the next ``refresh``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.faces: dict[int, list[dict[str, Any]]] = {}

    def refresh(self) -> LandmarkTail:
        if not self.path.exists():
            return self
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            frame = json.loads(line)
            self.faces[frame["index"]] = frame.get("faces") or []
        self.offset += end
        return self
