"""Live decoding and landmarks through a real server with worker processes."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from ingest.analysis.detect import detect_faces
from tests.client import Client, http_json, record, run, wait_for_event, wait_for_frames, wait_for_summary
from tests.conftest import load_recording
from tests.media import decoded_frames, match_faces

WEBCAMS = ["webcam_vp8_opus_250ms", "webcam_vp9_opus_250ms", "webcam_h264_250ms", "webcam_vp8_kf1s_250ms"]


def check_frames(frames: list[dict], count: int) -> None:
    assert [f["index"] for f in frames] == list(range(count))  # every frame once, in order
    pts = [f["pts_ms"] for f in frames]
    assert pts == sorted(pts)


@pytest.mark.parametrize("name", [*WEBCAMS, "scene_vp8_opus_250ms"])
def test_every_frame_is_analysed_once(analysis_server, name):
    recording = load_recording(name)
    expected = recording.expected["video_frames"]

    async def scenario() -> None:
        async with Client(analysis_server.url) as client:
            session = await record(analysis_server.url, recording, client=client)
            frames = await wait_for_frames(client, expected)
        check_frames(frames, expected)
        analysed = [f for f in frames if "faces" in f]
        assert len(analysed) + sum(1 for f in frames if f.get("skipped")) == expected
        assert len(analysed) == expected  # this server's queues never skip
        for frame in analysed:
            for face in frame["faces"]:
                assert len(face["points"]) == 68 and len(face["box"]) == 4
        if name in WEBCAMS:
            with_face = sum(1 for f in analysed if f["faces"])
            assert with_face >= 0.95 * expected, f"{with_face}/{expected} frames with a face"
        _, stored = await http_json(f"{analysis_server.url}/api/sessions/{session['session_id']}/landmarks")
        assert stored["frames"] == frames  # what was sent live is what is stored

        if name in ("webcam_vp8_opus_250ms", "webcam_h264_250ms"):
            # accuracy against per-frame full detection (upsample 1) on every 8th frame
            errors: list[float | None] = []
            for frame in decoded_frames(recording.chunks):
                if frame.index % 8 == 0:
                    errors += match_faces(detect_faces(np.array(frame.gray()), 1), frames[frame.index]["faces"])
            hits = [e for e in errors if e is not None]
            assert len(errors) >= 20
            assert len(hits) / len(errors) >= 0.95, f"recall {len(hits)}/{len(errors)}"
            assert float(np.median(hits)) <= 0.05, f"median error {np.median(hits):.3f} of the inter-ocular distance"

    run(scenario())


def test_scene_with_several_faces(server_factory):
    """Small and several faces with scene cuts: with upsample 1 the tracker finds the faces that
    per-frame full detection finds."""
    server = server_factory(env={"CAMINGEST_LIVE_QUEUE_UNITS": "100000", "CAMINGEST_DETECT_UPSAMPLE": "1"})
    recording = load_recording("scene_vp8_opus_250ms")
    expected = recording.expected["video_frames"]

    async def scenario() -> None:
        async with Client(server.url) as client:
            await record(server.url, recording, client=client)
            frames = await wait_for_frames(client, expected)
        check_frames(frames, expected)
        errors: list[float | None] = []
        for frame in decoded_frames(recording.chunks):
            if frame.index % 6 == 0:
                errors += match_faces(detect_faces(np.array(frame.gray()), 1), frames[frame.index]["faces"])
        hits = [e for e in errors if e is not None]
        assert len(errors) >= 20
        assert len(hits) / len(errors) >= 0.9, f"recall {len(hits)}/{len(errors)}"
        assert float(np.median(hits)) <= 0.05

    run(scenario())


def test_falling_behind_skips_instead_of_lagging(server_factory):
    server = server_factory(env={"CAMINGEST_LIVE_QUEUE_UNITS": "1", "CAMINGEST_WORKERS": "1"})
    recording = load_recording("webcam_vp8_opus_250ms")
    expected = recording.expected["video_frames"]

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(Client(server.url)) for _ in range(3)]
            # three sessions sent as fast as acks come back: far more than one worker can landmark
            await asyncio.gather(*(record(server.url, recording, pace=0, client=c) for c in clients))
            total_skipped = 0
            for client in clients:
                frames = await wait_for_frames(client, expected)
                check_frames(frames, expected)
                skipped = sum(1 for f in frames if f.get("skipped"))
                analysed = sum(1 for f in frames if "faces" in f)
                assert skipped + analysed == expected
                total_skipped += skipped
            assert total_skipped > 0

    run(scenario())


def test_three_codecs_at_once_each_get_every_frame(analysis_server):
    """VP8, VP9 and H.264 recorded at once: every frame of each gets its live result, and the
    server's loop-lag gauge is reported. How late the loop runs under this load is measured by
    bench/loop_bench.py (BENCHMARKS.md), not asserted here: blocking calls on the loop are caught
    exactly by BlockBuster, which watches every test server (tests/blocking_server.py)."""
    recordings = [load_recording(n) for n in ("webcam_vp8_opus_250ms", "webcam_vp9_opus_250ms", "webcam_h264_250ms")]

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(Client(analysis_server.url)) for _ in recordings]
            await asyncio.gather(*(record(analysis_server.url, r, pace=0.25, client=c)
                                   for r, c in zip(recordings, clients, strict=True)))  # fmt: skip
            for client, recording in zip(clients, recordings, strict=True):
                await wait_for_frames(client, recording.expected["video_frames"])
        _, health = await http_json(analysis_server.url + "/api/health")
        lag = health["loop_lag_ms"]
        assert set(lag) == {"last", "max"} and 0 <= lag["last"] <= lag["max"], health

    run(scenario())


def test_undecodable_video_fails_only_its_session(analysis_server):
    recording = load_recording("webcam_vp8_opus_250ms")
    from ingest.media.webm import WebMReader

    reader = WebMReader()
    unit = reader.feed(recording.stream)
    keyframe = next(b for b in unit.blocks if b.keyframe and b.track == reader.video_track.number)
    broken = bytearray(recording.stream)
    # payload, not structure: past the frame header (bytes 12-23: its start code and size, which
    # the reader checks before any decoder), so only the decoder finds the damage
    broken[keyframe.offset + 24 : keyframe.offset + 2024] = b"\xff" * 2000
    pieces = [bytes(broken[i : i + 40_000]) for i in range(0, len(broken), 40_000)]

    async def scenario() -> None:
        async with Client(analysis_server.url) as client:
            bad = await client.start()
            good = await client.start()
            for seq, data in enumerate(pieces[:6]):
                await client.chunk(bad, seq, data)
                assert (await client.chunk(good, seq, recording.chunks[seq]))["ok"]
            errors = await wait_for_event(client, "session_error")
            assert len(errors) == 1, errors
            (error,) = errors
            assert error["session_id"] == bad["session_id"] and error["code"] == "invalid_media"
            ack = await client.chunk(bad, 6, pieces[6])
            assert ack["error"]["code"] == "invalid_media"
            for seq in range(6, len(recording.chunks)):
                assert (await client.chunk(good, seq, recording.chunks[seq]))["ok"]
            await client.stop(good)
        _, detail = await http_json(f"{analysis_server.url}/api/sessions/{bad['session_id']}")
        assert detail["state"] == "failed" and detail["frames"] == 0
        assert detail["error"] == error["message"] == "the video does not decode: frame 0 at 0.000 s is damaged (vp8)"

    run(scenario())


def test_audio_only_session(analysis_server, tmp_path):
    import subprocess

    recording = load_recording("webcam_vp8_opus_250ms")
    source, audio = tmp_path / "in.webm", tmp_path / "audio.webm"
    source.write_bytes(recording.stream)
    subprocess.run(["ffmpeg", "-v", "error", "-i", source, "-vn", "-c:a", "copy", "-f", "webm", audio], check=True)
    data = audio.read_bytes()
    pieces = [data[i : i + 5000] for i in range(0, len(data), 5000)]

    async def scenario() -> None:
        async with Client(analysis_server.url) as client:
            session = await client.start("audio/webm;codecs=opus")
            for seq, piece in enumerate(pieces):
                assert (await client.chunk(session, seq, piece))["ok"]
            stopped = await client.stop(session)
            assert stopped["session"]["state"] == "stopped" and stopped["session"]["frames"] == 0
            # absence, proven by what must come after: the server says the session is done
            # (finalized, nothing to fill), then answers a later request on this connection,
            # and its events reach a connection in the order they were sent
            base = f"{analysis_server.url}/api/sessions/{session['session_id']}"
            summary = await wait_for_summary(base, lambda s: s["finalized"] and "fill" not in s, "audio-only session done")
            assert summary["analysed_frames"] == summary["frames"] == 0
            later = await client.chunk(session, len(pieces), b"late")
            assert later["error"] == {"code": "session_closed", "message": f"session {session['session_id']} is stopped"}
            assert not client.events.get("session_error")
            assert not client.events.get("landmarks")

    run(scenario())
