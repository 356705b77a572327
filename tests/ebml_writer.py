"""A small Matroska/WebM writer for tests: real encoded packets in, bytes out.

Pure Python and readable rather than fast. It writes the layouts other people's muxers produce and
camingest must read (issue #20): known or unknown Segment and Cluster sizes, SeekHead (with or
without Cluster entries) or none, Info/Tracks/Cues in any order the format allows (Tracks after
the Clusters included), SimpleBlocks or BlockGroups (Block + ReferenceBlock + BlockDuration), the
three lacings, Void and CRC-32 elements.

It is fed real encoded packets (``read_packets`` demuxes a file with PyAV), so FFmpeg decodes what
it writes; ``tests/test_ebml_writer.py`` checks that with ffprobe for every option.

Matroska facts this relies on (RFC 9559):

* Positions in SeekHead and Cues are relative to the first byte of the Segment's data.
* A CRC-32 element must be the first child of its master element and holds the IEEE CRC-32
  (little-endian) of all the master's other children.
* A Block is: track number (EBML VINT), signed 16-bit timecode relative to the Cluster, flags
  (SimpleBlock: 0x80 keyframe, 0x08 invisible; both: lacing in bits 0x06), then the lace header
  and frames. A BlockGroup's Block is a keyframe when the group has no ReferenceBlock.
"""

from __future__ import annotations

import heapq
import itertools
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

# -- element IDs (as written, length marker included) ----------------------------------------------
EBML = 0x1A45DFA3
EBML_VERSION = 0x4286
EBML_READ_VERSION = 0x42F7
EBML_MAX_ID_LENGTH = 0x42F2
EBML_MAX_SIZE_LENGTH = 0x42F3
DOC_TYPE = 0x4282
DOC_TYPE_VERSION = 0x4287
DOC_TYPE_READ_VERSION = 0x4285
SEGMENT = 0x18538067
SEEK_HEAD = 0x114D9B74
SEEK = 0x4DBB
SEEK_ID = 0x53AB
SEEK_POSITION = 0x53AC
INFO = 0x1549A966
TIMECODE_SCALE = 0x2AD7B1
DURATION = 0x4489
MUXING_APP = 0x4D80
WRITING_APP = 0x5741
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
TRACK_NUMBER = 0xD7
TRACK_UID = 0x73C5
TRACK_TYPE = 0x83
FLAG_LACING = 0x9C
CODEC_ID = 0x86
CODEC_PRIVATE = 0x63A2
CODEC_DELAY = 0x56AA
SEEK_PRE_ROLL = 0x56BB
DEFAULT_DURATION = 0x23E383
VIDEO = 0xE0
PIXEL_WIDTH = 0xB0
PIXEL_HEIGHT = 0xBA
AUDIO = 0xE1
SAMPLING_FREQUENCY = 0xB5
CHANNELS = 0x9F
BIT_DEPTH = 0x6264
CLUSTER = 0x1F43B675
TIMECODE = 0xE7
SIMPLE_BLOCK = 0xA3
BLOCK_GROUP = 0xA0
BLOCK = 0xA1
BLOCK_DURATION = 0x9B
REFERENCE_BLOCK = 0xFB
CUES = 0x1C53BB6B
CUE_POINT = 0xBB
CUE_TIME = 0xB3
CUE_TRACK_POSITIONS = 0xB7
CUE_TRACK = 0xF7
CUE_CLUSTER_POSITION = 0xF1
VOID = 0xEC
CRC32 = 0xBF

TRACK_TYPES = {"video": 1, "audio": 2}
LACING_BITS = {"none": 0x00, "xiph": 0x02, "fixed": 0x04, "ebml": 0x06}
UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"

Lacing = Literal["none", "xiph", "ebml", "fixed"]
BlockKind = Literal["simple", "group"]
TopLevel = Literal["seekhead", "info", "tracks", "clusters", "cues", "void"]


# -- EBML primitives --------------------------------------------------------------------------------
def encode_id(element_id: int) -> bytes:
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")


