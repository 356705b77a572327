"""The classic tutorial client (PROTOCOL.md v1.1): pages written for the Node servers emit
`video` blobs with `timeMillis` (and `image` snapshots) without acks; camingest opens a session
per connection, stores the blobs in arrival order, sends landmarks back, and ends the session
when the connection closes."""

from __future__ import annotations

import socketio

from tests.client import http_get, http_json, run, wait_for_summary, wait_until
from tests.conftest import load_recording

RECORDING = load_recording("webcam_vp8_opus_250ms")


def test_classic_video_events_record_a_session(server_factory):
    server = server_factory(env={"CAMINGEST_LIVE_QUEUE_UNITS": "100000"})
    frames = RECORDING.expected["video_frames"]

    async def scenario() -> None:
        sio = socketio.AsyncClient(reconnection=False)
        landmarks: list[dict] = []

        @sio.on("landmarks")
        async def on_landmarks(data: dict) -> None:
            landmarks.append(data)

        await sio.connect(server.url, transports=["websocket"])
        for seq, blob in enumerate(RECORDING.chunks):  # as the tutorial page does: emit and forget
            await sio.emit("video", {"data": blob, "timeMillis": RECORDING.meta["times"][seq][1]})
        snapshot = RECORDING.snapshots[0].read_bytes()
        await sio.emit("image", {"data": snapshot, "timeMillis": 1234})

        async def frames_back() -> bool:
            return sum(len(e["frames"]) for e in landmarks) >= frames

        await wait_until(frames_back, "landmarks for every frame sent back to the classic client")
        await sio.disconnect()  # the tutorial page closes: the session ends
        _, listing = await http_json(f"{server.url}/api/sessions")
        (session,) = listing["sessions"]
        base = f"{server.url}/api/sessions/{session['id']}"
        summary = await wait_for_summary(base, lambda s: s["state"] == "stopped" and s["finalized"],
                                         "the classic session ended with its connection")  # fmt: skip
        assert summary["ended_by"] == "client" and summary["chunks"] == len(RECORDING.chunks)
        assert summary["frames"] == summary["analysed_frames"] == frames
        assert [s["t_ms"] for s in summary["snapshots"]] == [1234]
        _, raw, _ = await http_get(f"{base}/raw.webm")
        assert raw == RECORDING.stream  # every blob, in arrival order
        indices = sorted(f["index"] for e in landmarks for f in e["frames"])
        assert indices == list(range(frames))

    run(scenario())
