"""What the store keeps about one chunk, and the encoding of where its blocks lie.

A chunk's index row says, besides its place in the raw stream, which blocks (frames) the byte
stream completed inside it, by Cluster timecode: ``chunks/{seq}.webm`` and the live pipeline
rebuild a chunk's standalone unit from these locations without re-parsing the stream. The
encoding is written and read here only (``encode_runs`` / ``decode_runs``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Span = tuple[int, int]  # (offset in the raw stream, length)
Run = tuple[int, list[Span]]  # (cluster timecode, the spans of its blocks, in stream order)


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Adjacent spans merged: a chunk's blocks usually lie back to back."""
    merged: list[list[int]] = []
    for offset, length in spans:
        if merged and merged[-1][0] + merged[-1][1] == offset:
            merged[-1][1] += length
        else:
            merged.append([offset, length])
    return [(offset, length) for offset, length in merged]


def encode_runs(runs: Sequence[Run]) -> str:
    """``[[cluster_timecode, [[offset, length], ...]], ...]``, compact JSON."""
    return json.dumps([[timecode, [list(span) for span in spans]] for timecode, spans in runs], separators=(",", ":"))


def decode_runs(text: str) -> list[Run]:
    return [(int(timecode), [(int(o), int(n)) for o, n in spans]) for timecode, spans in json.loads(text)]


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk whose bytes are already durable in the raw stream, as its index commit records it:
    the chunk's row and the session's state after it."""

    session_id: str
    seq: int
    offset: int  # in the raw stream
    size: int
    sha256: str
    received_at: float  # unix time, server clock
    t_ms: float | None  # the client's time, if sent
    runs: list[Run]  # blocks this chunk completed
    frames_before: int  # video frames completed by earlier chunks (frames a decoder shows)
    frames: int  # video frames completed by this chunk
    keyframe: int | None  # frame index of the last keyframe completed here
    first_ts_ms: float | None  # first / last video timestamp of the session so far
    last_ts_ms: float | None
    reader_state: dict[str, Any]  # the WebM reader's state after this chunk (resume without re-reading)
    error: str | None = None  # the stream became unreadable at this chunk: the session fails
    init: bytes | None = None  # the init segment, when this chunk completed (or changed) it
    video: str | None = None  # JSON of the video track ("null": none), once the Tracks are read

    @property
    def has_blocks(self) -> bool:
        return bool(self.runs)
