"""Incremental WebM/Matroska reader: MediaRecorder blobs in, standalone demuxable units out.

Pure bytes, no I/O. Browsers cut their WebM stream wherever the timeslice falls: mid-SimpleBlock,
even between an element's ID and its size (the Chromium recordings in tests/fixtures/ show
both). The reader is fed those blobs in seq order and

* collects the init segment (EBML header + Segment header + everything before the first Cluster),
  however many blobs it spans;
* follows the Cluster structure (unknown or known size) and keeps the current Cluster Timecode;
* returns, per blob, the SimpleBlocks/BlockGroups that the blob *completed*, holding back an
  incomplete trailing element until a later blob completes it;
* reads each video frame's header (``ingest.media.bitstream``): a block says how many frames a
  decoder will show for it (hidden VP9 alt-ref frames show none, laced blocks several), and no
  frame may declare more than ``max_frame_pixels``, checked before any decoder sees it;
* holds Clusters back (up to ``max_bytes_before_tracks``) when a stream sends them before its
  Tracks (valid Matroska: FFmpeg finds late Tracks through the SeekHead, a live reader waits).

This reader is the one rule of what camingest accepts: live chunks, imports and uploads go
through it, and stored streams are read back with it.

``build_unit(init, unit.clusters)`` then gives init + Cluster header + Timecode + those blocks: a
file PyAV/FFmpeg demux on its own. Over a whole stream every block lands in exactly one unit.

The state between blobs is small (one partial element plus a few integers) and serialisable, so a
restarted server resumes a session without re-reading its stream (``state()``/``restore()``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ingest.exceptions import InvalidMediaError, UnsupportedError
from ingest.media.bitstream import VideoScanner

# Element IDs (with their length marker, as written in the stream).
EBML_HEADER = 0x1A45DFA3
EBML_MAGIC = EBML_HEADER.to_bytes(4, "big")
DOC_TYPE = 0x4282
SEGMENT = 0x18538067
SEEK_HEAD = 0x114D9B74
INFO = 0x1549A966
TIMECODE_SCALE = 0x2AD7B1
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
TRACK_NUMBER = 0xD7
TRACK_TYPE = 0x83
CODEC_ID = 0x86
CODEC_PRIVATE = 0x63A2
VIDEO = 0xE0
PIXEL_WIDTH = 0xB0
PIXEL_HEIGHT = 0xBA
CLUSTER = 0x1F43B675
TIMECODE = 0xE7
SIMPLE_BLOCK = 0xA3
BLOCK_GROUP = 0xA0
BLOCK = 0xA1
REFERENCE_BLOCK = 0xFB
CUES = 0x1C53BB6B
TAGS = 0x1254C367
CHAPTERS = 0x1043A770
ATTACHMENTS = 0x1941A469
VOID = 0xEC
CRC32 = 0xBF
SEEK = 0x4DBB
SEEK_ID = 0x53AB

# IDs that can only live at Segment level: inside an unknown-size Cluster, meeting one ends it.
SEGMENT_LEVEL_IDS = frozenset(
    {CLUSTER, SEEK_HEAD, INFO, TRACKS, CUES, TAGS, CHAPTERS, ATTACHMENTS, EBML_HEADER, SEGMENT}
)
DOC_TYPES = frozenset({"webm", "matroska"})
TRACK_TYPE_VIDEO = 1
TRACK_TYPE_AUDIO = 2

# Unknown-size headers written into units: a Segment and a Cluster whose end is "until EOF".
UNKNOWN_SIZE_8 = b"\x01\xff\xff\xff\xff\xff\xff\xff"
SEGMENT_HEADER_UNKNOWN = SEGMENT.to_bytes(4, "big") + UNKNOWN_SIZE_8
CLUSTER_HEADER_UNKNOWN = CLUSTER.to_bytes(4, "big") + UNKNOWN_SIZE_8

DEFAULT_MAX_ELEMENT_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_INIT_BYTES = 1024 * 1024
DEFAULT_MAX_BYTES_BEFORE_TRACKS = 16 * 1024 * 1024

_START, _SEGMENT, _TOP, _CLUSTER = "start", "segment", "top", "cluster"


@dataclass(frozen=True, slots=True)
class Track:
    number: int
    type: int
    codec_id: str
    width: int | None = None
    height: int | None = None
    codec_private: bytes = b""

    @property
    def is_video(self) -> bool:
        return self.type == TRACK_TYPE_VIDEO

    def same_as(self, other: Track) -> bool:
        return (self.number, self.type, self.codec_id, self.codec_private) == (
            other.number, other.type, other.codec_id, other.codec_private
        )


@dataclass(frozen=True, slots=True)
class Block:
    """One complete SimpleBlock or BlockGroup element, as it stands in the raw stream."""

    offset: int  # absolute offset of the element's first byte in the session's raw stream
    data: bytes  # the whole element: ID, size and body
    track: int
    timecode: int  # absolute, in TimecodeScale ticks (cluster timecode + relative timecode)
    keyframe: bool  # the container's flag, and for a video block its frame header's word too
    frames: int = 0  # video frames a decoder shows for it (0 for other tracks)


@dataclass(slots=True)
class ClusterRun:
    """Consecutive blocks of one Cluster completed by one blob."""

    timecode: int
    blocks: list[Block] = field(default_factory=list)


@dataclass(slots=True)
class Unit:
    """What one blob completed: zero or more runs of blocks, grouped by Cluster."""

    clusters: list[ClusterRun] = field(default_factory=list)

    @property
    def blocks(self) -> Iterator[Block]:
        for run in self.clusters:
            yield from run.blocks

    def __len__(self) -> int:
        return sum(len(run.blocks) for run in self.clusters)


def _vint_length(first: int) -> int:
    # The count of leading zero bits + 1; 0x00 would mean more than 8 bytes, never valid here.
    return 9 - first.bit_length()


def encode_size(value: int) -> bytes:
    """EBML size VINT in the fewest bytes (all-ones patterns are reserved for "unknown")."""
    for length in range(1, 9):
        if value < (1 << (7 * length)) - 1:
            return ((1 << (7 * length)) | value).to_bytes(length, "big")
    raise ValueError(f"EBML size {value} does not fit 8 bytes")


def encode_uint_element(element_id: int, value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    id_bytes = element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")
    return id_bytes + encode_size(len(body)) + body


def build_unit(init: bytes, clusters: list[ClusterRun] | list[tuple[int, bytes]]) -> bytes:
    """A standalone WebM: ``init`` then, per cluster run, an unknown-size Cluster header, its
    Timecode and the run's block elements. Runs may be given as ``(timecode, blocks_bytes)``."""
    return init + cluster_bytes(clusters)