def encode_size(value: int, length: int | None = None) -> bytes:
    """An EBML size VINT, in ``length`` bytes or the fewest (all-ones means "unknown": avoided)."""
    lengths = [length] if length else range(1, 9)
    for n in lengths:
        if value < (1 << (7 * n)) - 1:
            return ((1 << (7 * n)) | value).to_bytes(n, "big")
    raise ValueError(f"EBML size {value} does not fit {length or 8} bytes")


def element(element_id: int, body: bytes, size_length: int | None = None) -> bytes:
    return encode_id(element_id) + encode_size(len(body), size_length) + body


def unknown_size_header(element_id: int) -> bytes:
    return encode_id(element_id) + UNKNOWN_SIZE


def uint(element_id: int, value: int, width: int | None = None) -> bytes:
    """An unsigned integer element; ``width`` fixes its length (positions written before they are known)."""
    n = width or max(1, (value.bit_length() + 7) // 8)
    return element(element_id, value.to_bytes(n, "big"))


def sint(element_id: int, value: int) -> bytes:
    n = 1
    while not -(1 << (8 * n - 1)) <= value < (1 << (8 * n - 1)):
        n += 1
    return element(element_id, value.to_bytes(n, "big", signed=True))


def double(element_id: int, value: float) -> bytes:
    return element(element_id, struct.pack(">d", value))


def string(element_id: int, value: str) -> bytes:
    return element(element_id, value.encode("ascii"))


def void(total: int) -> bytes:
    """A Void element of exactly ``total`` bytes (at least 2: ID + a one-byte size)."""
    if total < 2:
        raise ValueError("a Void element takes at least 2 bytes")
    body = total - 2 if total - 2 < 127 else total - 9  # 1-byte size up to 126, else an 8-byte size
    return element(VOID, b"\x00" * body, None if total - 2 < 127 else 8)


def crc32_element(children: bytes) -> bytes:
    return element(CRC32, struct.pack("<I", zlib.crc32(children)))


def master(element_id: int, children: bytes, crc: bool = False) -> bytes:
    return element(element_id, (crc32_element(children) if crc else b"") + children)


# -- what goes in -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """One encoded packet of one track. ``pts`` is in TimecodeScale ticks (ms by default)."""

    data: bytes
    pts: int
    keyframe: bool
    track: int = 1
    invisible: bool = False


@dataclass(frozen=True)
class Track:
    number: int
    codec_id: str
    kind: Literal["video", "audio"] = "video"
    codec_private: bytes | None = None
    width: int | None = None
    height: int | None = None
    sampling_frequency: float | None = None
    channels: int | None = None
    bit_depth: int | None = None
    default_duration_ns: int | None = None
    codec_delay_ns: int | None = None
    seek_preroll_ns: int | None = None

    def entry(self) -> bytes:
        parts = [
            uint(TRACK_NUMBER, self.number),
            uint(TRACK_UID, self.number),
            uint(TRACK_TYPE, TRACK_TYPES[self.kind]),
            string(CODEC_ID, self.codec_id),
        ]
        if self.codec_private:
            parts.append(element(CODEC_PRIVATE, self.codec_private))
        if self.default_duration_ns:
            parts.append(uint(DEFAULT_DURATION, self.default_duration_ns))
        if self.codec_delay_ns is not None:
            parts.append(uint(CODEC_DELAY, self.codec_delay_ns))
        if self.seek_preroll_ns is not None:
            parts.append(uint(SEEK_PRE_ROLL, self.seek_preroll_ns))
        if self.kind == "video":
            parts.append(master(VIDEO, uint(PIXEL_WIDTH, self.width or 0) + uint(PIXEL_HEIGHT, self.height or 0)))
        else:
            audio = double(SAMPLING_FREQUENCY, self.sampling_frequency or 48000.0) + uint(CHANNELS, self.channels or 1)
            if self.bit_depth:
                audio += uint(BIT_DEPTH, self.bit_depth)
            parts.append(master(AUDIO, audio))
        return master(TRACK_ENTRY, b"".join(parts))


@dataclass(frozen=True)
class BlockSpec:
    """One SimpleBlock or BlockGroup holding one frame, or several laced frames of one track.

    A BlockGroup gets a ReferenceBlock (pointing at the previous block of its track) unless its
    first frame is a keyframe; ``duration`` writes a BlockDuration (BlockGroup only)."""

    frames: tuple[Frame, ...]
    kind: BlockKind = "simple"
    lacing: Lacing = "none"
    duration: int | None = None

    def __post_init__(self) -> None:
        if not self.frames:
            raise ValueError("a block holds at least one frame")
        if len({f.track for f in self.frames}) != 1:
            raise ValueError("laced frames belong to one track")
        if self.lacing == "none" and len(self.frames) != 1:
            raise ValueError("several frames need lacing")
        if self.lacing == "fixed" and len({len(f.data) for f in self.frames}) != 1:
            raise ValueError("fixed-size lacing needs frames of one size")
        if len(self.frames) > 256:
            raise ValueError("a lace holds at most 256 frames")

    @property
    def track(self) -> int:
        return self.frames[0].track

    @property
    def pts(self) -> int:
        return self.frames[0].pts

    @property
    def keyframe(self) -> bool:
        return self.frames[0].keyframe


@dataclass(frozen=True)
class ClusterSpec:
    blocks: tuple[BlockSpec, ...]
    timecode: int | None = None  # None: the first block's pts
    unknown_size: bool = False
    void: int = 0  # bytes of Void written after the Timecode (0: none)

    @property
    def start(self) -> int:
        # a Cluster's Timecode is unsigned; a block before it (negative pts: an encoder's
        # pre-skip) gets a negative relative timecode
        return self.timecode if self.timecode is not None else max(0, min(b.pts for b in self.blocks))


@dataclass(frozen=True)
class Layout:
    """How the file is laid out; the defaults are an ordinary seekable WebM."""

    doc_type: str = "webm"
    order: tuple[TopLevel, ...] = ("seekhead", "info", "tracks", "clusters", "cues")
    segment_unknown_size: bool = False
    # what the SeekHead points at ("clusters": every Cluster, as mkvmerge --clusters-in-meta-seek)
    seek_entries: tuple[str, ...] = ("info", "tracks", "cues")
    crc32: bool = False  # CRC-32 in every known-size level-1 element (as mkvmerge writes)
    void: int = 64  # size of each "void" entry of ``order``
    timecode_scale: int = 1_000_000
    duration: float | None = None  # in ticks; None: no Duration element
    muxing_app: str = "camingest tests/ebml_writer.py"


# -- blocks -----------------------------------------------------------------------------------------
def xiph_size(value: int) -> bytes:
    return b"\xff" * (value // 255) + bytes([value % 255])


def ebml_signed(value: int) -> bytes:
    """A signed EBML lace-size difference: the VINT of ``value + bias`` for the shortest length."""
    for n in range(1, 9):
        bias = (1 << (7 * n - 1)) - 1
        if -bias <= value <= bias:
            return encode_size(value + bias, n)
    raise ValueError(f"lace size difference {value} too large")


def lace(frames: Sequence[bytes], lacing: Lacing) -> bytes:
    """Lace header + frames (nothing but the frame for ``none``)."""
    if lacing == "none":
        return frames[0]
    header = bytes([len(frames) - 1])
    sizes = [len(f) for f in frames]
    if lacing == "xiph":
        header += b"".join(xiph_size(s) for s in sizes[:-1])
    elif lacing == "ebml":
        header += encode_size(sizes[0])
        # then each later size but the last as the difference to the one before it
        header += b"".join(ebml_signed(b - a) for a, b in itertools.pairwise(sizes[:-1]))
    return header + b"".join(frames)


def block_body(spec: BlockSpec, cluster_timecode: int, simple: bool) -> bytes:
    relative = spec.pts - cluster_timecode
    if not -32768 <= relative <= 32767:
        raise ValueError(f"block at {spec.pts} is {relative} ticks from its Cluster: a Cluster spans 16 bits")
    flags = LACING_BITS[spec.lacing]
    if simple and spec.keyframe:
        flags |= 0x80
    if spec.frames[0].invisible:
        flags |= 0x08
    payload = lace([f.data for f in spec.frames], spec.lacing)
    return encode_size(spec.track) + relative.to_bytes(2, "big", signed=True) + bytes([flags]) + payload


def block_element(spec: BlockSpec, cluster_timecode: int, previous_pts: int | None) -> bytes:
    if spec.kind == "simple":
        if spec.duration is not None:
            raise ValueError("a SimpleBlock has no BlockDuration: use a BlockGroup")
        return element(SIMPLE_BLOCK, block_body(spec, cluster_timecode, simple=True))
    children = element(BLOCK, block_body(spec, cluster_timecode, simple=False))
    if spec.duration is not None:
        children += uint(BLOCK_DURATION, spec.duration)
    if not spec.keyframe:
        reference = (previous_pts if previous_pts is not None else spec.pts) - spec.pts
        children += sint(REFERENCE_BLOCK, reference)
    return element(BLOCK_GROUP, children)


# -- the file ---------------------------------------------------------------------------------------
POSITION_WIDTH = 8  # SeekPosition / CueClusterPosition written in 8 bytes: sizes do not depend on values


@dataclass
class _Rendered:
    name: str
    data: bytes
    cluster_offsets: list[int] = field(default_factory=list)  # inside data, for "clusters"


def _clusters(clusters: Sequence[ClusterSpec], layout: Layout) -> _Rendered:
    out = bytearray()
    offsets: list[int] = []
    previous: dict[int, int] = {}
    for cluster in clusters:
        body = uint(TIMECODE, cluster.start)
        if cluster.void:
            body += void(cluster.void)
        for spec in cluster.blocks:
            body += block_element(spec, cluster.start, previous.get(spec.track))
            previous[spec.track] = spec.frames[-1].pts
        offsets.append(len(out))
        if cluster.unknown_size:
            out += unknown_size_header(CLUSTER) + body
        else:
            out += master(CLUSTER, body, crc=layout.crc32)
    return _Rendered("clusters", bytes(out), offsets)


def _cues(clusters: Sequence[ClusterSpec], positions: list[int], track: int, layout: Layout) -> bytes:
    """A CuePoint per Cluster holding a keyframe of ``track`` (the first video track)."""
    points = b""
    for cluster, position in zip(clusters, positions, strict=True):
        key = next((b for b in cluster.blocks if b.track == track and b.keyframe), None)
        if key is None:
            continue
        track_positions = uint(CUE_TRACK, track) + uint(CUE_CLUSTER_POSITION, position, POSITION_WIDTH)
        points += master(CUE_POINT, uint(CUE_TIME, max(0, key.pts)) + master(CUE_TRACK_POSITIONS, track_positions))
    return master(CUES, points, crc=layout.crc32)


def _seekhead(targets: list[tuple[int, int]], layout: Layout) -> bytes:
    seeks = b"".join(
        master(SEEK, element(SEEK_ID, encode_id(element_id)) + uint(SEEK_POSITION, position, POSITION_WIDTH))
        for element_id, position in targets
    )
    return master(SEEK_HEAD, seeks, crc=layout.crc32)


def ebml_header(doc_type: str) -> bytes:
    version = 4 if doc_type == "matroska" else 2
    return master(
        EBML,
        uint(EBML_VERSION, 1)
        + uint(EBML_READ_VERSION, 1)
        + uint(EBML_MAX_ID_LENGTH, 4)
        + uint(EBML_MAX_SIZE_LENGTH, 8)
        + string(DOC_TYPE, doc_type)
        + uint(DOC_TYPE_VERSION, version)
        + uint(DOC_TYPE_READ_VERSION, 2),
    )


def write(tracks: Sequence[Track], clusters: Sequence[ClusterSpec], layout: Layout = Layout()) -> bytes:
    """The whole file. Two passes: the first places every level-1 element (positions are written
    in fixed width, so their values do not change any size), the second writes the positions."""
    if not clusters:
        raise ValueError("at least one Cluster")
    if any(c.unknown_size for c in clusters) and not layout.segment_unknown_size:
        # RFC 8794 (6.2): an unknown-size element's parent has an unknown size too; FFmpeg says
        # "Unknown-sized element ... inside parent with finite size" and loses the Cluster
        raise ValueError("an unknown-size Cluster needs an unknown-size Segment")
    for name in ("info", "tracks", "clusters"):
        if name not in layout.order:
            raise ValueError(f"layout.order lacks {name!r}")
    seek_ids = {"info": INFO, "tracks": TRACKS, "cues": CUES}
    info = uint(TIMECODE_SCALE, layout.timecode_scale) + string(MUXING_APP, layout.muxing_app)
    info += string(WRITING_APP, layout.muxing_app)
    if layout.duration is not None:
        info += double(DURATION, float(layout.duration))
    rendered_clusters = _clusters(clusters, layout)
    cue_track = next((t.number for t in tracks if t.kind == "video"), tracks[0].number)

    def render(offsets: dict[str, int], cluster_base: int) -> list[_Rendered]:
        cluster_positions = [cluster_base + o for o in rendered_clusters.cluster_offsets]
        targets = [(seek_ids[n], offsets.get(n, 0)) for n in layout.seek_entries if n in seek_ids]
        if "clusters" in layout.seek_entries:
            targets += [(CLUSTER, p) for p in cluster_positions]
        parts = []
        for name in layout.order:
            if name == "seekhead":
                parts.append(_Rendered(name, _seekhead(targets, layout)))
            elif name == "info":
                parts.append(_Rendered(name, master(INFO, info, crc=layout.crc32)))
            elif name == "tracks":
                entries = b"".join(t.entry() for t in tracks)
                parts.append(_Rendered(name, master(TRACKS, entries, crc=layout.crc32)))
            elif name == "clusters":
                parts.append(rendered_clusters)
            elif name == "cues":
                parts.append(_Rendered(name, _cues(clusters, cluster_positions, cue_track, layout)))
            elif name == "void":
                parts.append(_Rendered(name, void(layout.void)))
        return parts

    def place(parts: list[_Rendered]) -> tuple[dict[str, int], int]:
        offsets: dict[str, int] = {}
        position = 0
        for part in parts:
            offsets.setdefault(part.name, position)
            position += len(part.data)
        return offsets, offsets["clusters"]

    offsets, cluster_base = place(render({}, 0))
    parts = render(offsets, cluster_base)
    assert place(parts) == (offsets, cluster_base), "a position changed a size"
    body = b"".join(p.data for p in parts)
    segment = unknown_size_header(SEGMENT) + body if layout.segment_unknown_size else element(SEGMENT, body)
    return ebml_header(layout.doc_type) + segment


# -- planning helpers -------------------------------------------------------------------------------
def split_clusters(
    blocks: Sequence[BlockSpec], sizes: Iterable[int], unknown_size: bool = False, void: int = 0
) -> list[ClusterSpec]:
    """Blocks into Clusters of the given block counts (the last size repeats); a Cluster never
    spans more than 32 s of 1 ms ticks."""
    sizes = list(sizes) or [len(blocks)]
    clusters, i, n = [], 0, 0
    while i < len(blocks):
        size = max(1, sizes[min(n, len(sizes) - 1)])
        chunk = list(blocks[i : i + size])
        clusters.append(ClusterSpec(tuple(chunk), unknown_size=unknown_size, void=void))
        i += size
        n += 1
    return clusters


def simple_blocks(frames: Iterable[Frame], kind: BlockKind = "simple") -> list[BlockSpec]:
    return [BlockSpec((f,), kind) for f in frames]


def interleave(*streams: Sequence[BlockSpec]) -> list[BlockSpec]:
    """Blocks of several tracks in timestamp order, each track's own order kept (a track with
    B-frames is in decode order, its timestamps are not sorted: it is merged by the largest
    timestamp so far)."""

    def keyed(n: int, blocks: Sequence[BlockSpec]) -> list[tuple[int, int, int, BlockSpec]]:
        latest = list(itertools.accumulate((b.pts for b in blocks), max))
        return [(key, n, i, b) for i, (key, b) in enumerate(zip(latest, blocks, strict=True))]

    return [b for *_, b in heapq.merge(*(keyed(n, s) for n, s in enumerate(streams)), key=lambda m: m[:3])]


def laced(frames: Sequence[Frame], per_block: int, lacing: Lacing, kind: BlockKind = "simple") -> list[BlockSpec]:
    """Consecutive frames laced ``per_block`` at a time (a keyframe always starts a new lace, so
    the block's keyframe flag stays true for all its frames)."""
    if lacing == "none":
        per_block = 1
    blocks: list[BlockSpec] = []
    group: list[Frame] = []

    def close() -> None:
        if group:
            mode: Lacing = lacing if len(group) > 1 else "none"
            blocks.append(BlockSpec(tuple(group), kind, mode))
            group.clear()

    for frame in frames:
        if frame.keyframe and any(not f.keyframe for f in group):
            close()
        if lacing == "fixed" and group and len(frame.data) != len(group[0].data):
            close()  # fixed-size lacing: a frame of another size starts a new block
        group.append(frame)
        if len(group) == per_block:
            close()
    close()
    return blocks


# -- real packets in --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """A track's parameters and packets, demuxed from a real file."""

    track: Track
    frames: tuple[Frame, ...]

    def renumbered(self, number: int) -> Source:
        return Source(replace(self.track, number=number), tuple(replace(f, track=number) for f in self.frames))


MATROSKA_CODEC_IDS = {
    "vp8": "V_VP8",
    "vp9": "V_VP9",
    "av1": "V_AV1",
    "libdav1d": "V_AV1",  # PyAV names the stream after its decoder
    "h264": "V_MPEG4/ISO/AVC",
    "opus": "A_OPUS",
    "vorbis": "A_VORBIS",
    "pcm_s16le": "A_PCM/INT/LIT",
}


def read_packets(path: Path | str, kind: Literal["video", "audio"] = "video", number: int = 1) -> Source:
    """The first ``kind`` stream of a file: its packets (bytes, pts in ms, keyframe flag) and what
    a TrackEntry needs (codec, CodecPrivate from the extradata, size or sampling)."""
    import av  # only the helpers that read real files need PyAV

    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.type == kind)
        ctx: Any = stream.codec_context  # a video or an audio context
        codec_id = MATROSKA_CODEC_IDS[ctx.name]
        frames = []
        time_base = stream.time_base
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            assert packet.pts is not None and time_base is not None, "every packet needs a pts"
            pts_ms = round(packet.pts * time_base * 1000)
            frames.append(Frame(bytes(packet), pts_ms, packet.is_keyframe, number))
        extradata = bytes(ctx.extradata) if ctx.extradata else None
        if kind == "video":
            track = Track(number, codec_id, "video", extradata, ctx.width, ctx.height)
        else:
            bits = 16 if ctx.name == "pcm_s16le" else None
            track = Track(
                number,
                codec_id,
                "audio",
                extradata,
                sampling_frequency=float(ctx.sample_rate),
                channels=ctx.channels if hasattr(ctx, "channels") else ctx.layout.nb_channels,
                bit_depth=bits,
                codec_delay_ns=6_500_000 if ctx.name == "opus" else None,
                seek_preroll_ns=80_000_000 if ctx.name == "opus" else None,
            )
    return Source(track, tuple(frames))
