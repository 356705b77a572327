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


async def emitted(url: str, blobs: list[bytes]) -> tuple[socketio.AsyncClient, list[dict]]:
    """A classic client connected to ``url`` that emitted ``blobs`` as ``video`` events (as the
    tutorial page does, without acks), and the ``session_error`` events it receives."""
    sio = socketio.AsyncClient(reconnection=False)
    errors: list[dict] = []
    sio.on("session_error", errors.append)
    await sio.connect(url, transports=["websocket"])
    for blob in blobs:
        await sio.emit("video", {"data": blob})
    return sio, errors


def test_a_first_blob_cut_inside_the_ebml_header_opens_the_session(server_factory):
    """Chromium's MediaRecorder on a busy machine (CI, 2026-12-02, the tutorial page) delivered
    its first blob as the EBML header's first 1 or 2 bytes and the rest in the next: every blob
    was refused ("the first video blob is not WebM"). Blobs too short to tell the container are
    held until it can be read; each is still its own chunk, and the stream is stored whole."""
    server = server_factory(env={"CAMINGEST_LIVE_QUEUE_UNITS": "100000"})
    first = RECORDING.chunks[0]
    blobs = [first[:1], b"", first[1:3], first[3:20], first[20:], *RECORDING.chunks[1:]]
    frames = RECORDING.expected["video_frames"]

    async def scenario() -> None:
        sio, errors = await emitted(server.url, blobs)

        async def listed() -> list[dict]:
            return (await http_json(f"{server.url}/api/sessions"))[1]["sessions"]

        (session,) = await wait_until(listed, "the classic session listed")
        base = f"{server.url}/api/sessions/{session['id']}"
        await wait_for_summary(base, lambda s: s["chunks"] == len(blobs), "every blob stored")
        await sio.disconnect()
        summary = await wait_for_summary(base, lambda s: s["state"] == "stopped" and s["analysed_frames"] == frames,
                                         "the session analysed and ended with its connection")  # fmt: skip
        assert summary["meta"]["client"] == "classic" and summary["mime"] == "video/webm"
        _, raw, _ = await http_get(f"{base}/raw.webm")
        assert raw == RECORDING.stream
        assert errors == []

    run(scenario())


def test_a_first_blob_that_is_not_webm_is_refused_after_the_bytes_that_tell(server_factory):
    """What cannot begin an EBML header is refused at once, naming what is allowed; so are 64
    blobs without the header's first bytes complete (empty ones)."""
    server = server_factory("--no-analysis")

    async def refusals(blobs: list[bytes]) -> list[dict]:
        sio, errors = await emitted(server.url, blobs)
        await wait_until(lambda: errors, "a session_error")
        await sio.disconnect()
        return errors

    message = "the first video blob is not WebM/Matroska (the classic client's MediaRecorder)"
    assert run(refusals([b"\x1a\x45\x00"]))[0] == {"session_id": None, "code": "unsupported", "message": message}
    assert run(refusals([b""] * 64))[0] == {
        "session_id": None,
        "code": "unsupported",
        "message": "the first 64 video blobs hold no WebM/Matroska header (the classic client's MediaRecorder)",
    }
    _, listing = run(http_json(f"{server.url}/api/sessions"))
    assert listing["sessions"] == []
