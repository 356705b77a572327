"""Video frame headers read without decoding: how many frames a block shows, and how large the
frames it declares are.

Pure bytes, a few dozen header bits per frame. Two facts come out of them:

* **Frames a decoder outputs** (issue #20: a frame count is decoded frames, not blocks): VP8's
  ``show_frame``; every frame of a VP9 superframe with ``show_frame`` or ``show_existing_frame``
  (alt-ref frames are hidden); AV1's shown frame headers in a temporal unit; one H.264 frame per
  access unit holding a coded slice. A laced Block holds several frames, each counted.
* **The size a decoder will allocate** (issue #25: a frame-size bomb is refused before any
  decoder sees it): VP8 keyframes; VP9 keyframes, intra-only frames and inter frames that state
  their own size (resolution changes); every H.264 sequence parameter set (CodecPrivate's avcC
  and in-band); every AV1 sequence header, whose maximum frame size bounds all its frames.
  Beyond ``max_pixels``: ``InvalidMediaError`` naming the size and the limit.

Only what FFmpeg's own decoders refuse is refused here as damage (a missing keyframe start code,
a first partition larger than its frame, a NAL unit overrunning its frame...), so a stream these
parsers accept is a stream the decoder reads as they did. Codecs without a parser here are not
accepted (``UnsupportedError`` naming the CodecID): nothing could bound what they allocate.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ingest.exceptions import InvalidMediaError, UnsupportedError

# Matroska CodecID -> the codec (also FFmpeg's decoder names, for packets a decoder demuxed)
CODECS = {"V_VP8": "vp8", "V_VP9": "vp9", "V_AV1": "av1", "V_MPEG4/ISO/AVC": "h264"}
FFMPEG_NAMES = {"vp8": "vp8", "libvpx": "vp8", "vp9": "vp9", "libvpx-vp9": "vp9", "av1": "av1",
                "libdav1d": "av1", "libaom-av1": "av1", "h264": "h264"}  # fmt: skip
NAMES = {"vp8": "VP8", "vp9": "VP9", "av1": "AV1", "h264": "H.264"}
ACCEPTED = "VP8, VP9, AV1 and H.264 (V_VP8, V_VP9, V_AV1, V_MPEG4/ISO/AVC)"
# what other people's CodecIDs are, to say it in the refusal
KNOWN_OTHERS = {
    "V_MPEGH/ISO/HEVC": "H.265/HEVC", "V_MPEG4/ISO/ASP": "MPEG-4 Part 2", "V_MPEG4/ISO/SP": "MPEG-4 Part 2",
    "V_MPEG4/ISO/AP": "MPEG-4 Part 2", "V_MPEG2": "MPEG-2", "V_MPEG1": "MPEG-1", "V_MJPEG": "Motion JPEG",
    "V_THEORA": "Theora", "V_PRORES": "ProRes", "V_FFV1": "FFV1", "V_UNCOMPRESSED": "uncompressed video",
    "V_MS/VFW/FOURCC": "a Video for Windows codec", "V_REAL/RV40": "RealVideo", "V_DIRAC": "Dirac",
}  # fmt: skip
# H.264 reorders up to 16 frames (its largest decoded picture buffer): a decoder fed a stream
# up to block N has output, in display order, every frame of the blocks before N - 16
H264_MAX_REORDER = 16


class HeaderError(Exception):
    """A frame header a decoder would refuse; the scanner says where."""


@dataclass(frozen=True)
class FrameSize:
    width: int
    height: int
    what: str  # "keyframe", "sequence parameter set", ...

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class FrameFacts:
    """What one frame (a lace of a Block) says of itself."""

    shown: int  # frames a decoder outputs for it
    keyframe: bool | None  # its own word on being a keyframe (None: it does not say)
    sizes: tuple[FrameSize, ...] = ()
    bit_depth: int | None = None


def codec_of(codec_id: str) -> str:
    """The codec of a Matroska CodecID, or ``UnsupportedError`` naming it."""
    codec = CODECS.get(codec_id)
    if codec is None:
        known = KNOWN_OTHERS.get(codec_id)
        what = f"{codec_id!r} ({known})" if known else repr(codec_id)
        raise UnsupportedError(f"the video track's codec {what} is not one camingest decodes; it reads {ACCEPTED}")
    return codec


# -- bits ---------------------------------------------------------------------------------------------
class BitReader:
    """MSB-first bits of a header; running out is a ``HeaderError`` (a truncated header)."""

    def __init__(self, data: bytes | memoryview, what: str) -> None:
        self.data = data
        self.bits = len(data) * 8
        self.pos = 0
        self.what = what

    def u(self, n: int) -> int:
        if n == 0:
            return 0
        end = self.pos + n
        if end > self.bits:
            raise HeaderError(f"its {self.what} is truncated")
        first, last = self.pos >> 3, (end + 7) >> 3
        value = int.from_bytes(self.data[first:last], "big") >> (last * 8 - end)
        self.pos = end
        return value & ((1 << n) - 1)

    def ue(self) -> int:
        """Exp-Golomb (H.264 ue(v))."""
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise HeaderError(f"its {self.what} holds an Exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)

    def uvlc(self) -> int:
        """AV1 uvlc()."""
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros >= 32:
                return (1 << 32) - 1
        return self.u(zeros) + (1 << zeros) - 1


def _leb128(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        if pos >= len(data):
            raise HeaderError("an OBU size is truncated")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos
    raise HeaderError("an OBU size is longer than 8 bytes")


# -- VP8 (RFC 6386, 9.1) ------------------------------------------------------------------------------
def vp8_frame(data: bytes | memoryview) -> FrameFacts:
    if len(data) < 3:
        raise HeaderError(f"it has {len(data)} bytes, fewer than a VP8 frame tag")
    tag = int.from_bytes(data[:3], "little")
    keyframe, profile, shown, first_partition = not tag & 1, (tag >> 1) & 7, (tag >> 4) & 1, tag >> 5
    if profile > 3:
        raise HeaderError(f"its VP8 version is {profile} (0-3 exist)")
    sizes: tuple[FrameSize, ...] = ()
    if keyframe:
        if len(data) < 10:
            raise HeaderError(f"it is a keyframe of {len(data)} bytes, shorter than its header")
        if bytes(data[3:6]) != b"\x9d\x01\x2a":
            raise HeaderError("its keyframe start code is missing")
        width = int.from_bytes(data[6:8], "little") & 0x3FFF
        height = int.from_bytes(data[8:10], "little") & 0x3FFF
        sizes = (FrameSize(width, height, "VP8 keyframe"),)
    if first_partition > len(data) - (10 if keyframe else 3):
        raise HeaderError(f"its first partition ({first_partition} bytes) is larger than the frame ({len(data)} bytes)")
    return FrameFacts(shown, keyframe, sizes, 8)


# -- VP9 (VP9 bitstream specification 0.6, 6.2) -------------------------------------------------------
def vp9_superframe(data: bytes | memoryview) -> list[bytes | memoryview]:
    """The frames of a superframe (hidden alt-ref frame + shown frame), or the block itself."""
    if not data:
        return []
    marker = data[-1]
    if marker & 0xE0 == 0xC0:
        count, size_bytes = (marker & 7) + 1, ((marker >> 3) & 3) + 1
        index = 2 + size_bytes * count
        if len(data) >= index and data[len(data) - index] == marker:
            frames, pos, limit = [], 0, len(data) - index
            for i in range(count):
                at = len(data) - index + 1 + i * size_bytes
                size = int.from_bytes(data[at : at + size_bytes], "little")
                if pos + size > limit:
                    raise HeaderError("its superframe index lists more bytes than the block holds")
                frames.append(data[pos : pos + size])
                pos += size
            return frames
    return [data]


def _vp9_sync(r: BitReader) -> None:
    if r.u(24) != 0x498342:
        raise HeaderError("its VP9 sync code is missing")


def _vp9_color(r: BitReader, profile: int) -> int:
    bit_depth = (12 if r.u(1) else 10) if profile >= 2 else 8
    if r.u(3) != 7:  # color_space other than RGB
        r.u(1)  # color_range
        if profile in (1, 3):
            r.u(3)  # subsampling_x, subsampling_y, reserved_zero
    elif profile in (1, 3):
        r.u(1)
    else:
        raise HeaderError(f"it is RGB in VP9 profile {profile}, which allows only YUV")
    return bit_depth


def vp9_frame(data: bytes | memoryview) -> FrameFacts:
    """One frame of a block (after the superframe split)."""
    if not data:
        return FrameFacts(0, None)
    r = BitReader(data, "VP9 frame header")
    if r.u(2) != 2:
        raise HeaderError("its VP9 frame marker is wrong")
    profile = r.u(1)
    profile |= r.u(1) << 1
    if profile == 3:
        r.u(1)
    if r.u(1):  # show_existing_frame: a decoded frame shown again
        return FrameFacts(1, False)
    frame_type, shown, error_resilient = r.u(1), r.u(1), r.u(1)
    if frame_type == 0:  # KEY_FRAME
        _vp9_sync(r)
        depth = _vp9_color(r, profile)
        return FrameFacts(shown, True, (FrameSize(r.u(16) + 1, r.u(16) + 1, "VP9 keyframe"),), depth)
    intra_only = r.u(1) if not shown else 0
    if not error_resilient:
        r.u(2)  # reset_frame_context
    if intra_only:
        _vp9_sync(r)
        depth = _vp9_color(r, profile) if profile > 0 else 8
        r.u(8)  # refresh_frame_flags
        return FrameFacts(shown, False, (FrameSize(r.u(16) + 1, r.u(16) + 1, "VP9 intra-only frame"),), depth)
    r.u(8 + 3 * 4)  # refresh_frame_flags, ref_frame_idx[3] and their sign bias
    for _ in range(3):
        if r.u(1):  # found_ref: the size of a reference frame, checked when it came
            return FrameFacts(shown, False)
    return FrameFacts(shown, False, (FrameSize(r.u(16) + 1, r.u(16) + 1, "VP9 frame that sets its own size"),))


# -- AV1 (AV1 bitstream specification 1.0.0, 5.3 and 5.5) ----------------------------------------------
OBU_SEQUENCE_HEADER, OBU_FRAME_HEADER, OBU_FRAME = 1, 3, 6


@dataclass(frozen=True)
class Av1Sequence:
    reduced_still_picture_header: bool
    max_width: int
    max_height: int
    bit_depth: int | None


def av1_obus(data: bytes | memoryview) -> Iterator[tuple[int, int | None, bytes | memoryview]]:
    """(obu_type, spatial_id or None, payload) of each OBU of a temporal unit."""
    pos = 0
    while pos < len(data):
        header = data[pos]
        if header & 0x80:
            raise HeaderError("an OBU header's forbidden bit is set")
        obu_type, extension, has_size = (header >> 3) & 15, header & 4, header & 2
        pos += 1
        spatial = None
        if extension:
            if pos >= len(data):
                raise HeaderError("an OBU extension header is truncated")
            spatial = (data[pos] >> 3) & 3
            pos += 1
        if has_size:
            size, pos = _leb128(data, pos)
        else:
            size = len(data) - pos
        if pos + size > len(data):
            raise HeaderError("an OBU is larger than the frame holding it")
        yield obu_type, spatial, data[pos : pos + size]
        pos += size


def av1_sequence_header(payload: bytes | memoryview) -> Av1Sequence:
    r = BitReader(payload, "AV1 sequence header")
    profile = r.u(3)
    r.u(1)  # still_picture
    reduced = bool(r.u(1))
    if reduced:
        r.u(5)  # seq_level_idx[0]
    else:
        decoder_model = False
        buffer_delay_bits = 0
        if r.u(1):  # timing_info_present_flag
            r.u(32)
            r.u(32)
            if r.u(1):  # equal_picture_interval
                r.uvlc()
            if r.u(1):  # decoder_model_info_present_flag
                decoder_model = True
                buffer_delay_bits = r.u(5) + 1
                r.u(32 + 5 + 5)
        initial_display_delay = r.u(1)
        for _ in range(r.u(5) + 1):  # operating points
            r.u(12)  # operating_point_idc
            if r.u(5) > 7:  # seq_level_idx
                r.u(1)  # seq_tier
            if decoder_model and r.u(1):
                r.u(2 * buffer_delay_bits + 1)
            if initial_display_delay and r.u(1):
                r.u(4)
    width_bits, height_bits = r.u(4) + 1, r.u(4) + 1
    width, height = r.u(width_bits) + 1, r.u(height_bits) + 1
    try:  # the bit depth is only reported: a header short of it is the decoder's business
        depth: int | None = _av1_bit_depth(r, profile, reduced)
    except HeaderError:
        depth = None
    return Av1Sequence(reduced, width, height, depth)


def _av1_bit_depth(r: BitReader, profile: int, reduced: bool) -> int:
    """The rest of a sequence header up to color_config's bit depth."""
    if not reduced and r.u(1):  # frame_id_numbers_present_flag
        r.u(7)
    r.u(3)  # use_128x128_superblock, enable_filter_intra, enable_intra_edge_filter
    if not reduced:
        r.u(4)  # interintra and masked compound, warped motion, dual filter
        order_hint = r.u(1)
        if order_hint:
            r.u(2)  # jnt_comp, ref_frame_mvs
        screen = 2 if r.u(1) else r.u(1)  # seq_choose / seq_force_screen_content_tools
        if screen > 0 and not r.u(1):  # seq_choose_integer_mv
            r.u(1)
        if order_hint:
            r.u(3)
    r.u(3)  # superres, cdef, restoration
    high_bitdepth = r.u(1)
    if profile == 2 and high_bitdepth:
        return 12 if r.u(1) else 10
    return 10 if high_bitdepth else 8


