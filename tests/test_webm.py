"""The incremental WebM reader on real MediaRecorder output (tests/fixtures/recordings)."""

from __future__ import annotations

import io
import itertools
import random

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.exceptions import InvalidMediaError, UnsupportedError
from ingest.media.decode import UnitDecoder
from ingest.media.webm import SEGMENT_HEADER_UNKNOWN, WebMReader, build_unit
from tests.conftest import RECORDING_NAMES, load_recording


def feed_all(pieces: list[bytes]) -> tuple[WebMReader, list]:
    reader = WebMReader()
    units = [reader.feed(piece) for piece in pieces]
    return reader, units


def block_list(units: list) -> list[tuple[int, bytes]]:
    return [(block.offset, block.data) for unit in units for block in unit.blocks]


def test_units_decode_to_ffprobe_frame_count(recording):
    reader, units = feed_all(recording.chunks)
    decoder = UnitDecoder()
    frames = 0
    for unit in units:
        if len(unit):
            frames += sum(1 for _ in decoder.decode(build_unit(bytes(reader.init), unit.clusters)))
    frames += sum(1 for _ in decoder.flush())
    assert frames == recording.expected["video_frames"]
    assert reader.pending == 0, "a complete recording leaves no partial element behind"
    video = reader.video_track
    assert video is not None and (video.width, video.height) == (
        recording.expected["width"],
        recording.expected["height"],
    )


def test_every_unit_demuxes_on_its_own(recording):
    reader, units = feed_all(recording.chunks)
    video_track = reader.video_track.number
    for seq, unit in enumerate(units):
        if not len(unit):
            continue
        with av.open(io.BytesIO(build_unit(bytes(reader.init), unit.clusters)), format="webm") as container:
            packets = [(p.stream.type, p.pts) for p in container.demux() if p.size]
        wanted = list(unit.blocks)
        assert len(packets) == len(wanted), f"seq {seq}"
        # packet timestamps are the blocks' absolute timecodes: the cluster header is right
        video_ts = [b.timecode for b in wanted if b.track == video_track]
        assert [pts for kind, pts in packets if kind == "video"] == video_ts


def test_blocks_cover_the_stream_exactly_once(recording):
    reader, units = feed_all(recording.chunks)
    blocks = block_list(units)
    offsets = [offset for offset, _ in blocks]
    assert offsets == sorted(set(offsets))
    stream = recording.stream
    for offset, data in blocks:
        assert stream[offset : offset + len(data)] == data
    assert (
        sum(1 for u in units for b in u.blocks if b.track == reader.video_track.number)
        == recording.expected["video_packets"]
    )


def test_init_segment_is_the_bytes_before_the_first_cluster(recording):
    reader, _ = feed_all(recording.chunks)
    stream = recording.stream
    first_cluster = stream.index(b"\x1f\x43\xb6\x75")
    segment = stream.index(b"\x18\x53\x80\x67")
    # the Segment header is normalised to unknown size; everything else is as sent
    assert bytes(reader.init) == stream[:segment] + SEGMENT_HEADER_UNKNOWN + stream[segment + 12 : first_cluster]
    assert 100 < len(reader.init) < 400


@pytest.mark.parametrize("name", RECORDING_NAMES)
def test_one_byte_pieces_give_the_same_blocks(name):
    recording = load_recording(name)
    stream = recording.stream[:300_000]
    _, whole = feed_all([stream])
    _, bytewise = feed_all([stream[i : i + 1] for i in range(len(stream))])
    assert block_list(bytewise) == block_list(whole)
    assert block_list(whole), "the prefix holds blocks"


RESPLIT_STREAMS = {name: load_recording(name).stream for name in RECORDING_NAMES}
REFERENCE_BLOCKS = {name: block_list(feed_all([s])[1]) for name, s in RESPLIT_STREAMS.items()}


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(RECORDING_NAMES), seed=st.integers(0, 2**32 - 1), pieces=st.integers(2, 400))
def test_random_resplit_gives_the_same_blocks(name, seed, pieces):
    stream = RESPLIT_STREAMS[name]
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(stream)), pieces - 1))
    bounds = [0, *cuts, len(stream)]
    _, units = feed_all([stream[a:b] for a, b in itertools.pairwise(bounds)])
    assert block_list(units) == REFERENCE_BLOCKS[name]


def test_state_restore_at_every_chunk_continues_identically(recording):
    stream = recording.stream
    _, reference = feed_all(recording.chunks)
    for cut in range(1, len(recording.chunks)):
        reader, before = feed_all(recording.chunks[:cut])
        restored = WebMReader.restore(
            reader.state(), bytes(reader.init), stream[reader.consumed : sum(map(len, recording.chunks[:cut]))]
        )
        after = [restored.feed(chunk) for chunk in recording.chunks[cut:]]
        assert block_list(before + after) == block_list(reference), f"cut at chunk {cut}"


def test_first_blob_of_one_byte_is_held_back():
    recording = load_recording("webcam_vp8_opus_250ms")
    stream = recording.stream
    reader = WebMReader()
    assert len(reader.feed(stream[:1])) == 0
    assert not reader.init_complete and reader.pending == 1
    reader.feed(stream[1:200])
    assert not reader.init_complete
    unit = reader.feed(stream[200:50_000])
    assert reader.init_complete and len(unit) > 0


def test_garbage_is_refused_with_a_clear_message():
    with pytest.raises(InvalidMediaError, match="not a WebM stream: expected the EBML header"):
        WebMReader().feed(b"GIF89a" + bytes(100))
    with pytest.raises(ValueError):  # also a ValueError, for generic callers
        WebMReader().feed(b"\x00")  # a single wrong byte is enough to know


def test_mp4_is_refused():
    ftyp = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
    with pytest.raises(UnsupportedError, match="MP4/QuickTime stream"):
        WebMReader().feed(ftyp)


def test_wrong_doctype_is_unsupported():
    header = bytes.fromhex("1A45DFA3") + bytes([0x80 | 7]) + bytes.fromhex("4282") + bytes([0x84]) + b"abcd"
    with pytest.raises(UnsupportedError, match="DocType 'abcd'"):
        WebMReader().feed(header)


def test_corrupted_cluster_fails_at_the_damage():
    recording = load_recording("webcam_vp8_opus_250ms")
    stream = bytearray(recording.stream)
    third_block = REFERENCE_BLOCKS["webcam_vp8_opus_250ms"][2][0]
    stream[third_block : third_block + 4] = bytes(4)  # zeros where an element ID must start
    reader = WebMReader()
    first = reader.feed(bytes(stream[:third_block]))
    assert len(first) == 2  # everything before the damage is delivered
    with pytest.raises(InvalidMediaError, match="invalid EBML element ID byte 0x00"):
        reader.feed(bytes(stream[third_block:]))


def test_truncated_stream_keeps_the_partial_element_pending():
    recording = load_recording("webcam_vp8_kf1s_250ms")
    stream = recording.stream
    reader, units = feed_all([stream[: len(stream) - 5000]])
    assert reader.pending > 0
    assert len(block_list(units)) < len(REFERENCE_BLOCKS["webcam_vp8_kf1s_250ms"])


def test_element_size_limit_bounds_memory():
    recording = load_recording("webcam_vp8_opus_250ms")
    reader = WebMReader(max_element_bytes=1000)
    with pytest.raises(InvalidMediaError, match="max_element_bytes=1000"):
        reader.feed(recording.stream)
