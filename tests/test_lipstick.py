"""The lipstick try-on tutorial's client (issue 19): `image` data URLs in, `response_back` data URLs
out with the lips recoloured, `catch-frame` echoed; latest wins per connection, answers in order;
each connection's images stored as a session of snapshots with their faces; bad input answered
with `session_error`. Real servers on loopback, the tutorial's page in Chromium."""

from __future__ import annotations

import base64
import concurrent.futures
import os
import re
import signal
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
import socketio
from prometheus_client.parser import text_string_to_metric_families

from ingest.media.overlay import LIP_COLOUR
from tests.client import http_get, http_json, run, wait_for_summary, wait_until
from tests.conftest import ARTIFACTS, CHROMIUM, IMAGES, ServerProcess
from tests.pages import fetch, get_json
from tests.pages import wait_for_summary as page_summary
from tests.pages import wait_until as page_wait
from tests.test_crash import worker_pids

PAGES = Path(__file__).parent / "pages"
OBAMA = (IMAGES / "obama.jpg").read_bytes()
JPEG_URL = "data:image/jpeg;base64,"
MAX_SNAPSHOT_BYTES = 2_000_000  # the shared server's: a data URL longer than ~2.67 M characters is refused


def data_url(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def decode_url(url: str) -> np.ndarray:
    assert url.startswith(JPEG_URL), url[:40]
    return decode(base64.b64decode(url[len(JPEG_URL) :]))


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def obama_at(width: int) -> bytes:
    """obama.jpg resized to ``width`` px wide, as a JPEG (distinct sizes tell frames apart)."""
    image = decode(OBAMA)
    height = round(image.shape[0] * width / image.shape[1])
    ok, jpeg = cv2.imencode(".jpg", cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))
    assert ok
    return jpeg.tobytes()