def av1_temporal_unit(data: bytes | memoryview, sequence: Av1Sequence | None) -> tuple[FrameFacts, Av1Sequence | None]:
    """The frames a temporal unit shows (counted on its highest spatial layer, the one a decoder
    outputs), the sizes of its sequence headers, and the sequence header in force after it."""
    shown: dict[int, int] = {}
    sizes: list[FrameSize] = []
    keyframe = False
    for obu_type, spatial, payload in av1_obus(data):
        if obu_type == OBU_SEQUENCE_HEADER:
            sequence = av1_sequence_header(payload)
            sizes.append(FrameSize(sequence.max_width, sequence.max_height, "AV1 sequence header"))
        elif obu_type in (OBU_FRAME_HEADER, OBU_FRAME):
            if sequence is None:
                raise HeaderError("it holds an AV1 frame before any sequence header")
            layer = spatial or 0
            if sequence.reduced_still_picture_header:
                shown[layer] = shown.get(layer, 0) + 1
                keyframe = True
                continue
            r = BitReader(payload, "AV1 frame header")
            if r.u(1):  # show_existing_frame
                shown[layer] = shown.get(layer, 0) + 1
                continue
            frame_type = r.u(2)
            keyframe = keyframe or frame_type == 0
            if r.u(1):  # show_frame
                shown[layer] = shown.get(layer, 0) + 1
    count = shown[max(shown)] if shown else 0
    depth = sequence.bit_depth if sequence is not None else None
    return FrameFacts(count, keyframe, tuple(sizes), depth), sequence


