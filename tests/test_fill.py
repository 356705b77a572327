"""Frames live analysis skipped are filled by the server once the session stops."""

from __future__ import annotations

import json

import pytest

from tests.client import Client, live_frames, record, run, wait_for_event, wait_for_summary, wait_until
from tests.conftest import SAME_SWEEPS, load_recording
from tests.test_batch import NO_SKIP, read_landmarks, record_live

RECORDING = "webcam_vp8_kf1s_250ms"


async def wait_complete(url: str, frames: int) -> dict:
    return await wait_for_summary(
        url, lambda d: d["analysed_frames"] == frames and d["skipped_frames"] == 0, "landmarks were not filled"
    )


@pytest.fixture(scope="module")
def live_reference(tmp_path_factory, request) -> list[dict]:
    """Landmarks of the recording with live analysis that never skips."""
    from tests.conftest import ServerProcess

    recording = load_recording(RECORDING)
    data = tmp_path_factory.mktemp("reference") / "data"
    server = ServerProcess(data, env={**NO_SKIP, **SAME_SWEEPS}).start()
    try:
        session_id = record_live(server, recording)
    finally:
        server.stop()
    return read_landmarks(data / "sessions" / session_id / "landmarks.jsonl")


@pytest.mark.parametrize("queue_units", ["0", "1"])  # every frame skipped live / some skipped
def test_skipped_frames_are_filled_after_stop(server_factory, tmp_path, live_reference, queue_units):
    recording = load_recording(RECORDING)
    frames = recording.expected["video_frames"]
    data = tmp_path / "data"
    server = server_factory(data=data, env={"CAMINGEST_LIVE_QUEUE_UNITS": queue_units, **SAME_SWEEPS})

    async def scenario() -> tuple[Client, str, dict]:
        async with Client(server.url) as client:
            session = await record(server.url, recording, pace=0, client=client)  # live analysis falls behind
            url = f"{server.url}/api/sessions/{session['session_id']}"
            detail = await wait_complete(url, frames)
            await wait_for_event(client, "landmarks_filled")
            return client, session["session_id"], detail

    client, session_id, detail = run(scenario())
    live = [f for batch in client.events["landmarks"] for f in batch["frames"]]
    assert [f["index"] for f in live] == list(range(frames))
    skipped_live = sum(1 for f in live if f.get("skipped"))
    if queue_units == "0":
        assert skipped_live == frames
    (filled,) = client.events["landmarks_filled"]
    assert filled == {"session_id": session_id, "analysed_frames": frames, "skipped_frames": 0,
                      "frames_with_faces": detail["frames_with_faces"]}  # fmt: skip

    stored = read_landmarks(data / "sessions" / session_id / "landmarks.jsonl")
    # every frame has results, and they are exactly those of live analysis that never skips
    assert stored == live_reference
    assert detail["frames_with_faces"] == sum(1 for f in stored if f["faces"])
    meta = json.loads((data / "sessions" / session_id / "landmarks.meta.json").read_text())
    assert meta["mode"] == "live" and meta["filled_frames"] >= skipped_live
    assert not list((data / "sessions" / session_id).glob("*.tmp"))


def test_fill_resumes_after_a_crash(server_factory, tmp_path, live_reference):
    recording = load_recording(RECORDING)
    frames = recording.expected["video_frames"]
    data = tmp_path / "data"
    server = server_factory(data=data, env={"CAMINGEST_LIVE_QUEUE_UNITS": "0", **SAME_SWEEPS})

    async def stopped_with_every_frame_skipped() -> str:
        async with Client(server.url) as client:
            session = await record(server.url, recording, pace=0, client=client)
            # the last live results (all skipped) are out: the fill starts now (looked at every
            # 5 ms: the kill must come before the fill ends)
            await wait_until(lambda: len(live_frames(client)) == frames, f"live results (skipped) of {frames} frames",
                             60, seen=lambda: len(live_frames(client)), interval=0.005)  # fmt: skip
            return session["session_id"]

    session_id = run(stopped_with_every_frame_skipped())
    server.kill()  # milliseconds into a fill that takes several hundred
    assert "filled" not in server.log.read_text()
    server = server_factory(data=data, env=SAME_SWEEPS)  # a restart finds the stopped session with skipped frames
    detail = run(wait_complete(f"{server.url}/api/sessions/{session_id}", frames))
    assert detail["state"] == "stopped"
    assert f"filled {frames} frames of {session_id}" in server.log.read_text()
    assert read_landmarks(data / "sessions" / session_id / "landmarks.jsonl") == live_reference
