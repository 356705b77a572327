"""tests/ebml_writer.py: what it writes is what FFmpeg reads, for every option.

Fed with the real packets of the conformance corpus (tests/fixtures/conformance/), each layout is
checked twice: ffprobe decodes every frame, and FFmpeg's demuxer (PyAV) gives back exactly the
packets that went in, laced ones included.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import av
import pytest

from tests import ebml_writer as w

CORPUS = Path(__file__).resolve().parent / "fixtures" / "conformance"


@pytest.fixture(scope="module")
def vp8() -> w.Source:
    return w.read_packets(CORPUS / "vp8_opus.webm", "video", 1)


@pytest.fixture(scope="module")
def opus() -> w.Source:
    return w.read_packets(CORPUS / "vp8_opus.webm", "audio", 2)


@pytest.fixture(scope="module")
def pcm() -> w.Source:
    return w.read_packets(CORPUS / "writer_lacing_fixed.mkv", "audio", 2)


def ffprobe(data: bytes, tmp_path: Path) -> dict[str, dict[str, str]]:
    """ffprobe's decoded frames and packets per stream type; fails on any error it prints."""
    path = tmp_path / "out.mkv"
    path.write_bytes(data)
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-count_packets", "-show_entries",
         "stream=codec_type,codec_name,nb_read_frames,nb_read_packets", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stderr == "", done.stderr
    return {s["codec_type"]: s for s in json.loads(done.stdout)["streams"]}


def demuxed(data: bytes) -> dict[str, list[bytes]]:
    """The packets FFmpeg's demuxer reads, per stream type, in file order."""
    out: dict[str, list[bytes]] = {}
    with av.open(io.BytesIO(data), "r") as container:
        for packet in container.demux():
            if packet.size:
                out.setdefault(packet.stream.type, []).append(bytes(packet))
    return out


def assert_reads_back(data: bytes, tmp_path: Path, *sources: w.Source) -> None:
    streams = ffprobe(data, tmp_path)
    packets = demuxed(data)
    for source in sources:
        kind = source.track.kind
        assert packets[kind] == [f.data for f in source.frames], f"{kind} packets differ"
        assert int(streams[kind]["nb_read_packets"]) == len(source.frames)
    if "video" in streams:
        assert int(streams["video"]["nb_read_frames"]) == len(sources[0].frames)


# -- primitives -------------------------------------------------------------------------------------
def test_sizes_and_signed_lace_differences() -> None:
    assert w.encode_size(0) == b"\x80"
    assert w.encode_size(126) == b"\xfe"
    assert w.encode_size(127) == b"\x40\x7f"  # 0xFF alone would mean "unknown"
    assert w.encode_size(5, 8) == b"\x01" + b"\x00" * 6 + b"\x05"
    assert w.xiph_size(600) == b"\xff\xff\x5a"
    assert w.xiph_size(255) == b"\xff\x00"
    assert w.ebml_signed(0) == b"\xbf"  # bias 63 in one byte
    assert w.ebml_signed(-63) == b"\x80"
    assert w.ebml_signed(64) == w.encode_size(64 + 8191, 2)
    assert w.sint(w.REFERENCE_BLOCK, -40) == b"\xfb\x81\xd8"


@pytest.mark.parametrize("total", [2, 3, 128, 129, 130, 1000])
def test_void_has_the_size_asked(total: int) -> None:
    assert len(w.void(total)) == total


@pytest.mark.parametrize("lacing", ["xiph", "ebml", "fixed"])
def test_lace_header(lacing: w.Lacing) -> None:
    frames = [b"a" * 300, b"b" * 300, b"c" * 300] if lacing == "fixed" else [b"a" * 300, b"b" * 20, b"c" * 7]
    laced = w.lace(frames, lacing)
    header = {
        "xiph": b"\x02" + w.xiph_size(300) + w.xiph_size(20),
        "ebml": b"\x02" + w.encode_size(300) + w.ebml_signed(20 - 300),
        "fixed": b"\x02",
    }[lacing]
    assert laced == header + b"".join(frames)