def cluster_bytes(clusters: list[ClusterRun] | list[tuple[int, bytes]]) -> bytes:
    """The runs as Clusters (unknown size, their Timecode, their blocks), without an init."""
    parts = []
    for run in clusters:
        if isinstance(run, ClusterRun):
            timecode, body = run.timecode, b"".join(block.data for block in run.blocks)
        else:
            timecode, body = run
        parts += [CLUSTER_HEADER_UNKNOWN, encode_uint_element(TIMECODE, timecode), body]
    return b"".join(parts)


def without_seekhead(init: bytes) -> bytes:
    """An init segment without its SeekHead: its positions are the original file's, and a
    stream rebuilt from units (or whose Tracks came late) has other ones."""
    header = _read_header(init, 0, len(init))
    if header is None or header[1] is None:
        return init
    start = header[2] + header[1]
    if init[start : start + len(SEGMENT_HEADER_UNKNOWN)] != SEGMENT_HEADER_UNKNOWN:
        return init
    pos = start + len(SEGMENT_HEADER_UNKNOWN)
    kept = [init[:pos]]
    while pos < len(init):
        child = _read_header(init, pos, len(init))
        if child is None or child[1] is None:
            return init
        end = pos + child[2] + child[1]
        if child[0] != SEEK_HEAD:
            kept.append(init[pos:end])
        pos = end
    return b"".join(kept)