# -- H.264 (ITU-T H.264, 7.3.2.1) -------------------------------------------------------------------
def h264_nal_units(data: bytes | memoryview, length_size: int) -> Iterator[bytes | memoryview]:
    """The NAL units of one frame: length-prefixed (avcC, as Matroska stores them) or, without
    an avcC, Annex B start codes."""
    if length_size:
        pos = 0
        while pos + length_size <= len(data):
            size = int.from_bytes(data[pos : pos + length_size], "big")
            pos += length_size
            if size > len(data) - pos:
                raise HeaderError(f"a NAL unit of {size} bytes overruns the frame ({len(data) - pos} left)")
            yield data[pos : pos + size]
            pos += size
        return
    raw = bytes(data)
    starts = []
    at = raw.find(b"\x00\x00\x01")
    while at >= 0:
        starts.append(at + 3)
        at = raw.find(b"\x00\x00\x01", at + 3)
    for i, start in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(raw)
        yield raw[start:end].rstrip(b"\x00")


def _unescape(nal: bytes | memoryview) -> bytes:
    return bytes(nal).replace(b"\x00\x00\x03", b"\x00\x00")


HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def h264_sps(nal: bytes | memoryview) -> tuple[FrameSize, int]:
    """The coded frame size (before cropping: what the decoder allocates) and the luma bit
    depth of a sequence parameter set NAL unit (its header byte included)."""
    r = BitReader(_unescape(nal[1:]), "H.264 sequence parameter set")
    profile = r.u(8)
    r.u(16)  # constraint flags, level_idc
    r.ue()  # seq_parameter_set_id
    depth = 8
    if profile in HIGH_PROFILES:
        chroma = r.ue()
        if chroma == 3:
            r.u(1)  # separate_colour_plane_flag
        depth = r.ue() + 8
        r.ue()  # bit_depth_chroma_minus8
        r.u(1)  # qpprime_y_zero_transform_bypass_flag
        if r.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if r.u(1):
                    last = following = 8
                    for _ in range(16 if i < 6 else 64):
                        if following:
                            following = (last + r.se() + 256) % 256
                        last = following or last
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.u(1)
        r.se()
        r.se()
        for _ in range(min(r.ue(), 255)):
            r.se()
    r.ue()  # max_num_ref_frames
    r.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs, height_units = r.ue() + 1, r.ue() + 1
    frame_mbs_only = r.u(1)
    return FrameSize(width_mbs * 16, height_units * 16 * (2 - frame_mbs_only), "H.264 sequence parameter set"), depth