def test_crc32_is_ffmpegs() -> None:
    """FFmpeg's Matroska muxer writes CRC-32 in every level-1 element: the writer's CRC of the
    same children is byte for byte FFmpeg's element."""
    data = (CORPUS / "h264_bframes.mkv").read_bytes()
    start = data.index(w.encode_id(w.INFO))
    start = data.index(w.encode_id(w.INFO), start + 1)  # the first is the SeekHead's SeekID
    size_length = 9 - data[start + 4].bit_length()
    size = int.from_bytes(data[start + 4 : start + 4 + size_length], "big") & ((1 << (7 * size_length)) - 1)
    body = data[start + 4 + size_length : start + 4 + size_length + size]
    assert body[:2] == b"\xbf\x84"
    assert w.crc32_element(body[6:]) == body[:6]
    assert struct.unpack("<I", body[2:6])[0] == zlib.crc32(body[6:])


# -- layouts ----------------------------------------------------------------------------------------
LAYOUTS = {
    "default": w.Layout(),
    "unknown-size segment": w.Layout(segment_unknown_size=True),
    "no seekhead, no cues": w.Layout(order=("info", "tracks", "clusters"), seek_entries=()),
    "seekhead with clusters": w.Layout(seek_entries=("info", "tracks", "clusters", "cues")),
    "tracks after clusters": w.Layout(order=("seekhead", "info", "clusters", "tracks", "cues")),
    "info after clusters": w.Layout(order=("seekhead", "tracks", "clusters", "info", "cues")),
    "info after tracks": w.Layout(order=("tracks", "info", "clusters"), seek_entries=()),
    "cues before clusters": w.Layout(order=("seekhead", "info", "tracks", "cues", "clusters")),
    "crc32": w.Layout(doc_type="matroska", crc32=True),
    "void everywhere": w.Layout(
        order=("void", "seekhead", "void", "info", "void", "tracks", "void", "clusters", "cues")
    ),
    "duration, matroska": w.Layout(doc_type="matroska", duration=2000.0),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout(name: str, vp8: w.Source, tmp_path: Path) -> None:
    data = w.write([vp8.track], w.split_clusters(w.simple_blocks(vp8.frames), [7]), LAYOUTS[name])
    assert_reads_back(data, tmp_path, vp8)


@pytest.mark.parametrize("unknown", [False, True])
@pytest.mark.parametrize("void", [0, 2, 200])
def test_clusters(unknown: bool, void: int, vp8: w.Source, tmp_path: Path) -> None:
    clusters = w.split_clusters(w.simple_blocks(vp8.frames), [1, 5, 13], unknown_size=unknown, void=void)
    assert [len(c.blocks) for c in clusters] == [1, 5, 13, 13, 13, 5]
    layout = w.Layout(segment_unknown_size=unknown, crc32=not unknown)
    assert_reads_back(w.write([vp8.track], clusters, layout), tmp_path, vp8)


def test_blockgroups_with_reference_and_duration(vp8: w.Source, tmp_path: Path) -> None:
    blocks = [w.BlockSpec((f,), "group", duration=40 if i % 2 else None) for i, f in enumerate(vp8.frames)]
    data = w.write([vp8.track], w.split_clusters(blocks, [10]))
    assert_reads_back(data, tmp_path, vp8)
    with av.open(io.BytesIO(data), "r") as container:
        keys = [p.is_keyframe for p in container.demux() if p.size]
    assert keys == [f.keyframe for f in vp8.frames]  # no ReferenceBlock exactly on the keyframes


def test_h264_with_bframes_in_blockgroups(tmp_path: Path) -> None:
    h264 = w.read_packets(CORPUS / "h264_bframes.mkv")
    assert [f.pts for f in h264.frames] != sorted(f.pts for f in h264.frames), "B-frames: pts out of order"
    blocks = [w.BlockSpec((f,), "group") for f in h264.frames]
    assert_reads_back(w.write([h264.track], w.split_clusters(blocks, [25]), w.Layout("matroska")), tmp_path, h264)


@pytest.mark.parametrize("lacing", ["xiph", "ebml"])
@pytest.mark.parametrize("kind", ["simple", "group"])
def test_laced_video(lacing: w.Lacing, kind: w.BlockKind, vp8: w.Source, tmp_path: Path) -> None:
    blocks = w.laced(vp8.frames, 3, lacing, kind)
    assert len(blocks) < len(vp8.frames)
    assert not any(f.keyframe for b in blocks for f in b.frames[1:]), "a keyframe starts its lace"
    data = w.write([vp8.track], w.split_clusters(blocks, [4]), w.Layout("matroska"))
    assert_reads_back(data, tmp_path, vp8)


@pytest.mark.parametrize("lacing", ["xiph", "ebml"])
def test_laced_opus_beside_video(lacing: w.Lacing, vp8: w.Source, opus: w.Source, tmp_path: Path) -> None:
    blocks = w.interleave(w.simple_blocks(vp8.frames), w.laced(opus.frames, 8, lacing))
    data = w.write([vp8.track, opus.track], w.split_clusters(blocks, [12]))
    assert_reads_back(data, tmp_path, vp8, opus)


def test_fixed_lacing(vp8: w.Source, pcm: w.Source, tmp_path: Path) -> None:
    blocks = w.laced(pcm.frames, 4, "fixed")
    assert any(b.lacing == "fixed" for b in blocks)
    mixed = w.interleave(w.simple_blocks(vp8.frames), blocks)
    data = w.write([vp8.track, pcm.track], w.split_clusters(mixed, [9]), w.Layout("matroska"))
    assert_reads_back(data, tmp_path, vp8, pcm)


def test_block_rules() -> None:
    frame = w.Frame(b"x", 0, True)
    with pytest.raises(ValueError, match="lacing"):
        w.BlockSpec((frame, frame))
    with pytest.raises(ValueError, match="one size"):
        w.BlockSpec((frame, w.Frame(b"yy", 0, True)), lacing="fixed")
    with pytest.raises(ValueError, match="16 bits"):
        w.write(
            [w.Track(1, "V_VP8", width=1, height=1)], [w.ClusterSpec((w.BlockSpec((w.Frame(b"x", 40_000, True),)),), 0)]
        )
    with pytest.raises(ValueError, match="BlockDuration"):
        w.block_element(w.BlockSpec((frame,), "simple", duration=3), 0, None)


def test_unknown_codec_is_read_not_decoded(tmp_path: Path) -> None:
    frames = tuple(w.Frame(bytes([i]) * 100, i * 40, i == 0) for i in range(5))
    track = w.Track(1, "V_CAMINGEST/UNKNOWN", "video", None, 160, 120)
    data = w.write([track], w.split_clusters(w.simple_blocks(frames), [5]), w.Layout("matroska"))
    assert int(ffprobe(data, tmp_path)["video"]["nb_read_packets"]) == 5
    assert demuxed(data)["video"] == [f.data for f in frames]


@pytest.mark.skipif(shutil.which("mkvinfo") is None, reason="mkvtoolnix not installed")
def test_mkvinfo_reads_every_element(vp8: w.Source, opus: w.Source, tmp_path: Path) -> None:
    """A second, independent parser (libebml/libmatroska) on the odd layouts."""
    blocks = w.interleave(w.laced(vp8.frames, 2, "ebml", "group"), w.laced(opus.frames, 5, "xiph"))
    layout = w.Layout("matroska", order=("seekhead", "void", "info", "clusters", "tracks", "cues"), crc32=True)
    path = tmp_path / "odd.mkv"
    path.write_bytes(w.write([vp8.track, opus.track], w.split_clusters(blocks, [10], void=10), layout))
    done = subprocess.run(["mkvinfo", "-v", "-v", str(path)], capture_output=True, text=True)
    assert done.returncode == 0 and "Error" not in done.stdout, done.stdout[-2000:]
    assert done.stdout.count("Frame with size") == len(vp8.frames) + len(opus.frames)
