"""GET /api/sessions/{id}/preview.mjpg: multipart JPEG parts of annotated frames."""

from __future__ import annotations

import asyncio

import aiohttp
import cv2
import numpy as np

from tests.client import Client, http_json, run
from tests.conftest import load_recording


async def read_parts(url: str, count: int) -> tuple[str, list[bytes]]:
    """The content type and the first ``count`` JPEG parts; then the client goes away."""
    parts: list[bytes] = []
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        ctype = response.headers["Content-Type"]
        boundary = ctype.split("boundary=")[1].encode()
        buffer = b""
        while len(parts) < count:
            buffer += await asyncio.wait_for(response.content.read(65536), 30)
            while True:
                head_end = buffer.find(b"\r\n\r\n")
                if head_end < 0:
                    break
                head = buffer[:head_end].decode()
                lines = head.split("\r\n")
                assert lines[0] == "--" + boundary.decode()
                assert "Content-Type: image/jpeg" in lines
                length = int(next(x for x in lines if x.startswith("Content-Length:")).split(":")[1])
                if len(buffer) < head_end + 4 + length + 2:
                    break
                parts.append(buffer[head_end + 4 : head_end + 4 + length])
                assert buffer[head_end + 4 + length : head_end + 6 + length] == b"\r\n"
                buffer = buffer[head_end + 6 + length :]
    return ctype, parts[:count]


def check_jpeg(data: bytes) -> np.ndarray:
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (480, 640, 3)
    return image


def test_replay_and_live_preview(analysis_server):
    recording = load_recording("webcam_vp8_kf1s_250ms")

    async def scenario() -> None:
        async with Client(analysis_server.url) as client:
            session = await client.start(recording.meta["mime"])
            for seq in range(8):
                assert (await client.chunk(session, seq, recording.chunks[seq]))["ok"]
            base = f"{analysis_server.url}/api/sessions/{session['session_id']}"
            # live: follows the recording from its last keyframe while chunks keep coming
            live = asyncio.create_task(read_parts(base + "/preview.mjpg", 20))
            for seq in range(8, len(recording.chunks)):
                assert (await client.chunk(session, seq, recording.chunks[seq]))["ok"]
                await asyncio.sleep(0.05)
            ctype, parts = await live
            assert ctype == "multipart/x-mixed-replace; boundary=frame"
            assert len(parts) == 20
            for data in parts:
                check_jpeg(data)
            await client.stop(session)
        for _ in range(1200):  # the overlay needs the live landmarks to be complete
            _, detail = await http_json(base)
            if detail["analysed_frames"] == recording.expected["video_frames"]:
                break
            await asyncio.sleep(0.1)
        # replay of the stopped session, with and without the overlay: they differ at the face
        _, drawn = await read_parts(base + "/preview.mjpg?overlay=landmarks", 3)
        _, plain = await read_parts(base + "/preview.mjpg?overlay=none", 3)
        diff = np.abs(check_jpeg(drawn[0]).astype(int) - check_jpeg(plain[0]).astype(int))
        assert diff.max() > 60
        status, body = await http_json(base + "/preview.mjpg?overlay=sparkles")
        assert status == 400 and body["error"]["code"] == "bad_request"
        _, health = await http_json(analysis_server.url + "/api/health")
        assert health["ok"]  # viewers that went away left the server healthy

    run(scenario())