def h264_frame(data: bytes | memoryview, length_size: int) -> FrameFacts:
    coded = idr = False
    sizes: list[FrameSize] = []
    depth = None
    for nal in h264_nal_units(data, length_size):
        if not nal or nal[0] & 0x80:
            continue  # FFmpeg skips a NAL unit whose forbidden bit is set
        kind = nal[0] & 0x1F
        if 1 <= kind <= 5:  # coded slices (5: of an IDR picture)
            coded = True
            idr = idr or kind == 5
        elif kind == 7:
            size, depth = h264_sps(nal)
            sizes.append(size)
    return FrameFacts(1 if coded else 0, True if idr else None, tuple(sizes), depth)


def h264_avcc(private: bytes | memoryview) -> tuple[int, list[bytes | memoryview]] | None:
    """(NAL length size, SPS NAL units) of an AVCDecoderConfigurationRecord, or None if
    ``private`` is not one (the stream is then Annex B)."""
    if len(private) < 7 or private[0] != 1:
        return None
    length_size = (private[4] & 3) + 1
    pos, found = 6, []
    for _ in range(private[5] & 0x1F):
        if pos + 2 > len(private):
            raise HeaderError("its avcC record is truncated")
        size = int.from_bytes(private[pos : pos + 2], "big")
        if pos + 2 + size > len(private):
            raise HeaderError("its avcC record is truncated")
        found.append(private[pos + 2 : pos + 2 + size])
        pos += 2 + size
    return length_size, found


