"""The landmarks.jsonl file of a session: one JSON object per frame, in index order.

Every writer (live pipeline, batch reprocess) and every reader (export, MJPEG preview, restart
priming) goes through here, so the encoding and the handling of a torn last line (a crash in the
middle of an append) are defined once.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# frame_lines writes "index" first and no spaces, so a stored line can be classified without
# parsing its 68 x 2 coordinates (a one-hour session has ~100k lines)
_INDEX = re.compile(rb'^\{"index":(\d+),')
_SKIPPED = b'"skipped":true'
_PROVISIONAL = b'"provisional":true'
_WITH_FACE = b'"faces":[{'


@dataclass
class LandmarkCounts:
    """What the index keeps about a session's landmarks (see storage/index.py)."""

    frames: int = 0
    with_faces: int = 0
    # frames without their final result: skipped live, or analysed provisionally (a sweep the
    # worker had no time for was put off); the fill after stop gives both theirs
    skipped: int = 0

    @classmethod
    def of(cls, frames: Iterable[dict[str, Any]]) -> LandmarkCounts:
        counts = cls()
        counts.add(frames)
        return counts

    def add(self, frames: Iterable[dict[str, Any]]) -> None:
        for frame in frames:
            self.frames += 1
            self.skipped += bool(frame.get("skipped") or frame.get("provisional"))
            self.with_faces += bool(frame.get("faces"))

    def to_dict(self) -> dict[str, int]:
        """Named as in the session summary (PROTOCOL.md)."""
        return {"analysed_frames": self.frames, "frames_with_faces": self.with_faces, "skipped_frames": self.skipped}

    def add_line(self, line: bytes) -> None:
        self.frames += 1
        self.skipped += _SKIPPED in line or _PROVISIONAL in line
        self.with_faces += _WITH_FACE in line


def frame_result(
    index: int, pts_ms: float, faces: list[dict[str, Any]] | None, provisional: bool = False
) -> dict[str, Any]:
    """One frame's result as stored and sent: its faces, or ``skipped`` (no time for it live);
    ``provisional``: faces found while the frame's sweep was put off (replaced after stop)."""
    if faces is None:
        return {"index": index, "pts_ms": round(pts_ms, 3), "skipped": True}
    if provisional:
        return {"index": index, "pts_ms": round(pts_ms, 3), "faces": faces, "provisional": True}
    return {"index": index, "pts_ms": round(pts_ms, 3), "faces": faces}


def frame_lines(frames: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(frame, separators=(",", ":"), allow_nan=False) + "\n" for frame in frames)


@dataclass(frozen=True)
class EncodedFrames:
    """Consecutive frames' results already encoded as their landmarks.jsonl lines: what a batch
    worker sends back, so that the process writing the file neither unpickles nested lists
    nor encodes them again (and the worker holds bytes, not a job's worth of lists)."""

    first: int  # index of the first frame (none: count 0)
    last: int
    lines: bytes
    counts: LandmarkCounts

    @classmethod
    def encode(cls, frames: Iterable[dict[str, Any]]) -> EncodedFrames:
        """Encodes each frame as it comes (a generator is consumed frame by frame)."""
        lines: list[str] = []
        counts = LandmarkCounts()
        first = last = -1
        for frame in frames:
            if first < 0:
                first = frame["index"]
            last = frame["index"]
            counts.add((frame,))
            lines.append(json.dumps(frame, separators=(",", ":")) + "\n")
        return cls(first, last, "".join(lines).encode(), counts)


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
        self.inode = 0
        self.faces: dict[int, list[dict[str, Any]]] = {}

    def refresh(self) -> LandmarkTail:
        if not self.path.exists():
            return self
        with open(self.path, "rb") as f:
            inode = os.fstat(f.fileno()).st_ino
            if inode != self.inode:  # replaced by a fill or a reprocess: read it from the start
                self.inode, self.offset = inode, 0
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            frame = json.loads(line)
            self.faces[frame["index"]] = frame.get("faces") or []
        self.offset += end
        return self