def iter_elements(data: bytes | memoryview, where: str) -> Iterator[tuple[int, memoryview]]:
    """(id, body) of each child in a complete, known-size master element's body."""
    view = memoryview(data)
    pos, end = 0, len(view)
    while pos < end:
        header = _read_header(view, pos, end)
        if header is None:
            raise InvalidMediaError(f"truncated element inside {where} at byte {pos}")
        element_id, size, header_len = header
        if size is None or pos + header_len + size > end:
            raise InvalidMediaError(f"element {element_id:X} overruns {where} at byte {pos}")
        yield element_id, view[pos + header_len : pos + header_len + size]
        pos += header_len + size


def _read_header(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[int, int | None, int] | None:
    """(id, size or None for unknown, header length), or None if ``buf`` ends first."""
    if pos >= end:
        return None
    first = buf[pos]
    id_len = _vint_length(first)
    if first == 0 or id_len > 4:
        raise InvalidMediaError(f"invalid EBML element ID byte 0x{first:02X}")
    if pos + id_len >= end:
        return None
    element_id = int.from_bytes(buf[pos : pos + id_len], "big")
    first_size = buf[pos + id_len]
    if first_size == 0:
        raise InvalidMediaError(f"invalid EBML size for element {element_id:X}: first byte 0x00")
    size_len = _vint_length(first_size)
    header_len = id_len + size_len
    if pos + header_len > end:
        return None
    raw = int.from_bytes(buf[pos + id_len : pos + header_len], "big")
    value = raw & ((1 << (7 * size_len)) - 1)
    size = None if value == (1 << (7 * size_len)) - 1 else value
    return element_id, size, header_len


def _uint(body: memoryview) -> int:
    if len(body) > 8:  # a Timecode of 64 bytes of 0xFF would be a 155-digit number downstream
        raise InvalidMediaError(f"an unsigned integer element of {len(body)} bytes; EBML allows at most 8")
    return int.from_bytes(body, "big") if len(body) else 0


def _parse_tracks(body: memoryview) -> dict[int, Track]:
    tracks: dict[int, Track] = {}
    for element_id, entry in iter_elements(body, "Tracks"):
        if element_id != TRACK_ENTRY:
            continue
        number = kind = 0
        codec = ""
        private = b""
        width = height = None
        for child_id, child in iter_elements(entry, "TrackEntry"):
            if child_id == TRACK_NUMBER:
                number = _uint(child)
            elif child_id == TRACK_TYPE:
                kind = _uint(child)
            elif child_id == CODEC_ID:
                codec = bytes(child).rstrip(b"\x00").decode("ascii", "replace")
            elif child_id == CODEC_PRIVATE:
                private = bytes(child)
            elif child_id == VIDEO:
                for video_id, value in iter_elements(child, "Video"):
                    if video_id == PIXEL_WIDTH:
                        width = _uint(value)
                    elif video_id == PIXEL_HEIGHT:
                        height = _uint(value)
        if number:
            tracks[number] = Track(number, kind, codec, width, height, private)
    return tracks


def _tracks_in(init: bytes | bytearray) -> dict[int, Track] | None:
    """The Tracks of an init segment (EBML header, Segment header, level-1 elements), if any."""
    header = _read_header(init, 0, len(init))
    if header is None or header[1] is None:
        return None
    pos = header[2] + header[1] + len(SEGMENT_HEADER_UNKNOWN)
    while pos < len(init):
        child = _read_header(init, pos, len(init))
        if child is None or child[1] is None:
            return None
        if child[0] == TRACKS:
            return _parse_tracks(memoryview(init)[pos + child[2] : pos + child[2] + child[1]])
        pos += child[2] + child[1]
    return None


def _seek_targets(body: memoryview) -> set[int]:
    """The element IDs a SeekHead points at."""
    targets = set()
    for element_id, seek in iter_elements(body, "SeekHead"):
        if element_id == SEEK:
            for child_id, value in iter_elements(seek, "Seek"):
                if child_id == SEEK_ID and len(value) <= 4:
                    targets.add(int.from_bytes(value, "big"))
    return targets


def _block_header(body: memoryview) -> tuple[int, int, int]:
    """(track, signed relative timecode, flags) of a Block/SimpleBlock body."""
    if not body:
        raise InvalidMediaError("empty Block")
    track_len = _vint_length(body[0])
    if body[0] == 0 or len(body) < track_len + 3:
        raise InvalidMediaError("truncated Block header")
    track = int.from_bytes(body[:track_len], "big") & ((1 << (7 * track_len)) - 1)
    relative = int.from_bytes(body[track_len : track_len + 2], "big", signed=True)
    return track, relative, body[track_len + 2]


def block_frames(body: memoryview, where: int) -> list[memoryview]:
    """The frames of a Block/SimpleBlock body: one, or the laces of a laced block (Xiph, EBML
    or fixed-size lacing, RFC 9559 10.3)."""
    track_len = _vint_length(body[0])
    pos = track_len + 3
    lacing = (body[track_len + 2] >> 1) & 3
    if lacing == 0:
        return [body[pos:]]
    if pos >= len(body):
        raise InvalidMediaError(f"the laced block at byte {where} has no lace header")
    count = body[pos] + 1
    pos += 1
    sizes: list[int] = []
    try:
        if lacing == 1:  # Xiph: each size as bytes of 255 and a last one below it
            for _ in range(count - 1):
                size = 0
                while True:
                    byte = body[pos]
                    pos += 1
                    size += byte
                    if byte != 255:
                        break
                sizes.append(size)
        elif lacing == 3:  # EBML: the first size, then signed differences
            for i in range(count - 1):
                length = _vint_length(body[pos])
                if body[pos] == 0 or length > 8:
                    raise IndexError
                raw = int.from_bytes(body[pos : pos + length], "big") & ((1 << (7 * length)) - 1)
                pos += length
                sizes.append(raw if i == 0 else sizes[-1] + raw - ((1 << (7 * length - 1)) - 1))
        else:  # fixed: equal sizes
            if (len(body) - pos) % count:
                raise InvalidMediaError(
                    f"the block at byte {where} laces {count} frames of equal size into {len(body) - pos} bytes"
                )
            sizes = [(len(body) - pos) // count] * (count - 1)
    except IndexError:
        raise InvalidMediaError(f"the lace header of the block at byte {where} is truncated") from None
    frames = []
    for size in sizes:
        if size < 0 or pos + size > len(body):
            raise InvalidMediaError(f"the laced frames of the block at byte {where} overrun it")
        frames.append(body[pos : pos + size])
        pos += size
    frames.append(body[pos:])
    return frames


class WebMReader:
    """Feed MediaRecorder blobs in order; get back the blocks each one completed.

    ``max_element_bytes`` bounds the one element held back between blobs (and so the reader's
    memory); ``max_init_bytes`` bounds the init segment; ``max_blocks_per_feed`` (None: no
    limit, for reading stored files) the blocks one blob may complete, and so its parsing cost:
    a blob of 8 MB can hold a million 7-byte SimpleBlocks. ``max_frame_pixels`` (None: no limit)
    bounds the frame size a video frame may declare; ``max_bytes_before_tracks`` (None: no
    limit) the Clusters held back while the Tracks have not come.
    """

    def __init__(
        self,
        max_element_bytes: int = DEFAULT_MAX_ELEMENT_BYTES,
        max_init_bytes: int = DEFAULT_MAX_INIT_BYTES,
        max_blocks_per_feed: int | None = None,
        *,
        max_frame_pixels: int | None = None,
        max_bytes_before_tracks: int | None = DEFAULT_MAX_BYTES_BEFORE_TRACKS,
    ) -> None:
        self.max_element_bytes = max_element_bytes
        self.max_init_bytes = max_init_bytes
        self.max_blocks_per_feed = max_blocks_per_feed
        self.max_frame_pixels = max_frame_pixels
        self.max_bytes_before_tracks = max_bytes_before_tracks
        self._blocks_fed = 0
        self._fresh_from = 0
        self._buf = bytearray()
        self._base = 0  # absolute stream offset of self._buf[0]
        self._stage = _START
        self._segment_end: int | None = None
        self._cluster_end: int | None = None
        self._cluster_timecode: int | None = None
        self.init = bytearray()
        self.init_version = 0  # changes whenever ``init`` does
        self.init_complete = False
        self.doc_type = ""
        self.timecode_scale = 1_000_000
        self.tracks: dict[int, Track] = {}
        self.scanner: VideoScanner | None = None  # the video track's frame headers
        self._info_seen = False
        self._info_expected = False  # the SeekHead points at an Info
        # Clusters that came before the Tracks (or the Info the SeekHead announces): their blocks
        # (offset, element, track, timecode, container keyframe flag) by cluster, until they come
        self._early: list[tuple[int, list[tuple[int, bytes, int, int, bool]]]] = []
        self._early_bytes = 0
        self._late: list[bytes] = []  # Info / Tracks met after the first Cluster, for the init
        self._hold_state: dict[str, Any] | None = None  # state() as of the first held Cluster

    # -- facts about the stream --------------------------------------------------------------
    @property
    def consumed(self) -> int:
        """Bytes of the stream fully parsed; everything after is the held-back partial element."""
        return self._base

    @property
    def pending(self) -> int:
        return len(self._buf)

    @property
    def video_track(self) -> Track | None:
        return next((t for t in self.tracks.values() if t.is_video), None)

    @property
    def held_bytes(self) -> int:
        """Bytes kept until a later blob: an incomplete element, and Clusters waiting for the Tracks."""
        return len(self._buf) + self._early_bytes

    @property
    def waiting_for_tracks(self) -> bool:
        return self._hold_state is not None

    def ticks_to_ms(self, ticks: int) -> float:
        return ticks * self.timecode_scale / 1_000_000

    def video(self) -> dict[str, Any] | None:
        """What the summary says of the video (None: the stream has no video track)."""
        track = self.video_track
        if track is None or self.scanner is None:
            return None
        return {"codec": self.scanner.codec, "width": track.width, "height": track.height}

    # -- feeding ----------------------------------------------------------------------------
    def feed(self, data: bytes) -> Unit:
        """Take the next blob; return the blocks it completed. Raises ``InvalidMediaError`` (or
        ``UnsupportedError``) on bytes that are not a WebM/Matroska stream camingest reads; the
        reader is then unusable, as the stream is."""
        self._fresh_from = self._base + len(self._buf)  # bytes before it came with earlier blobs
        self._buf += data
        unit = Unit()
        self._blocks_fed = 0
        pos = self._parse(unit)
        del self._buf[:pos]
        self._base += pos
        if len(self._buf) > self.max_element_bytes + 16:
            raise InvalidMediaError(
                f"{len(self._buf)} bytes held back without completing an element "
                f"(limit max_element_bytes={self.max_element_bytes})"
            )
        return unit

    def _parse(self, unit: Unit) -> int:
        buf, end, pos = self._buf, len(self._buf), 0
        while True:
            absolute = self._base + pos
            if self._stage == _START:
                self._check_magic(buf[pos : pos + 8])
            if self._stage == _CLUSTER and self._cluster_end is not None and absolute >= self._cluster_end:
                self._stage = _TOP
            if self._stage == _TOP and self._segment_end is not None and absolute >= self._segment_end and pos < end:
                raise UnsupportedError(f"data after the end of the Segment at byte {absolute} (chained segments)")
            header = _read_header(buf, pos, end)
            if header is None:
                return pos
            element_id, size, header_len = header
            if self._stage == _START:
                if element_id != EBML_HEADER:
                    raise InvalidMediaError(
                        f"not a WebM stream: expected the EBML header (1A45DFA3) at byte {absolute}, "
                        f"found element {element_id:X}"
                    )
            elif self._stage == _SEGMENT:
                if element_id != SEGMENT:
                    raise InvalidMediaError(f"expected a Segment (18538067) at byte {absolute}, found {element_id:X}")
                self._add_init(SEGMENT_HEADER_UNKNOWN)
                self._segment_end = None if size is None else absolute + header_len + size
                self._stage = _TOP
                pos += header_len
                continue
            elif self._stage == _TOP and element_id == CLUSTER:
                if not self.init_complete and self._hold_state is None:
                    if self._ready():
                        self._complete_init()
                    else:  # Tracks (or an announced Info) still to come: hold the Clusters back
                        self._hold_state = self._state()
                        self._hold_state["consumed"] = absolute
                self._cluster_end = None if size is None else absolute + header_len + size
                self._cluster_timecode = None
                self._stage = _CLUSTER
                pos += header_len
                continue
            elif self._stage == _CLUSTER and self._cluster_end is None and element_id in SEGMENT_LEVEL_IDS:
                self._stage = _TOP  # an unknown-size Cluster ends where a Segment-level element starts
                continue

            if size is None:
                raise InvalidMediaError(f"element {element_id:X} at byte {absolute} has unknown size")
            if size > self.max_element_bytes:
                raise InvalidMediaError(
                    f"element {element_id:X} at byte {absolute} declares {size} bytes "
                    f"(limit max_element_bytes={self.max_element_bytes})"
                )
            element_end = pos + header_len + size
            if (
                self._stage == _CLUSTER
                and self._cluster_end is not None
                and absolute + header_len + size > self._cluster_end
            ):
                raise InvalidMediaError(f"element {element_id:X} at byte {absolute} overruns its Cluster")
            if element_end > end:
                return pos  # incomplete: hold it back until a later blob completes it
            body = memoryview(buf)[pos + header_len : element_end]
            try:
                self._element(element_id, body, absolute, buf[pos:element_end], unit)
            finally:
                body.release()
            pos = element_end

    @staticmethod
    def _check_magic(head: bytes | bytearray) -> None:
        """Refuse a non-WebM stream from its first bytes, however few have arrived."""
        if len(head) >= 8 and head[4:8] == b"ftyp":
            raise UnsupportedError("this is an MP4/QuickTime stream (ftyp); only WebM/Matroska is supported")
        if head[:4] != EBML_MAGIC[: len(head[:4])]:
            raise InvalidMediaError(
                f"not a WebM stream: expected the EBML header (1A45DFA3) at byte 0, found {bytes(head[:4]).hex().upper()}"
            )

    def _add_init(self, data: bytes | bytearray) -> None:
        self.init += data
        self.init_version += 1
        if len(self.init) > self.max_init_bytes:
            raise InvalidMediaError(
                f"init segment exceeds {self.max_init_bytes} bytes (limit max_init_bytes) without a Cluster"
            )

    def _ready(self) -> bool:
        """Whether the init segment can be completed: Tracks read, and the Info too if the
        SeekHead says one exists."""
        return bool(self.tracks) and (self._info_seen or not self._info_expected)

    def _complete_init(self) -> None:
        if self._late:  # Info/Tracks that came after Clusters: the SeekHead's positions are stale
            self.init = bytearray(without_seekhead(bytes(self.init)))
            for element in self._late:
                self._add_init(element)
            self._late = []
        self.init_complete = True

    def _set_tracks(self, body: memoryview, absolute: int) -> None:
        tracks = _parse_tracks(body)
        if self.tracks:  # a copy (mkvmerge --engage write_headers_twice): it must say the same
            if tracks.keys() != self.tracks.keys() or any(not t.same_as(self.tracks[n]) for n, t in tracks.items()):
                raise UnsupportedError(f"the Tracks element at byte {absolute} differs from the first one")
            return
        video = next((t for t in tracks.values() if t.is_video), None)
        if video is not None:  # codec and sizes checked as soon as the track is known
            self.scanner = VideoScanner(video.codec_id, video.codec_private, self.max_frame_pixels,
                                        (video.width, video.height))  # fmt: skip
        self.tracks = tracks

    def _element(self, element_id: int, body: memoryview, absolute: int, whole: bytearray, unit: Unit) -> None:
        if self._stage == _START:
            for child_id, value in iter_elements(body, "EBML header"):
                if child_id == DOC_TYPE:
                    self.doc_type = bytes(value).rstrip(b"\x00").decode("ascii", "replace")
            if self.doc_type not in DOC_TYPES:
                raise UnsupportedError(f"EBML DocType {self.doc_type!r} is not webm or matroska")
            self._add_init(whole)
            self._stage = _SEGMENT
        elif self._stage == _TOP:
            before_clusters = not self.init_complete and self._hold_state is None
            if self.init_complete:
                if element_id == TRACKS:
                    self._set_tracks(body, absolute)  # a copy of the Tracks: it must say the same
                return  # Cues, Tags etc. after the first Cluster: not needed for units
            fresh = False  # an Info or Tracks read here for the first time
            if element_id == INFO and not self._info_seen:
                for child_id, value in iter_elements(body, "Info"):
                    if child_id == TIMECODE_SCALE:
                        self.timecode_scale = _uint(value) or 1_000_000
                self._info_seen = fresh = True
            elif element_id == TRACKS:
                fresh = not self.tracks
                self._set_tracks(body, absolute)
            elif element_id == SEEK_HEAD and before_clusters:
                self._info_expected = self._info_expected or INFO in _seek_targets(body)
            if before_clusters:
                self._add_init(whole)
            elif fresh:  # while Clusters are held back
                self._late.append(bytes(whole))
                if self._ready():
                    self._release(unit)
        elif element_id == TIMECODE:
            self._cluster_timecode = _uint(body)
        elif element_id in (SIMPLE_BLOCK, BLOCK_GROUP):
            if self._cluster_timecode is None:
                raise InvalidMediaError(f"block at byte {absolute} in a Cluster without a Timecode")
            if element_id == SIMPLE_BLOCK:
                track, relative, flags = _block_header(body)
                keyframe = bool(flags & 0x80)
            else:
                track = relative = -1
                keyframe = True
                for child_id, value in iter_elements(body, "BlockGroup"):
                    if child_id == BLOCK:
                        track, relative, _ = _block_header(value)
                    elif child_id == REFERENCE_BLOCK:
                        keyframe = False
                if track < 0:
                    raise InvalidMediaError(f"BlockGroup at byte {absolute} without a Block")
            if absolute + len(whole) > self._fresh_from:  # not one read again after a restore
                self._blocks_fed += 1
            if self.max_blocks_per_feed is not None and self._blocks_fed > self.max_blocks_per_feed:
                raise InvalidMediaError(
                    f"a chunk completes more than {self.max_blocks_per_feed} blocks "
                    f"(limit max_blocks_per_chunk); MediaRecorder blobs hold a few dozen"
                )
            timecode = self._cluster_timecode + relative
            if self.init_complete:
                self._add_block(unit, self._cluster_timecode, absolute, bytes(whole), track, timecode, keyframe)
                return
            if not self._early or self._early[-1][0] != self._cluster_timecode:
                self._early.append((self._cluster_timecode, []))
            self._early[-1][1].append((absolute, bytes(whole), track, timecode, keyframe))
            self._early_bytes += len(whole)
            limit = self.max_bytes_before_tracks
            if limit is not None and self._early_bytes > limit:
                raise InvalidMediaError(
                    f"{self._early_bytes} bytes of Clusters came before the stream's Tracks "
                    f"(limit max_bytes_before_tracks={limit}); put the Tracks first"
                )
        # other Cluster children (Position, PrevSize, Void, CRC-32) carry nothing a unit needs

    def _add_block(
        self, unit: Unit, cluster: int, offset: int, data: bytes, track: int, timecode: int, keyframe: bool
    ) -> None:
        frames = 0
        video = self.video_track
        if video is not None and track == video.number and self.scanner is not None:
            view = memoryview(data)
            body = view[_vint_length(data[0]) + _vint_length(data[_vint_length(data[0])]) :]
            if data[0] == BLOCK_GROUP:
                body = next(value for child_id, value in iter_elements(body, "BlockGroup") if child_id == BLOCK)
            frames, says = self.scanner.scan(block_frames(body, offset), offset)
            keyframe = keyframe and says is not False
        block = Block(offset, data, track, timecode, keyframe, frames)
        if not unit.clusters or unit.clusters[-1].timecode != cluster:
            unit.clusters.append(ClusterRun(cluster))
        unit.clusters[-1].blocks.append(block)

    def _release(self, unit: Unit) -> None:
        """The Tracks came: complete the init segment, hand on the Clusters held back."""
        self._complete_init()
        for cluster, blocks in self._early:
            for offset, data, track, timecode, keyframe in blocks:
                self._add_block(unit, cluster, offset, data, track, timecode, keyframe)
        self._early, self._early_bytes, self._hold_state = [], 0, None

    # -- persistence ---------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "stage": self._stage,
            "consumed": self._base,
            "segment_end": self._segment_end,
            "cluster_end": self._cluster_end,
            "cluster_timecode": self._cluster_timecode,
            "init_complete": self.init_complete,
            "doc_type": self.doc_type,
            "timecode_scale": self.timecode_scale,
            "tracks": [[t.number, t.type, t.codec_id, t.width, t.height] for t in self.tracks.values()],
            "info": [self._info_seen, self._info_expected],
            "scan": self.scanner.state() if self.scanner is not None else None,
        }

    def state(self) -> dict[str, Any]:
        """Everything but the init bytes and the pending bytes, JSON-ready. While Clusters are
        held back for the Tracks, the state from before the first of them: a restored reader
        reads them again (they are stored; ``consumed`` says from where)."""
        return dict(self._hold_state) if self._hold_state is not None else self._state()

    @classmethod
    def restore(
        cls,
        state: dict[str, Any],
        init: bytes,
        pending: bytes,
        max_element_bytes: int = DEFAULT_MAX_ELEMENT_BYTES,
        max_init_bytes: int = DEFAULT_MAX_INIT_BYTES,
        max_blocks_per_feed: int | None = None,
        *,
        max_frame_pixels: int | None = None,
        max_bytes_before_tracks: int | None = DEFAULT_MAX_BYTES_BEFORE_TRACKS,
    ) -> WebMReader:
        """A reader that continues where ``state()`` was taken; ``pending`` = the stream's bytes
        from ``state["consumed"]`` on (the held-back partial element)."""
        reader = cls(max_element_bytes, max_init_bytes, max_blocks_per_feed, max_frame_pixels=max_frame_pixels,
                     max_bytes_before_tracks=max_bytes_before_tracks)  # fmt: skip
        reader._stage = state["stage"]
        reader._base = state["consumed"]
        reader._segment_end = state["segment_end"]
        reader._cluster_end = state["cluster_end"]
        reader._cluster_timecode = state["cluster_timecode"]
        reader.init_complete = state["init_complete"]
        reader.doc_type = state["doc_type"]
        reader.timecode_scale = state["timecode_scale"]
        reader._info_seen, reader._info_expected = state.get("info", [True, False])
        reader.init = bytearray(init)
        # the init segment holds the Tracks whole (CodecPrivate included); the state only a summary
        tracks = _tracks_in(init) or {t[0]: Track(*t) for t in state["tracks"]}
        if tracks:
            reader._set_tracks_restored(tracks, state.get("scan"))
        reader._buf = bytearray(pending)
        return reader

    def _set_tracks_restored(self, tracks: dict[int, Track], scan: dict[str, Any] | None) -> None:
        video = next((t for t in tracks.values() if t.is_video), None)
        if video is not None:
            self.scanner = VideoScanner(video.codec_id, video.codec_private, self.max_frame_pixels)
            if scan:
                self.scanner.restore(scan)
        self.tracks = tracks


def normalized(pieces: Iterable[bytes], reader: WebMReader | None = None) -> Iterator[bytes]:
    """A stream rebuilt from its units: the init segment (Tracks first, no SeekHead) once, then
    every block completed, in Clusters of their own. FFmpeg reads it whatever the original
    layout was (Tracks after the Clusters without a SeekHead pointing at them included); it is
    what a session's recording is remuxed from."""
    reader = reader or WebMReader(max_bytes_before_tracks=None)
    started = False
    for piece in pieces:
        unit = reader.feed(piece)
        if len(unit):
            if not started:
                yield without_seekhead(bytes(reader.init))
                started = True
            yield cluster_bytes(unit.clusters)
    if not started and reader.init_complete:
        yield without_seekhead(bytes(reader.init))