# -- the scanner of one video track --------------------------------------------------------------------
class VideoScanner:
    """The frames of one video track, block by block: shown counts and declared sizes.

    Built from the track's CodecID and CodecPrivate (``UnsupportedError`` for a codec without a
    parser here; the CodecPrivate's own sizes are checked at once). ``max_pixels`` None: no
    limit (streams read back from storage were checked when they came in)."""

    def __init__(self, codec_id: str, codec_private: bytes = b"", max_pixels: int | None = None,
                 header_size: tuple[int | None, int | None] = (None, None), codec: str | None = None) -> None:  # fmt: skip
        self.codec = codec or codec_of(codec_id)
        self.max_pixels = max_pixels
        self.length_size = 0  # H.264: NAL length size (0: Annex B)
        self.sequence: Av1Sequence | None = None
        self.bit_depth: int | None = None
        width, height = header_size
        if width and height:
            self._check(FrameSize(width, height, "video track header"), None)
        try:
            if self.codec == "h264":
                avcc = h264_avcc(codec_private)
                if avcc is not None:
                    self.length_size = avcc[0]
                    for sps in avcc[1]:
                        size, self.bit_depth = h264_sps(sps)
                        self._check(size, None)
            elif self.codec == "av1" and len(codec_private) > 4:  # av1C: 4 bytes, then configOBUs
                facts, self.sequence = av1_temporal_unit(codec_private[4:], None)
                for size in facts.sizes:
                    self._check(size, None)
        except HeaderError as exc:
            raise InvalidMediaError(f"the video track's CodecPrivate is damaged: {exc}") from None

    @classmethod
    def for_decoder(cls, name: str, extradata: bytes | None) -> VideoScanner | None:
        """A scanner for packets a decoder demuxed (FFmpeg's codec name), None if unknown."""
        codec = FFMPEG_NAMES.get(name)
        return None if codec is None else cls("", extradata or b"", None, codec=codec)

    @property
    def name(self) -> str:
        return NAMES[self.codec]

    def frame(self, data: bytes | memoryview) -> FrameFacts:
        if self.codec == "vp8":
            return vp8_frame(data) if data else FrameFacts(0, None)
        if self.codec == "vp9":
            facts = [vp9_frame(f) for f in vp9_superframe(data)]
            if not facts:
                return FrameFacts(0, None)
            depth = next((f.bit_depth for f in facts if f.bit_depth), None)
            return FrameFacts(sum(f.shown for f in facts), facts[0].keyframe,
                              tuple(s for f in facts for s in f.sizes), depth)  # fmt: skip
        if self.codec == "av1":
            unit, self.sequence = av1_temporal_unit(data, self.sequence)
            return unit
        return h264_frame(data, self.length_size)

    def scan(self, frames: Sequence[bytes | memoryview], where: int) -> tuple[int, bool | None]:
        """Frames shown by one block (its laces), and whether its first frame says it is a
        keyframe. ``where``: the block's byte in the stream, for the messages."""
        shown, keyframe = 0, None
        for i, data in enumerate(frames):
            try:
                facts = self.frame(data)
            except HeaderError as exc:
                raise InvalidMediaError(f"the {self.name} frame at byte {where} is damaged: {exc}") from None
            for size in facts.sizes:
                self._check(size, where)
            if facts.bit_depth:
                self.bit_depth = facts.bit_depth
            shown += facts.shown
            if i == 0:
                keyframe = facts.keyframe
        return shown, keyframe

    def _check(self, size: FrameSize, where: int | None) -> None:
        at = f" at byte {where}" if where is not None else ""
        if size.width <= 0 or size.height <= 0:
            raise InvalidMediaError(f"the video's {size.what}{at} declares {size.width}x{size.height} pixels")
        if self.max_pixels is not None and size.pixels > self.max_pixels:
            raise InvalidMediaError(
                f"the video's {size.what}{at} declares {size.width}x{size.height} pixels ({size.pixels:,}); "
                f"the limit (max_frame_pixels) is {self.max_pixels:,}"
            )

    def state(self) -> dict[str, Any]:
        """What a scanner carries from block to block (AV1: the sequence header in force)."""
        seq = self.sequence
        return {"av1": None if seq is None else [seq.reduced_still_picture_header, seq.max_width,
                                                seq.max_height, seq.bit_depth]}  # fmt: skip

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("av1"):
            reduced, width, height, depth = state["av1"]
            self.sequence = Av1Sequence(bool(reduced), width, height, depth)
