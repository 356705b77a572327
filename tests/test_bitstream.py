"""Frame headers read without decoding (ingest/media/bitstream.py, through the WebM reader):
frames counted as a decoder shows them (issue #20) and frame sizes bounded before any decoder
sees them (issue #25, ``max_frame_pixels``).

The truth is FFmpeg's: ffprobe's decoded frame counts and sizes in the conformance corpus's
expected.json. The frame-size bombs are real encoders' frames (the corpus's, 160x120) whose
headers are rewritten to declare more: a VP8 keyframe, a VP9 keyframe and an inter frame that
sets its own size, an AV1 sequence header (in CodecPrivate and in-band), an H.264 sequence
parameter set (in CodecPrivate's avcC and in-band), a track header; at the start and mid-stream.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from ingest.config import Settings
from ingest.exceptions import InvalidMediaError, UnsupportedError
from ingest.media.bitstream import BitReader, VideoScanner, vp9_superframe
from ingest.media.webm import Block, WebMReader
from tests import ebml_writer as w

CORPUS = Path(__file__).resolve().parent / "fixtures" / "conformance"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())
LIMIT = Settings().max_frame_pixels  # 4096 x 2304
VIDEO_FILES = [n for n, e in EXPECTED.items() if not n.startswith("_") and n.endswith((".webm", ".mkv"))
               and (e.get("video") or {}).get("nb_read_frames") and e["valid"]]  # fmt: skip


def blocks(data: bytes, **limits: int | None) -> tuple[WebMReader, list[Block]]:
    reader = WebMReader(**limits)
    unit = reader.feed(data)
    video = reader.video_track
    assert video is not None
    return reader, [b for b in unit.blocks if b.track == video.number]


@pytest.mark.parametrize("name", VIDEO_FILES)
def test_frames_shown_are_ffprobes_decoded_frames(name):
    expected = EXPECTED[name]["video"]
    reader, video_blocks = blocks((CORPUS / name).read_bytes(), max_frame_pixels=LIMIT)
    assert sum(b.frames for b in video_blocks) == expected["nb_read_frames"]
    assert len(video_blocks) == EXPECTED[name]["blocks_per_track"]["1"]
    assert reader.video() == {"codec": expected["codec_name"], "width": expected["width"], "height": expected["height"]}
    depth = 10 if expected["pix_fmt"].endswith("10le") else 8
    assert reader.scanner is not None and reader.scanner.bit_depth == depth


def test_hidden_and_laced_frames():
    # VP9 alt-ref frames in blocks of their own show nothing: 81 blocks, 75 frames
    _, vp9 = blocks((CORPUS / "vp9_hidden_altref.webm").read_bytes())
    assert [b.frames for b in vp9].count(0) == 81 - 75 and set(b.frames for b in vp9) == {0, 1}
    # three VP8 frames laced to a block: 18 blocks, 50 frames
    _, laced = blocks((CORPUS / "writer_video_laced.mkv").read_bytes())
    assert [b.frames for b in laced] == ([3] * 8 + [1]) * 2  # a keyframe starts a lace of its own


def test_a_superframe_is_split_by_its_index():
    source = w.read_packets(CORPUS / "vp9_hidden_altref.webm")
    hidden = next(f for f in source.frames if f.data and not VideoScanner("V_VP9").frame(f.data).shown)
    shown = next(f for f in source.frames if f.pts == hidden.pts and f is not hidden)
    # a superframe as libvpx writes it: the frames, then an index of their sizes (marker byte first and last)
    marker = 0b11000000 | (1 << 3) | 1  # two sizes of two bytes
    index = bytes([marker]) + len(hidden.data).to_bytes(2, "little") + len(shown.data).to_bytes(2, "little")
    superframe = hidden.data + shown.data + index + bytes([marker])
    assert [bytes(f) for f in vp9_superframe(superframe)] == [hidden.data, shown.data]
    assert VideoScanner("V_VP9").scan([superframe], 0) == (1, False)


def test_unknown_codecs_are_named():
    with pytest.raises(UnsupportedError) as refused:
        WebMReader().feed((CORPUS / "writer_unknown_codec.mkv").read_bytes())
    assert refused.value.message == (
        "the video track's codec 'V_CAMINGEST/UNKNOWN' is not one camingest decodes; it reads VP8, VP9, AV1 and "
        "H.264 (V_VP8, V_VP9, V_AV1, V_MPEG4/ISO/AVC)"
    )
    with pytest.raises(UnsupportedError, match=r"'V_MPEGH/ISO/HEVC' \(H.265/HEVC\) is not one camingest decodes"):
        VideoScanner("V_MPEGH/ISO/HEVC")


def test_damaged_frames_are_refused_as_the_decoder_would():
    with pytest.raises(InvalidMediaError) as refused:
        WebMReader().feed((CORPUS / "writer_corrupt_vp8.webm").read_bytes())
    assert refused.value.message == "the VP8 frame at byte 4516 is damaged: its VP8 version is 7 (0-3 exist)"
    vp8 = VideoScanner("V_VP8")
    key = w.read_packets(CORPUS / "vp8_opus.webm").frames[0].data
    cases = {
        key[:3] + b"\x00\x00\x00" + key[6:]: "its keyframe start code is missing",
        key[:8]: "it is a keyframe of 8 bytes, shorter than its header",
        b"\x01\x00": "it has 2 bytes, fewer than a VP8 frame tag",
        (1 | (1 << 4) | (5000 << 5)).to_bytes(3, "little") + bytes(100): (
            "its first partition (5000 bytes) is larger than the frame (103 bytes)"
        ),
    }
    for frame, reason in cases.items():
        with pytest.raises(InvalidMediaError) as refused:
            vp8.scan([frame], 77)
        assert refused.value.message == f"the VP8 frame at byte 77 is damaged: {reason}"
    with pytest.raises(InvalidMediaError, match="the VP9 frame at byte 5 is damaged: its VP9 frame marker is wrong"):
        VideoScanner("V_VP9").scan([b"\x00" * 20], 5)


# -- frame-size bombs ------------------------------------------------------------------------------------
def bits_of(data: bytes) -> str:
    return "".join(f"{byte:08b}" for byte in data)


def bytes_of(bits: str) -> bytes:
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


def ue(value: int) -> str:
    code = f"{value + 1:b}"
    return "0" * (len(code) - 1) + code


def read_ue(bits: str, pos: int) -> tuple[int, int]:
    zeros = 0
    while bits[pos + zeros] == "0":
        zeros += 1
    end = pos + 2 * zeros + 1
    return int(bits[pos + zeros : end], 2) - 1, end


def vp8_declaring(frame: bytes, width: int, height: int) -> bytes:
    """A VP8 keyframe of a real encoder whose header declares another size."""
    return frame[:6] + width.to_bytes(2, "little") + height.to_bytes(2, "little") + frame[10:]


def vp9_key_declaring(frame: bytes, width: int, height: int) -> bytes:
    """A profile-0 VP9 keyframe whose frame_size() (bit 36: marker, profile, flags, sync code,
    color config) declares another size."""
    bits = bits_of(frame)
    assert bits[:2] == "10" and int(bits[8:32], 2) == 0x498342, "a profile 0 keyframe"
    return bytes_of(bits[:36] + f"{width - 1:016b}{height - 1:016b}" + bits[68:])


def vp9_inter_declaring(frame: bytes, width: int, height: int) -> bytes:
    """A shown VP9 inter frame (error_resilient 0) rewritten to give its own size instead of a
    reference frame's: its found_ref bits all 0, then frame_size()."""
    bits = bits_of(frame)
    assert bits[5:8] == "110", "shown inter frame, not error resilient"
    found = bits[30:33].index("1") + 1  # the reference whose size it took
    return bytes_of(bits[:30] + "000" + f"{width - 1:016b}{height - 1:016b}" + bits[30 + found :])