def _lines(path: Path) -> Generator[tuple[int, bytes], None, None]:
    """(index, line) of every complete line of the file, in file order."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return  # torn by a crash mid-append
            match = _INDEX.match(line)
            yield (int(match.group(1)) if match else json.loads(line)["index"]), line


def scan(path: Path, total: int) -> tuple[list[int], LandmarkCounts]:
    """Indices in [0, total) with no stored result or a skipped or provisional one (ascending),
    and the counters of the stored results."""
    counts = LandmarkCounts()
    done = set()
    for index, line in _lines(path):
        counts.add_line(line)
        if _SKIPPED not in line and _PROVISIONAL not in line:
            done.add(index)
    return [i for i in range(total) if i not in done], counts


class LandmarkRewrite:
    """Replaces the results of some frame ranges in landmarks.jsonl, streaming.

    ``write`` takes new results in ascending index order; stored lines outside them are copied.
    Everything goes to a temporary file that replaces the real one only in ``commit`` (after
    fsync), so readers and an interrupted run see the previous file, never a mix.
    """

    def __init__(self, path: Path, on_commit: Callable[[], None] | None = None) -> None:
        self.path = path
        self.counts = LandmarkCounts()
        self.on_commit = on_commit  # the store's: the new file is to be uploaded

    def __enter__(self) -> LandmarkRewrite:
        """Opens the files here, not in ``__init__``: whatever interrupts the opening (Ctrl-C, an
        unreadable old file) leaves no temporary file behind."""
        # a unique name: the server's fill and a `camingest reprocess` may rewrite at once. The
        # name is chosen before the file exists, so a Ctrl-C at any bytecode still finds it to
        # remove (mkstemp names it only on return: an interrupt in between left it behind)
        self.tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex[:12]}.tmp")
        fd: int | None = None
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            self._out = os.fdopen(fd, "wb")
            self._old = _lines(self.path)
            self._ahead: tuple[int, bytes] | None = next(self._old, None)
        except BaseException:
            if hasattr(self, "_out"):
                self._out.close()
            elif fd is not None:
                os.close(fd)
            self.tmp.unlink(missing_ok=True)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the files; without a ``commit`` before, the stored file stays as it was."""
        self._out.close()
        self._old.close()
        self.tmp.unlink(missing_ok=True)

    def _advance(self, end: int, keep: bool) -> None:
        while self._ahead is not None and self._ahead[0] < end:
            if keep:
                self._out.write(self._ahead[1])
                self.counts.add_line(self._ahead[1])
            self._ahead = next(self._old, None)

    def write(self, frames: list[dict[str, Any]] | EncodedFrames) -> None:
        if isinstance(frames, EncodedFrames):
            if frames.counts.frames:
                self._advance(frames.first, keep=True)
                self._advance(frames.last + 1, keep=False)
                self._out.write(frames.lines)
                self.counts.frames += frames.counts.frames
                self.counts.with_faces += frames.counts.with_faces
                self.counts.skipped += frames.counts.skipped
            return
        if not frames:
            return
        self._advance(frames[0]["index"], keep=True)
        self._advance(frames[-1]["index"] + 1, keep=False)
        self._out.write(frame_lines(frames).encode())
        self.counts.add(frames)

    def commit(self) -> LandmarkCounts:
        self._advance(1 << 62, keep=True)
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        os.replace(self.tmp, self.path)
        if self.on_commit is not None:
            self.on_commit()
        return self.counts


THUMBNAIL_WITHIN = 450  # the thumbnail's frame is looked for in the first frames (~15 s): cheap to decode


def digest(path: Path) -> dict[str, Any]:
    """What the sessions page shows of a session without loading its landmarks: who appears
    (``people``: name, frames, first and last pts, most frames first; "unknown" for faces the
    gallery does not hold) and the frame for its thumbnail (``thumbnail_frame``: the largest
    face within the first ``THUMBNAIL_WITHIN`` frames, else the first face, else None)."""
    people: dict[str, dict[str, Any]] = {}
    best: tuple[int, int] | None = None  # (area, index) within THUMBNAIL_WITHIN
    first_face: int | None = None
    for index, line in _lines(path):
        if _WITH_FACE not in line:
            continue
        frame = json.loads(line)
        if first_face is None:
            first_face = index
        for face in frame["faces"]:
            _, _, w, h = face["box"]
            if index < THUMBNAIL_WITHIN and (best is None or w * h > best[0]):
                best = (w * h, index)
            if "identity" not in face:
                continue
            name = face["identity"]["name"] if face["identity"] else "unknown"
            entry = people.setdefault(name, {"name": name, "frames": 0, "first_ms": frame["pts_ms"]})
            if entry.get("last_index") != index:  # two faces of one name in a frame: one frame
                entry["frames"] += 1
            entry["last_index"] = index
            entry["last_ms"] = frame["pts_ms"]
    listed = sorted(people.values(), key=lambda p: (-p["frames"], p["name"]))
    for entry in listed:
        del entry["last_index"]
    return {"people": listed, "thumbnail_frame": best[1] if best is not None else first_face}
