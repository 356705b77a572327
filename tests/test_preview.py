"""GET /api/sessions/{id}/preview.mjpg: multipart JPEG parts of annotated frames."""

from __future__ import annotations

import asyncio

import aiohttp
import cv2
import numpy as np
import pytest

from tests.client import Client, http_json, record, run, wait_for_summary
from tests.conftest import load_recording

pytestmark = pytest.mark.backends  # also on PostgreSQL + SeaweedFS (README, "Testing")


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
            session = await record(analysis_server.url, recording, pace=0, client=client, last=8, stop=False)
            base = f"{analysis_server.url}/api/sessions/{session['session_id']}"
            # live: follows the recording from its last keyframe while chunks keep coming
            live = asyncio.create_task(read_parts(base + "/preview.mjpg", 20))
            await record(analysis_server.url, recording, client=client, session=session, first=8, stop=False)
            ctype, parts = await live
            assert ctype == "multipart/x-mixed-replace; boundary=frame"
            assert len(parts) == 20
            for data in parts:
                check_jpeg(data)
            await client.stop(session)
        frames = recording.expected["video_frames"]  # the overlay needs the live landmarks to be complete
        await wait_for_summary(base, lambda d: d["analysed_frames"] == frames, "every frame analysed")
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