def av1_sequence_declaring(payload: bytes, width: int, height: int) -> bytes:
    """libaom's sequence header (no timing info, one operating point of level < 8) with
    max_frame_width/height rewritten: the field widths grow to hold them."""
    bits = bits_of(payload)
    reader = BitReader(payload, "test")
    reader.u(29)
    width_bits, height_bits = reader.u(4) + 1, reader.u(4) + 1
    assert (reader.u(width_bits) + 1, reader.u(height_bits) + 1) == (160, 120), "the fields where they should be"
    rest = bits[reader.pos :].rstrip("0")[:-1]  # without its trailing bits
    new = bits[:29] + f"{15:04b}{15:04b}" + f"{width - 1:016b}{height - 1:016b}" + rest + "1"
    return bytes_of(new)


def av1_obu(obu_type: int, payload: bytes) -> bytes:
    size, leb = len(payload), b""
    while True:
        byte = size & 0x7F
        size >>= 7
        leb += bytes([byte | (0x80 if size else 0)])
        if not size:
            return bytes([(obu_type << 3) | 2]) + leb + payload


def h264_sps_declaring(sps: bytes, width: int, height: int) -> bytes:
    """x264's sequence parameter set (High profile, no scaling matrices) with other
    pic_width_in_mbs / pic_height_in_map_units; emulation prevention bytes put back."""
    bits = bits_of(sps[1:].replace(b"\x00\x00\x03", b"\x00\x00"))
    pos = 24
    _, pos = read_ue(bits, pos)  # seq_parameter_set_id
    chroma, pos = read_ue(bits, pos)
    assert chroma == 1
    for _ in range(2):
        _, pos = read_ue(bits, pos)  # bit depths
    assert bits[pos + 1] == "0", "no scaling matrices"
    pos += 2
    _, pos = read_ue(bits, pos)  # log2_max_frame_num_minus4
    poc, pos = read_ue(bits, pos)
    if poc == 0:
        _, pos = read_ue(bits, pos)
    _, pos = read_ue(bits, pos)  # max_num_ref_frames
    pos += 1
    start = pos
    _, pos = read_ue(bits, pos)
    _, pos = read_ue(bits, pos)
    rest = bits[pos:].rstrip("0")[:-1]
    body = bytes_of(bits[:start] + ue(width // 16 - 1) + ue(height // 16 - 1) + rest + "1")
    escaped, zeros = bytearray(), 0
    for byte in body:
        if zeros >= 2 and byte <= 3:
            escaped.append(3)
            zeros = 0
        escaped.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return sps[:1] + bytes(escaped)


def avcc_with(avcc: bytes, sps: bytes) -> bytes:
    """An avcC record whose (one) SPS is ``sps``."""
    assert avcc[5] & 0x1F == 1
    old = int.from_bytes(avcc[6:8], "big")
    return avcc[:6] + len(sps).to_bytes(2, "big") + sps + avcc[8 + old :]


@functools.cache
def source(name: str) -> w.Source:
    return w.read_packets(CORPUS / name)


def stream(src: w.Source, frames: list[w.Frame], track: w.Track | None = None) -> bytes:
    return w.write([track or src.track], w.split_clusters(w.simple_blocks(frames), [10]),
                   w.Layout(doc_type="matroska"))  # fmt: skip


def refusal(data: bytes, limit: int | None = LIMIT) -> str:
    with pytest.raises(InvalidMediaError) as refused:
        WebMReader(max_frame_pixels=limit).feed(data)
    return refused.value.message


def message(what: str, byte: int | None, width: int, height: int) -> str:
    at = f" at byte {byte}" if byte is not None else ""
    return (f"the video's {what}{at} declares {width}x{height} pixels ({width * height:,}); "
            f"the limit (max_frame_pixels) is {LIMIT:,}")  # fmt: skip


def block_offsets(data: bytes) -> list[int]:
    return [b.offset for b in blocks(data)[1]]


def test_vp8_keyframes_declaring_16000x16000():
    src = source("vp8_opus.webm")
    key = src.frames[0]
    frames = [w.Frame(vp8_declaring(key.data, 16000, 16000), 40 * i, True) for i in range(3)]
    data = stream(src, frames)
    assert refusal(data) == message("VP8 keyframe", block_offsets(data)[0], 16000, 16000)
    # no limit (a stream read back from storage): the same headers count as they are
    _, counted = blocks(data, max_frame_pixels=None)
    assert [b.frames for b in counted] == [1, 1, 1]
    # mid-stream: the second keyframe (frame 25) changes the resolution
    frames = list(src.frames)
    frames[25] = w.Frame(vp8_declaring(frames[25].data, 8192, 8192), frames[25].pts, True)
    data = stream(src, frames)
    assert refusal(data) == message("VP8 keyframe", block_offsets(data)[25], 8192, 8192)
    # at the limit exactly: accepted
    frames[25] = w.Frame(vp8_declaring(src.frames[25].data, 4096, 2304), frames[25].pts, True)
    assert len(blocks(stream(src, frames), max_frame_pixels=LIMIT)[1]) == 50


def test_vp9_keyframe_and_inter_frame_declaring_more():
    src = source("vp9_hidden_altref.webm")
    frames = list(src.frames)
    frames[0] = w.Frame(vp9_key_declaring(frames[0].data, 16000, 9000), 0, True)
    data = stream(src, frames)
    assert refusal(data) == message("VP9 keyframe", block_offsets(data)[0], 16000, 9000)
    frames = list(src.frames)
    i = next(i for i, f in enumerate(frames) if i > 0 and len(f.data) > 100 and bits_of(f.data[:1])[5:8] == "110")
    frames[i] = w.Frame(vp9_inter_declaring(frames[i].data, 5000, 5000), frames[i].pts, False)
    data = stream(src, frames)
    assert refusal(data) == message("VP9 frame that sets its own size", block_offsets(data)[i], 5000, 5000)


def test_av1_sequence_headers_declaring_more():
    src = source("av1.webm")
    private = src.track.codec_private
    assert private is not None and private[4] == 0x0A  # av1C, then a sequence header OBU
    payload = private[6 : 6 + private[5]]
    big = av1_sequence_declaring(payload, 16000, 16000)
    track = w.Track(1, "V_AV1", "video", private[:4] + av1_obu(1, big), 160, 120)
    assert refusal(stream(src, list(src.frames), track)) == message("AV1 sequence header", None, 16000, 16000)
    # in-band, in front of a later temporal unit's frame: a resolution change
    frames = list(src.frames)
    k = 12
    frames[k] = w.Frame(av1_obu(1, big) + frames[k].data, frames[k].pts, frames[k].keyframe)
    data = stream(src, frames)
    assert refusal(data) == message("AV1 sequence header", block_offsets(data)[k], 16000, 16000)


def test_h264_sequence_parameter_sets_declaring_more():
    src = source("h264_bframes.mkv")
    avcc = src.track.codec_private
    assert avcc is not None
    sps = avcc[8 : 8 + int.from_bytes(avcc[6:8], "big")]
    big = h264_sps_declaring(sps, 16000, 16000)
    assert VideoScanner("V_MPEG4/ISO/AVC", avcc_with(avcc, h264_sps_declaring(sps, 160, 128))).length_size == 4
    track = w.Track(1, "V_MPEG4/ISO/AVC", "video", avcc_with(avcc, big), 160, 120)
    assert refusal(stream(src, list(src.frames), track)) == message("H.264 sequence parameter set", None, 16000, 16000)
    # in-band, in front of the first frame's NAL units (length-prefixed as the avcC says)
    frames = list(src.frames)
    frames[0] = w.Frame(len(big).to_bytes(4, "big") + big + frames[0].data, frames[0].pts, True)
    data = stream(src, frames)
    assert refusal(data) == message("H.264 sequence parameter set", block_offsets(data)[0], 16000, 16000)


def test_the_track_header_is_checked_too():
    src = source("vp8_opus.webm")
    track = w.Track(1, "V_VP8", "video", None, 20000, 20000)
    assert refusal(stream(src, list(src.frames[:5]), track)) == message("video track header", None, 20000, 20000)
