"""Errors for humans (issue 11): one line naming the bad value and what is allowed; HTTP errors
that name the user's file, never the server's paths or errno numbers; codes of the contract."""

from __future__ import annotations

import os
import subprocess
import sys

import aiohttp
import cv2

from tests.client import Client, http_json, run
from tests.conftest import IMAGES, ROOT, load_recording


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ingest.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=120)  # fmt: skip


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_cli_names_the_bad_value(tmp_path):
    result = cli("serve", "--port", "99999", "--data", str(tmp_path / "d"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert last_line(result) == "camingest serve: port 99999 is not a TCP port; allowed: 0-65535 (0 picks a free one)"
    result = cli("sessions", "--data", str(tmp_path), env={"CAMINGEST_PORT": "abc"})
    assert last_line(result) == "camingest sessions: CAMINGEST_PORT='abc' is not a whole number"
    result = cli("serve", "--host", "256.1.1.1", "--no-analysis", "--data", str(tmp_path / "d"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert last_line(result).startswith("camingest serve: cannot listen on 256.1.1.1:8080: ")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes((IMAGES / "obama.jpg").read_bytes())
    result = cli("import", str(photo), "--data", str(tmp_path / "d"))
    assert last_line(result) == "camingest import: photo.jpg is a still image (mjpeg), not a video"
    result = cli("export", "20260101-000000-00000000", "--out", str(tmp_path / "missing" / "out.mp4"),
                 "--data", str(tmp_path / "d"))  # fmt: skip
    assert last_line(result) == (
        f"camingest export: the folder {tmp_path / 'missing'} does not exist; create it or choose another --out"
    )


def test_http_errors_name_the_users_file_and_the_right_code(ingest_server, tmp_path):
    png = cv2.imencode(".png", cv2.imread(str(IMAGES / "obama.jpg")))[1].tobytes()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            for name, body, message in (
                ("holiday.png", png, "holiday.png is a still image (png), not a video"),
                ("notes.webm", b"not a video\n", "notes.webm is not a video camingest can read (WebM, MP4, MOV, MKV)"),
            ):
                async with http.post(f"{ingest_server.url}/api/sessions?filename={name}", data=body) as response:
                    assert response.status == 422
                    assert await response.json() == {"error": {"code": "invalid_media", "message": message}}
        async with Client(ingest_server.url) as client:
            session = await client.start()
            await client.send_all(session, load_recording("webcam_vp8_kf1s_250ms").chunks[:2])
        base = f"{ingest_server.url}/api/sessions/{session['session_id']}"
        status, body = await http_json(f"{base}/chunks/7")
        assert (status, body["error"]["code"]) == (404, "unknown_chunk")
        assert body["error"]["message"] == f"session {session['session_id']} has no chunk 7"
        status, body = await http_json(f"{base}/snapshots/000000-abcdef")
        assert (status, body["error"]["code"]) == (404, "unknown_snapshot")
        status, body = await http_json(f"{ingest_server.url}/api/sessions/20260101-000000-00000000/chunks/0")
        assert (status, body["error"]["code"]) == (404, "unknown_session")

    run(scenario())
