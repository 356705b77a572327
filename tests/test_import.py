"""Import of existing videos: `camingest import` and uploads (POST /api/sessions) give sessions
whose frames and landmarks are complete."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import aiohttp
import pytest

from tests.client import http_json, run, wait_for_summary
from tests.conftest import ROOT, ffprobe_frames


@pytest.fixture(scope="module")
def cli_imported(clip, tmp_path_factory) -> list[dict]:
    """The landmarks `camingest import` stores for the clip."""
    data = tmp_path_factory.mktemp("cli") / "data"
    result = subprocess.run([sys.executable, "-m", "ingest.cli", "import", str(clip), "--workers", "2", "--data",
                             str(data)], capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (session_dir,) = (data / "sessions").iterdir()
    assert ffprobe_frames(session_dir / "recording.webm") == ffprobe_frames(clip)
    listing = subprocess.run([sys.executable, "-m", "ingest.cli", "sessions", "--data", str(data)],
                             capture_output=True, text=True, cwd=ROOT, check=True).stdout  # fmt: skip
    assert session_dir.name in listing and f" {ffprobe_frames(clip)} " in listing
    return [json.loads(x) for x in (session_dir / "landmarks.jsonl").read_text().splitlines()]


def test_cli_import_mp4(clip, cli_imported, tmp_path):
    expected = ffprobe_frames(clip)
    assert [f["index"] for f in cli_imported] == list(range(expected))
    assert sum(1 for f in cli_imported if f["faces"]) >= 0.95 * expected

    text = tmp_path / "notes.txt"
    text.write_text("not a video\n")
    bad = subprocess.run([sys.executable, "-m", "ingest.cli", "import", str(text), "--data", str(tmp_path / "d")],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.splitlines()[-1] == (
        "camingest import: notes.txt is not a video camingest can read (WebM, MP4, MOV, MKV)"
    )


async def post(url: str, body: bytes | aiohttp.FormData, **headers: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as response:
        return response.status, await response.json()


async def wait_filled(url: str) -> dict:
    return await wait_for_summary(
        url, lambda d: d["analysed_frames"] == d["frames"] and "fill" not in d, "landmarks not complete"
    )


def test_upload_raw_and_multipart(server_factory, clip, cli_imported):
    server = server_factory()
    expected = ffprobe_frames(clip)

    async def scenario() -> list[tuple[dict, list[dict]]]:
        raw = await post(f"{server.url}/api/sessions?filename=clip.mp4", clip.read_bytes(),
                         **{"Content-Type": "video/mp4"})  # fmt: skip
        form = aiohttp.FormData()
        form.add_field("file", clip.read_bytes(), filename="clip.mp4", content_type="video/mp4")
        multipart = await post(f"{server.url}/api/sessions", form)
        filled = []
        for status, summary in (raw, multipart):
            assert status == 201, summary
            assert summary["state"] == "stopped" and summary["frames"] == expected
            assert summary["fill"]["state"] in ("queued", "filling")
            detail = await wait_filled(f"{server.url}/api/sessions/{summary['id']}")
            _, stored = await http_json(f"{server.url}/api/sessions/{summary['id']}/landmarks")
            filled.append((detail, stored["frames"]))
        return filled

    filled = run(scenario())
    server.stop()
    for detail, frames in filled:
        assert detail["skipped_frames"] == 0
        assert [f["index"] for f in frames] == list(range(expected))
        assert detail["frames_with_faces"] == sum(1 for f in frames if f["faces"])
        # the workers landmark it exactly as `camingest reprocess` of that session does (each
        # session sweeps on its own frames, a function of its id: `camingest import`'s session,
        # another id, has the same frames with faces, not the same sweeps)
        session_id = detail["id"]
        again = subprocess.run([sys.executable, "-m", "ingest.cli", "reprocess", session_id, "--workers", "2",
                                "--data", str(server.data)], capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
        assert again.returncode == 0, again.stderr
        stored = (server.data / "sessions" / session_id / "landmarks.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in stored] == frames
        assert abs(detail["frames_with_faces"] - sum(1 for f in cli_imported if f["faces"])) <= 0.02 * expected
    assert not list((server.data / "uploads").iterdir())


def test_bad_uploads_are_refused_and_leave_nothing(server_factory, clip, tmp_path):
    server = server_factory("--no-analysis", env={"CAMINGEST_MAX_IMPORT_BYTES": "100000"})
    url = f"{server.url}/api/sessions"

    async def scenario() -> None:
        status, body = await post(url, clip.read_bytes())  # Content-Length over the limit
        assert (status, body["error"]["code"]) == (413, "too_large")

        async def chunked():  # no Content-Length: cut off while streaming
            data = clip.read_bytes()
            for i in range(0, len(data), 16384):
                yield data[i : i + 16384]

        async with aiohttp.ClientSession() as http, http.post(url, data=chunked()) as response:
            assert response.status == 413 and (await response.json())["error"]["code"] == "too_large"
        status, body = await post(url, b"not a video\n" * 100, **{"Content-Type": "video/mp4"})
        assert (status, body["error"]["code"]) == (422, "invalid_media")
        status, body = await post(url, b"")
        assert (status, body["error"]["code"]) == (400, "bad_request")
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("other", "x")
        status, body = await post(url, form)
        assert (status, body["error"]["code"]) == (400, "bad_request")
        status, body = await post(url, clip.read_bytes()[:1000], Origin="http://evil.example")
        assert (status, body["error"]["code"]) == (403, "unauthorized")
        _, listing = await http_json(url)
        assert listing["sessions"] == []
        _, health = await http_json(f"{server.url}/api/health")
        assert health["ok"]

    run(scenario())
    assert not list((server.data / "uploads").iterdir())


def test_a_trickling_upload_is_cut_off_and_frees_its_slot(server_factory, clip):
    """One byte every 0.3 s (an attacker holding the only upload slot): cut off after
    upload_idle_s with 408, and the next upload goes through while it would still be sending."""
    env = {"CAMINGEST_MAX_UPLOADS": "1", "CAMINGEST_UPLOAD_IDLE_S": "2"}
    server = server_factory("--no-analysis", env=env)

    async def trickle():
        for _ in range(100):  # 30 s of it, unless cut off
            yield b"\x1a"
            await asyncio.sleep(0.3)

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            slow = asyncio.create_task(http.post(f"{server.url}/api/sessions?filename=slow.webm", data=trickle()))
            try:
                response = await asyncio.wait_for(slow, 20)
                assert response.status == 408
                body = await response.json()
                assert body["error"]["code"] == "timeout"
                assert body["error"]["message"].startswith("the upload came too slowly (")
            except aiohttp.ClientError:
                pass  # the server answered and closed while the body was still coming: also cut off
            async with http.post(f"{server.url}/api/sessions?filename=clip.mp4", data=clip.read_bytes()) as ok:
                assert ok.status == 201, await ok.text()

    run(scenario())
