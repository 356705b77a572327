"""Tracks (and Info) after the Clusters (issue #20, item 3): valid Matroska that FFmpeg reads
through the SeekHead. The live reader holds the Clusters back until the Tracks come, bounded by
``max_bytes_before_tracks``, and a session resumed meanwhile (after a restart) reads them again
from its stored stream."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from ingest.exceptions import InvalidMediaError, UnsupportedError
from ingest.media.webm import WebMReader, build_unit
from tests import ebml_writer as w

CORPUS = Path(__file__).resolve().parent / "fixtures" / "conformance"
LATE = (CORPUS / "writer_tracks_after_clusters.mkv").read_bytes()


def feed_all(reader: WebMReader, pieces: list[bytes]) -> list[tuple[int, int, bytes]]:
    return [(b.offset, b.frames, b.data) for piece in pieces for b in reader.feed(piece).blocks]


def test_clusters_wait_for_the_tracks_and_come_out_whole():
    reader = WebMReader()
    blocks = feed_all(reader, [LATE[i : i + 1000] for i in range(0, len(LATE), 1000)])
    assert len(blocks) == 50 and sum(f for _, f, _ in blocks) == 50
    assert [o for o, _, _ in blocks] == sorted(o for o, _, _ in blocks)
    assert reader.held_bytes == 0 and not reader.waiting_for_tracks
    assert b"\x11\x4d\x9b\x74" not in bytes(reader.init)  # the file's SeekHead: its positions are not the units'
    assert reader.video() == {"codec": "vp8", "width": 160, "height": 120}


def test_while_waiting_the_held_bytes_count_and_the_state_points_at_the_first_cluster():
    first_cluster = LATE.index(b"\x1f\x43\xb6\x75")
    tracks_at = LATE.index(b"\x16\x54\xae\x6b", first_cluster)  # (the first one is the SeekHead's entry)
    reader = WebMReader()
    assert len(reader.feed(LATE[:tracks_at])) == 0
    assert reader.waiting_for_tracks and reader.held_bytes > tracks_at - first_cluster - 100
    assert reader.state()["consumed"] == first_cluster


@pytest.mark.parametrize("step", [997, 4096])
def test_a_reader_restored_while_waiting_reads_the_held_clusters_again(step):
    pieces = [LATE[i : i + step] for i in range(0, len(LATE), step)]
    whole = feed_all(WebMReader(), pieces)
    for cut in range(1, len(pieces)):
        reader = WebMReader()
        before = feed_all(reader, pieces[:cut])
        state, init = reader.state(), bytes(reader.init)
        stream = b"".join(pieces[:cut])
        restored = WebMReader.restore(state, init, stream[state["consumed"] :])
        assert before + feed_all(restored, pieces[cut:]) == whole, f"restored after piece {cut}"


def test_the_bound_on_clusters_before_the_tracks():
    with pytest.raises(InvalidMediaError) as refused:
        WebMReader(max_bytes_before_tracks=10_000).feed(LATE)
    message = refused.value.message
    assert message.endswith(" bytes of Clusters came before the stream's Tracks (limit "
                            "max_bytes_before_tracks=10000); put the Tracks first")  # fmt: skip
    assert 10_000 < int(message.split()[0]) < 15_000


def test_info_announced_by_the_seekhead_is_waited_for():
    """A TimecodeScale of 10 ms in an Info after the Clusters: the blocks' times use it."""
    source = w.read_packets(CORPUS / "vp8_opus.webm")
    frames = [w.Frame(f.data, f.pts // 10, f.keyframe) for f in source.frames]
    clusters = w.split_clusters(w.simple_blocks(frames), [10])
    layout = w.Layout("matroska", ("seekhead", "tracks", "clusters", "info"), timecode_scale=10_000_000)
    data = w.write([source.track], clusters, layout)
    reader = WebMReader()
    blocks = list(itertools.chain.from_iterable(reader.feed(data[i : i + 500]).blocks for i in range(0, len(data), 500)))
    assert reader.timecode_scale == 10_000_000 and len(blocks) == 50
    assert reader.ticks_to_ms(blocks[-1].timecode) == frames[-1].pts * 10
    assert b"\x2a\xd7\xb1" in bytes(reader.init)  # the Info is in the units' init segment


def test_a_copy_of_the_tracks_must_say_the_same():
    source = w.read_packets(CORPUS / "vp8_opus.webm")
    clusters = w.split_clusters(w.simple_blocks(source.frames[:5]), [5])
    layout = w.Layout("matroska", ("info", "tracks", "clusters"), segment_unknown_size=True)
    first = w.write([source.track], clusters, layout)
    copy = w.master(w.TRACKS, w.Track(1, "V_VP9", "video", None, 160, 120).entry())
    reader = WebMReader()
    reader.feed(first)
    with pytest.raises(UnsupportedError, match=r"the Tracks element at byte \d+ differs from the first one"):
        reader.feed(copy)
    same = w.master(w.TRACKS, source.track.entry())
    reader = WebMReader()
    reader.feed(first + same)  # mkvmerge --engage write_headers_twice: accepted


def test_units_of_late_tracks_decode(tmp_path):
    import av

    reader = WebMReader()
    unit = reader.feed(LATE)
    path = tmp_path / "unit.mkv"
    path.write_bytes(build_unit(bytes(reader.init), unit.clusters))
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 50