def png_bomb(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(bytes(width + 1) * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", len(idat)) + b"IDAT" + idat


def lip_masks(shape: tuple[int, ...], face: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(the lips: outer polygon minus inner; the JPEG blocks
    the overlay cannot reach: outside the mouth's box + 12 px (the overlay's own margin), widened
    to the 16-px grid of JPEG's colour blocks and one block more for the decoder's smoothing)."""
    points = np.asarray(face["points"], np.float32)
    lips = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(lips, [np.round(points[48:60]).astype(np.int32)], 255)
    cv2.fillPoly(lips, [np.round(points[60:68]).astype(np.int32)], 0)
    far = np.full(shape[:2], True)
    (x0, y0), (x1, y1) = points[48:60].min(axis=0) - 12, points[48:60].max(axis=0) + 12
    x0, y0 = max(int(x0) // 16 * 16 - 16, 0), max(int(y0) // 16 * 16 - 16, 0)
    x1, y1 = (int(x1) // 16 + 2) * 16, (int(y1) // 16 + 2) * 16
    far[y0:y1, x0:x1] = False
    return lips > 0, far


def reencoded(image: np.ndarray) -> np.ndarray:
    """``image`` through the JPEG encoder as the server answers it (quality 40), nothing drawn."""
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 40])
    assert ok
    return decode(jpeg.tobytes())


class TryOn:
    """A python-socketio client speaking the tutorial's dialect: what it gets back, in order."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sio = socketio.AsyncClient(reconnection=False)
        self.answers: list[Any] = []
        self.errors: list[dict[str, Any]] = []
        self.sio.on("response_back", self.answers.append)
        self.sio.on("session_error", self.errors.append)

    async def __aenter__(self) -> TryOn:
        await self.sio.connect(self.url, transports=["websocket"])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sio.disconnect()

    async def answered(self, count: int, what: str) -> None:
        async def enough() -> bool:
            return len(self.answers) >= count

        await wait_until(enough, what, timeout=60)

    async def erred(self, count: int, what: str) -> None:
        async def enough() -> bool:
            return len(self.errors) >= count

        await wait_until(enough, what, timeout=60)


async def metric(url: str, name: str) -> float:
    _, text, _ = await http_get(url + "/metrics")
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


async def image_sessions(url: str) -> dict[str, dict[str, Any]]:
    _, listing = await http_json(url + "/api/sessions")
    return {s["id"]: s for s in listing["sessions"] if s.get("meta", {}).get("client") == "classic-images"}


async def new_session(url: str, before: dict[str, Any]) -> str:
    async def found() -> str | None:
        fresh = set(await image_sessions(url)) - set(before)
        return fresh.pop() if len(fresh) == 1 else None

    return await wait_until(found, "the connection's classic-images session")


async def stored(url: str, session_id: str, count: int) -> list[tuple[bytes, list[dict[str, Any]]]]:
    """Each stored snapshot's bytes and faces, in order, once ``count`` are stored."""
    base = f"{url}/api/sessions/{session_id}"
    detail = await wait_for_summary(base, lambda s: len(s["snapshots"]) >= count, f"{count} images stored")
    out = []
    for row in detail["snapshots"]:
        status, data, mime = await http_get(f"{base}/snapshots/{row['snapshot_id']}")
        assert status == 200 and mime == "image/jpeg"
        status, faces = await http_json(f"{base}/snapshots/{row['snapshot_id']}/landmarks")
        assert status == 200
        out.append((data, faces["faces"]))
    return out


@pytest.fixture(scope="module")
def tryon_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("lipstick") / "data"
    server = ServerProcess(data, env={"CAMINGEST_MAX_SNAPSHOT_BYTES": str(MAX_SNAPSHOT_BYTES)}).start()
    yield server
    server.stop()


def test_a_face_comes_back_with_its_lips_recoloured_and_is_stored(tryon_server):
    url = tryon_server.url

    async def scenario() -> None:
        before = await image_sessions(url)
        async with TryOn(url) as client:
            await client.sio.emit("image", data_url(OBAMA))
            await client.answered(1, "response_back for obama.jpg")
            await client.sio.emit("catch-frame", {"tutorial": ["catch", 1]})
            await client.answered(2, "catch-frame echoed")
            session_id = await new_session(url, before)
            ((data, faces),) = await stored(url, session_id, 1)
        assert client.errors == []
        answer, echo = client.answers
        assert echo == {"tutorial": ["catch", 1]}
        assert data == OBAMA  # stored as sent, with the face the worker found
        (face,) = faces
        assert len(face["points"]) == 68

        original, recoloured = decode(OBAMA), decode_url(answer)
        assert recoloured.shape == original.shape
        lips, _ = lip_masks(original.shape, face)
        target = np.array(LIP_COLOUR, np.float64)
        before_lips, after_lips = original[lips].mean(axis=0), recoloured[lips].mean(axis=0)
        moved = np.linalg.norm(before_lips - target) - np.linalg.norm(after_lips - target)
        points = np.asarray(face["points"])
        eyes = np.linalg.norm(points[36:42].mean(axis=0) - points[42:48].mean(axis=0))
        brow = points[17:27, 1].min()
        x0, x1 = int(points[19, 0]), int(points[24, 0])
        y0, y1 = int(brow - 0.6 * eyes), int(brow - 0.2 * eyes)
        forehead = np.abs(recoloured[y0:y1, x0:x1].mean(axis=(0, 1)) - original[y0:y1, x0:x1].mean(axis=(0, 1)))
        print(f"lips BGR {before_lips.round(1)} -> {after_lips.round(1)} (toward {LIP_COLOUR}: {moved:.1f}); "
              f"forehead {x1 - x0}x{y1 - y0} px moved {forehead.round(2)}")  # fmt: skip
        assert moved > 0.25 * np.linalg.norm(before_lips - target)  # blended at 40% toward the colour
        assert forehead.max() < 2.0  # JPEG noise only
        summary = await wait_for_summary(f"{url}/api/sessions/{session_id}", lambda s: s["state"] == "stopped",
                                         "the session ended with its connection")  # fmt: skip
        assert summary["ended_by"] == "client" and summary["meta"] == {"client": "classic-images"}
        assert summary["chunks"] == 0 and len(summary["snapshots"]) == 1
        async with aiohttp.ClientSession() as http, http.delete(f"{url}/api/sessions/{session_id}") as response:
            assert response.status == 200, await response.text()
        assert session_id not in await image_sessions(url)

    run(scenario())


def test_latest_wins_answers_in_order_and_stores_what_it_answered(tryon_server):
    url = tryon_server.url
    widths = [300 + 12 * k for k in range(10)]  # each frame's width tells its answer apart
    frames = [obama_at(w) for w in widths]

    async def scenario() -> None:
        before = await image_sessions(url)
        dropped_before = await metric(url, "camingest_classic_frames_dropped_total")
        async with TryOn(url) as client:
            for frame in frames:  # faster than any worker: emitted at once
                await client.sio.emit("image", data_url(frame))

            async def last_answered() -> bool:
                return any(decode_url(a).shape[1] == widths[-1] for a in client.answers)

            await wait_until(last_answered, "the newest frame answered (it is never dropped)")
            answered = [decode_url(a).shape[1] for a in client.answers]
            session_id = await new_session(url, before)
            kept = await stored(url, session_id, len(answered))
            dropped = await metric(url, "camingest_classic_frames_dropped_total") - dropped_before
        print(f"sent {len(frames)}, answered widths {answered}, dropped {dropped:g}")
        assert client.errors == []
        assert answered == sorted(answered) and len(set(answered)) == len(answered)  # in order, once each
        assert answered[0] == widths[0] and answered[-1] == widths[-1]
        assert dropped == len(frames) - len(answered) > 0  # at most one waits per connection
        assert [data for data, _ in kept] == [frames[widths.index(w)] for w in answered]
        assert all(len(faces) == 1 and len(faces[0]["points"]) == 68 for _, faces in kept)

    run(scenario())


def bad_inputs() -> list[tuple[object, str, str]]:
    half = OBAMA[: len(OBAMA) // 2]  # its header is whole, its pixels are not
    long_url = JPEG_URL + "A" * 2_700_000
    limit = 100 + 4 * -(-MAX_SNAPSHOT_BYTES // 3)
    return [
        ("hello", "bad_request",
         'image is not a data URL: expected "data:image/jpeg;base64,..." (canvas.toDataURL("image/jpeg")), got \'hello\''),
        ("data:image/gif;base64,R0lGODlhAQABAAAAACw=", "unsupported",
         "image data URL of type 'image/gif'; send one of image/jpeg, image/png, image/webp"),
        ("data:image/jpeg,%FF%D8", "bad_request",
         'image data URL "data:image/jpeg," is not base64; send "data:image/jpeg;base64,..."'),
        (JPEG_URL + "/9j/4AAQ!!!!", "bad_request",
         "image data URL: character '!' at position 8 of its base64 is not base64 (A-Z, a-z, 0-9, +, / and = padding)"),
        (JPEG_URL + "/9j/4AAQS", "bad_request",
         "image data URL: its base64 has 9 characters, not a multiple of 4 (cut short, or its = padding removed)"),
        (data_url(b"hello, this is text, not a picture"), "invalid_media",
         "not a JPEG, PNG or WebP image (unknown magic bytes)"),
        (data_url(OBAMA, "image/png"), "invalid_media", "declared image/png but the bytes are image/jpeg"),
        (data_url(png_bomb(50_000, 50_000), "image/png"), "too_large",
         "image declares 50000x50000 = 2500000000 pixels, more than max_snapshot_pixels=40000000"),
        (long_url, "too_large",
         f"image data URL of {len(long_url)} characters is longer than the {limit} that max_snapshot_bytes={MAX_SNAPSHOT_BYTES} allows"),
        (data_url(half), "invalid_media", "the image does not decode; it may be damaged or truncated"),
        (42, "bad_request",
         'image must be a data URL string ("data:image/jpeg;base64,...") or {data, timeMillis} after a video blob, got int'),
    ]  # fmt: skip


def test_bad_input_gets_its_exact_error_while_another_connection_is_answered(tryon_server):
    url = tryon_server.url
    honest_frame = data_url(obama_at(320))

    async def scenario() -> str:
        async with TryOn(url) as honest, TryOn(url) as bad:
            await honest.sio.emit("image", honest_frame)
            await honest.answered(1, "the honest connection's first answer")
            for i, (payload, code, message) in enumerate(bad_inputs()):
                await honest.sio.emit("image", honest_frame)  # one more honest frame beside each bad one
                await bad.sio.emit("image", payload)
                await bad.erred(i + 1, f"session_error for bad input {i} ({code})")
                assert bad.errors[i] == {"session_id": None, "code": code, "message": message}, i
                await honest.answered(i + 2, f"the honest connection answered after bad input {i}")
            assert bad.answers == [] and len(bad.errors) == len(bad_inputs())
            assert honest.errors == []
            assert all(a.startswith(JPEG_URL) for a in honest.answers)
            bad_sid = bad.sio.get_sid()
        assert bad_sid is not None
        return bad_sid

    bad_sid = run(scenario())

    def refusals() -> list[str]:
        return [line for line in tryon_server.log.read_text().splitlines() if f"classic image client {bad_sid}" in line]

    # rate-limited: the first refusal, then the count of the others once the server saw the
    # connection go (after the client closed it: waited for)
    lines = run(wait_until(lambda: len(refusals()) >= 2 and refusals(), "the refusals' count logged at disconnect",
                           30, seen=refusals))  # fmt: skip
    assert "Traceback" not in tryon_server.log.read_text()
    assert len(lines) == 2, lines
    assert lines[0].endswith("image is not a data URL: expected \"data:image/jpeg;base64,...\" "
                             "(canvas.toDataURL(\"image/jpeg\")), got 'hello'")  # fmt: skip
    assert re.search(r"classic image client \S+: 9 more session errors not logged$", lines[1]), lines[1]


def test_storing_stops_at_max_classic_images_and_answers_go_on(server_factory):
    server = server_factory(env={"CAMINGEST_MAX_CLASSIC_IMAGES": "2"})
    frames = [obama_at(300 + 10 * k) for k in range(4)]

    async def scenario() -> None:
        async with TryOn(server.url) as client:
            for i, frame in enumerate(frames):  # one at a time: none dropped
                await client.sio.emit("image", data_url(frame))
                await client.answered(i + 1, f"answer {i}")
            session_id = await new_session(server.url, {})  # stored after its answer
            kept = await stored(server.url, session_id, 2)
        assert [decode_url(a).shape[1] for a in client.answers] == [300, 310, 320, 330]
        assert client.errors == [{
            "session_id": session_id, "code": "busy",
            "message": f"session {session_id} stored 2 images, the limit (max_classic_images); later images are "
                       "recoloured and answered but not stored (reconnect for a new session)",
        }]  # fmt: skip
        assert [data for data, _ in kept] == frames[:2]
        summary = await wait_for_summary(f"{server.url}/api/sessions/{session_id}", lambda s: s["state"] == "stopped",
                                         "the session ended with its connection")  # fmt: skip
        assert len(summary["snapshots"]) == 2

    run(scenario())


def test_without_analysis_the_page_is_told_once(ingest_server):
    async def scenario() -> None:
        async with TryOn(ingest_server.url) as client:
            await client.sio.emit("image", data_url(OBAMA))
            await client.sio.emit("image", data_url(OBAMA))
            await client.sio.emit("catch-frame", "after both images")
            await client.answered(1, "catch-frame echoed after both images were handled")
        assert client.answers == ["after both images"]
        assert client.errors == [{
            "session_id": None, "code": "unsupported",
            "message": "this server runs without analysis (--no-analysis): images are not recoloured (said once)",
        }]  # fmt: skip

    run(scenario())


def test_a_worker_killed_mid_image_is_said_and_the_next_image_answered(server_factory):
    server = server_factory(env={"CAMINGEST_WORKERS": "1"})
    assert server.proc is not None
    (worker,) = worker_pids(server.proc.pid)
    image = cv2.resize(decode(OBAMA), (6000, 6000), interpolation=cv2.INTER_LINEAR)  # ~1 s of the worker
    big = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes()

    async def scenario() -> None:
        async with TryOn(server.url) as client:
            await client.sio.emit("image", data_url(big))

            async def in_hand() -> bool:
                return await metric(server.url, "camingest_workers_busy") == 1

            await wait_until(in_hand, "the big image in the worker's hands")
            os.kill(worker, signal.SIGKILL)
            await client.erred(1, "the crash said to the page")
            await client.sio.emit("image", data_url(obama_at(320)))
            await client.answered(1, "the next image answered by the new worker")
        assert client.errors == [{"session_id": None, "code": "internal", "message": "the analysis worker crashed"}]
        assert decode_url(client.answers[0]).shape[1] == 320

    run(scenario())
    assert len(worker_pids(server.proc.pid)) == 1 and worker not in worker_pids(server.proc.pid)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_the_lipstick_tutorials_page_works_unchanged(server_factory, browser, tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "lipstick.html").write_text((PAGES / "lipstick.html").read_text())
    server = server_factory("--pages", str(pages))

    async def warm_up() -> str:  # the workers answer (started, model loaded): a running server, as users meet it
        async with TryOn(server.url) as client:
            await client.sio.emit("image", data_url(obama_at(300)))
            await client.answered(1, "the warm-up image answered")
        # an image is answered first, then stored in the connection's session (CI, 2026-12-02:
        # listed before its session was opened)
        return await new_session(server.url, {})

    with concurrent.futures.ThreadPoolExecutor(1) as thread:  # Playwright's sync API holds this thread's loop
        warm_up_session = thread.submit(run, warm_up()).result()
    page = browser.new_page()
    page.goto(f"{server.url}/pages/lipstick.html")
    # within 5 s: the photo shows an answer drawn from a camera frame (not the black frames sent
    # before the camera plays)
    page_wait(page, """() => {
        const photo = document.getElementById("photo");
        if (!window.answers || !photo.complete || !photo.naturalWidth) return false;
        const c = document.createElement("canvas");
        c.width = photo.naturalWidth; c.height = photo.naturalHeight;
        const ctx = c.getContext("2d");
        ctx.drawImage(photo, 0, 0);
        const px = ctx.getImageData(0, 0, c.width, c.height).data;
        let bright = 0;
        for (let i = 0; i < px.length; i += 4) bright += px[i] + px[i + 1] + px[i + 2] > 150;
        return bright > px.length / 16;
    }""", timeout_ms=5000)  # fmt: skip
    shown = page.evaluate("() => ({src: document.getElementById('photo').src, n: window.answers})")
    (listed,) = [s for s in get_json(f"{server.url}/api/sessions")["sessions"] if s["id"] != warm_up_session]
    base = f"{server.url}/api/sessions/{listed['id']}"
    # answers and stored images go in the same order: the n-th answer is the n-th image stored
    detail = page_summary(base, lambda s: len(s["snapshots"]) >= shown["n"])
    snapshot = detail["snapshots"][shown["n"] - 1]
    frame = decode(fetch(f"{base}/snapshots/{snapshot['snapshot_id']}"))
    (face,) = get_json(f"{base}/snapshots/{snapshot['snapshot_id']}/landmarks")["faces"]
    answer = decode_url(shown["src"])
    assert answer.shape == frame.shape == (300, 400, 3)
    lips, far = lip_masks(frame.shape, face)
    diff = np.abs(answer.astype(np.int16) - frame.astype(np.int16)).max(axis=2)
    noise = np.abs(answer.astype(np.int16) - reencoded(frame).astype(np.int16)).max(axis=2)
    print(f"answer {shown['n']}: lips differ by {diff[lips].mean():.1f} on average; elsewhere "
          f"{diff[far].mean():.2f} (the JPEG's noise; max {diff[far].max()}), from the frame re-encoded at "
          f"quality 40: max {noise[far].max()} on {far.mean():.0%} of the pixels")  # fmt: skip
    assert diff[lips].mean() > 12  # recoloured
    assert noise[far].max() <= 1  # everywhere else: the camera frame, re-encoded at quality 40

    # the answers keep coming at the page's pace (6 frames/s): >= 5 a second over 15 answers
    page_wait(page, f"() => window.answers >= {shown['n'] + 15}", timeout_ms=30_000)
    times = page.evaluate("() => window.answerTimes.slice(-15)")
    rate = 14 / ((times[-1] - times[0]) / 1000)
    sent, answered, errors = page.evaluate("() => [window.sent, window.answers, window.errors]")
    print(f"{rate:.2f} answers/s over the last 15; sent {sent}, answered {answered}")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lipstick-page.png"))
    assert errors == []
    assert rate >= 5
    page.close()  # the page goes away: its session ends, every answered image stored
    summary = page_summary(base, lambda s: s["state"] == "stopped")
    assert summary["ended_by"] == "client" and summary["meta"] == {"client": "classic-images"}
    assert len(summary["snapshots"]) >= answered
    with_face = sum(1 for snap in summary["snapshots"]
                    if get_json(f"{base}/snapshots/{snap['snapshot_id']}/landmarks")["faces"])  # fmt: skip

    # on the sessions page: its images, each with the faces stored with it
    sessions = browser.new_page()
    sessions.goto(f"{server.url}/sessions?id={listed['id']}")
    page_wait(sessions, f"""() => window.camingestSessions.selected === "{listed['id']}" &&
        [...document.querySelectorAll("#gallery figcaption")].filter(c => c.textContent).length === {len(summary["snapshots"])}""")
    captions = sessions.evaluate("() => [...document.querySelectorAll('#gallery figcaption')].map(c => c.textContent)")
    sessions.screenshot(path=str(ARTIFACTS / "lipstick-sessions-page.png"), full_page=True)
    assert sum(1 for c in captions if c.startswith("1 face")) == with_face > 0
