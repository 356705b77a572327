"""The pages end to end in headless Debian chromium with a fake camera showing a face."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.client import Client, record
from tests.conftest import ARTIFACTS, CHROMIUM, IMAGES, chromium_args, ffprobe_frames, free_port, load_recording
from tests.pages import fetch, get_json, in_thread, state, wait_for_selector, wait_for_summary, wait_until

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")


@pytest.mark.backends  # also on PostgreSQL + SeaweedFS (README, "Testing")
def test_record_snapshot_stop(server_factory, browser, tmp_path, backend):
    server = server_factory()
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server.url + "/")
    wait_for_selector(page, "[data-testid=connection][data-state=connected]")
    page.get_by_test_id("record").click()
    wait_until(page, "() => window.camingest.ackedChunks >= 10 && window.camingest.landmarkFrames > 30")
    page.get_by_test_id("snapshot").click()
    wait_until(page, "() => window.camingest.snapshots.length === 1 && window.camingest.snapshots[0].faces")
    wait_until(page, "() => window.camingest.ackedChunks >= 20")
    page.screenshot(path=str(ARTIFACTS / "recorder.png"))
    page.get_by_test_id("stop").click()
    wait_until(page, "() => window.camingest.state === 'stopped'")
    session_id = state(page)["sessionId"]
    base = f"{server.url}/api/sessions/{session_id}"
    summary = get_json(base)
    wait_until(page, f"() => window.camingest.landmarkFrames === {summary['frames']}")
    s = state(page)

    assert summary["state"] == "stopped"
    assert summary["chunks"] == s["ackedChunks"] == s["chunksRecorded"] and s["pendingChunks"] == 0
    raw = tmp_path / "raw.webm"
    raw.write_bytes(fetch(base + "/raw.webm"))
    assert raw.stat().st_size == summary["bytes"] == s["bytesSent"]
    assert ffprobe_frames(raw) == summary["frames"] > 30  # the fake camera drops frames when the CPU is busy
    assert s["landmarkFrames"] == summary["frames"]  # live results or `skipped`, one per frame
    # frames live analysis skipped (a busy machine) are filled by the server after stop
    summary = wait_for_summary(base, lambda d: d["analysed_frames"] == d["frames"] and d["skipped_frames"] == 0)
    if s["skippedFrames"]:  # the page hears about the fill
        wait_until(page, f"() => window.camingest.filledFrames === {s['skippedFrames']}")
    frames = get_json(base + "/landmarks")["frames"]
    assert [f["index"] for f in frames] == list(range(summary["frames"]))
    with_face = [f for f in frames if f.get("faces")]
    assert len(with_face) == summary["frames_with_faces"] >= 0.9 * len(frames)
    assert all(len(face["points"]) == 68 for f in with_face for face in f["faces"])
    (snap,) = summary["snapshots"]
    assert snap["snapshot_id"] == s["snapshots"][0]["id"] and snap["mime"] == "image/jpeg"
    snap_faces = get_json(f"{base}/snapshots/{snap['snapshot_id']}/landmarks")["faces"]
    assert len(snap_faces) == 1 and snap_faces == s["snapshots"][0]["faces"]

    # the sessions page lists it and plays it with the overlay
    page.goto(server.url + "/sessions")
    page.locator(f"[data-session-id='{session_id}']").click()
    wait_until(page, "() => window.camingestSessions.frames > 0")
    page.evaluate("() => document.getElementById('player').play()")
    wait_until(page, "() => document.getElementById('player').currentTime > 1.0", 20_000)
    page.screenshot(path=str(ARTIFACTS / "sessions.png"))


@pytest.mark.backends  # also on PostgreSQL + SeaweedFS (README, "Testing")
def test_sessions_page_deletes_a_session(server_factory, browser, backend):
    server = server_factory()
    recording = load_recording("webcam_vp8_kf1s_250ms")

    async def make() -> list[str]:
        async with Client(server.url) as client:
            return [(await record(server.url, recording, pace=0, client=client))["session_id"] for _ in range(2)]

    keep, doomed = in_thread(make())
    page = browser.new_page(viewport={"width": 390, "height": 844})  # phone-sized
    page.goto(server.url + "/sessions")
    wait_for_selector(page, f"[data-session-id='{doomed}']")
    assert page.evaluate("() => window.camingestSessions.listed") == [doomed, keep]  # newest first
    page.locator(f"[data-session-id='{doomed}']").click()
    wait_until(page, f"() => window.camingestSessions.selected === '{doomed}'")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("delete").click()
    wait_until(page, f"() => !document.querySelector(\"[data-session-id='{doomed}']\")")
    assert page.locator("#detail").is_hidden()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "sessions-phone.png"))
    assert [s["id"] for s in get_json(server.url + "/api/sessions")["sessions"]] == [keep]
    assert not (server.data / "sessions" / doomed).exists()
    with pytest.raises(urllib.error.HTTPError) as err:
        fetch(f"{server.url}/api/sessions/{doomed}")
    assert err.value.code == 404


def test_outage_banner_resume_and_stop_during_the_outage(server_factory, browser, tmp_path):
    """Kill the server mid-recording (on a phone-sized screen): the connection says reconnecting,
    a banner counts the chunks waiting; Stop pressed during the outage waits, and once the server
    is back every chunk is delivered and the session ends; the recording decodes to what was sent."""
    port = free_port()
    data = tmp_path / "data"
    server = server_factory(data=data, port=port)
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(server.url + "/")
    wait_for_selector(page, "[data-testid=connection][data-state=connected]")
    page.get_by_test_id("record").click()
    wait_until(page, "() => window.camingest.ackedChunks >= 8")
    server.kill()  # mid-recording: the page keeps recording into its send queue
    wait_for_selector(page, "[data-testid=connection][data-state=reconnecting]")
    banner = page.get_by_test_id("banner")
    wait_for_selector(page, "[data-testid=banner]")
    wait_until(page, "() => window.camingest.pendingChunks >= 4")
    text, pending = page.evaluate("() => [document.getElementById('banner-text').textContent, window.camingest.pendingChunks]")
    assert text.startswith(f"Connection to the server lost: {pending} chunks waiting to be sent.")
    wait_until(page, f"() => window.camingest.pendingChunks > {pending}")  # it grows while recording
    assert banner.is_visible() and banner.bounding_box()["y"] < 200  # at the top, on a phone too
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "recorder-outage-phone.png"))
    assert page.get_by_test_id("record").is_disabled()
    page.get_by_test_id("stop").click()  # during the outage
    wait_until(page, "() => window.camingest.state === 'waiting'")
    assert "Stop will finish when the server is back" in banner.inner_text()
    server = server_factory(data=data, port=port)
    wait_for_selector(page, "[data-testid=connection][data-state=connected]", 30_000)
    wait_until(page, "() => window.camingest.state === 'stopped'")
    assert banner.is_hidden()
    s = state(page)
    assert s["pendingChunks"] == 0
    summary = get_json(f"{server.url}/api/sessions/{s['sessionId']}")
    assert summary["state"] == "stopped" and summary["ended_by"] == "client"
    assert summary["chunks"] == s["chunksRecorded"] == s["ackedChunks"]
    raw = tmp_path / "raw.webm"
    raw.write_bytes(fetch(f"{server.url}/api/sessions/{s['sessionId']}/raw.webm"))
    assert ffprobe_frames(raw) == summary["frames"] > 30  # the fake camera drops frames under load


def test_sessions_page_uploads_a_video(server_factory, browser, clip, tmp_path):
    server = server_factory()
    page = browser.new_page(viewport={"width": 390, "height": 844})  # phone-sized
    page.goto(server.url + "/sessions")
    page.get_by_test_id("upload-file").set_input_files(str(clip))
    page.get_by_test_id("upload").click()
    wait_until(page, "() => window.camingestSessions.upload.state === 'done'")
    upload = page.evaluate("() => window.camingestSessions.upload")
    base = f"{server.url}/api/sessions/{upload['sessionId']}"
    summary = wait_for_summary(base, lambda d: "fill" not in d and d["analysed_frames"] == d["frames"])
    assert summary["frames"] == ffprobe_frames(clip) and summary["skipped_frames"] == 0
    assert get_json(base)["state"] == "stopped"
    # the page follows the fill and then shows the session's landmarks
    wait_until(page, f"() => window.camingestSessions.frames === {summary['frames']}")
    card = page.locator(f"[data-session-id='{upload['sessionId']}']")
    assert f"{summary['frames']} frames · faces in {summary['frames_with_faces']}" in card.inner_text()
    page.screenshot(path=str(ARTIFACTS / "sessions-upload.png"), full_page=True)

    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video\n")
    page.get_by_test_id("upload-file").set_input_files(str(notes))
    page.get_by_test_id("upload").click()
    wait_until(page, "() => window.camingestSessions.upload.state === 'failed'")
    assert page.locator("#upload-status").inner_text() == (
        "Upload failed: notes.mp4 is not a video camingest can read (WebM, MP4, MOV, MKV)"
    )
    assert [s["id"] for s in get_json(server.url + "/api/sessions")["sessions"]] == [upload["sessionId"]]


def test_pages_record_and_play_with_a_token_over_https(server_factory, face_camera, tmp_path):
    """Running it for others: https with a certificate made here, an access token; the page
    opened once with ?token= records (Socket.IO carries the cookie) and the sessions page plays."""
    from tests.test_access import make_certificate

    token = "page-token-0123456789"
    cert, key = make_certificate(tmp_path)
    server = server_factory("--token", token, "--tls-cert", cert, "--tls-key", key)
    assert server.url.startswith("https://")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=[*chromium_args(face_camera), "--ignore-certificate-errors"])  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            assert page.goto(server.url + "/sessions").status == 401  # no token, no page
            page.goto(f"{server.url}/?token={token}")
            assert page.url == server.url + "/"  # the token left the address bar for a cookie
            wait_for_selector(page, "[data-testid=connection][data-state=connected]")
            page.get_by_test_id("record").click()
            wait_until(page, "() => window.camingest.ackedChunks >= 8 && window.camingest.landmarkFrames > 20")
            page.get_by_test_id("stop").click()
            wait_until(page, "() => window.camingest.state === 'stopped'")
            session_id = state(page)["sessionId"]
            page.goto(server.url + "/sessions")
            page.locator(f"[data-session-id='{session_id}']").click()
            wait_until(page, "() => window.camingestSessions.frames > 0")
            page.evaluate("() => document.getElementById('player').play()")
            wait_until(page, "() => document.getElementById('player').currentTime > 1.0", 20_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "sessions-https-token.png"))
        finally:
            browser.close()


def test_the_player_keeps_playing_when_the_open_session_is_filled(server_factory, browser, tmp_path):
    """The page opens the selected session again once its landmarks are filled (to draw them);
    the video being watched must go on from where it was, not restart paused at 0 (CI saw the
    player stuck at 0 s: a session's fill ended while it played)."""
    import subprocess

    source, long = tmp_path / "in.webm", tmp_path / "long.webm"
    source.write_bytes(load_recording("webcam_vp8_kf1s_250ms").stream)
    subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", "15", "-i", str(source), "-an", "-c", "copy", str(long)],
                   check=True)  # 16 x 179 frames: its fill lasts seconds  # fmt: skip
    server = server_factory()
    request = urllib.request.Request(f"{server.url}/api/sessions?filename=long.webm", data=long.read_bytes(), method="POST")
    with urllib.request.urlopen(request) as response:
        session_id = json.loads(response.read())["id"]
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{server.url}/sessions?id={session_id}")
    wait_until(page, f"() => window.camingestSessions.selected === '{session_id}' && window.camingestSessions.fill !== null")
    opened = page.evaluate("() => window.camingestSessions.opened")
    page.evaluate("() => { const p = document.getElementById('player'); p.muted = true; return p.play(); }")
    wait_until(page, f"() => window.camingestSessions.opened > {opened} && window.camingestSessions.fill === null", 240_000)
    player = page.evaluate("() => { const p = document.getElementById('player'); return {paused: p.paused, t: p.currentTime}; }")
    assert player["paused"] is False, player
    wait_until(page, f"() => document.getElementById('player').currentTime > {player['t']}")  # still moving on


def test_the_recorder_page_says_when_object_storage_is_behind(browser, postgres, s3, tmp_path):
    """SeaweedFS stopped while the page records: acks go on, durable_seq stalls, and the page says
    that the server's storage is behind and how much it keeps to resend; with storage back the
    warning goes and the session ends with every chunk durable."""
    import re

    from tests.test_object_store import engine_server

    server = engine_server(tmp_path, postgres, s3, "--no-analysis")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(server.url + "/")
        wait_for_selector(page, "[data-testid=connection][data-state=connected]")
        page.get_by_test_id("record").click()
        wait_until(page, "() => window.camingest.ackedChunks >= 4 && window.camingest.durableSeq >= 0")
        assert state(page)["storage"] == "ok" and page.get_by_test_id("storage").is_hidden()
        s3.stop()
        acked = state(page)["ackedChunks"]
        wait_until(page, "() => window.camingest.storage === 'behind'", 90_000)
        s = state(page)
        assert s["ackedChunks"] > acked and s["unreplicatedChunks"] > 0 and s["unreplicatedDropped"] == 0, s
        text = page.get_by_test_id("storage").inner_text()
        assert re.fullmatch(r"The server's storage is behind: the last \d+\.\d s \(\d+ chunks\) are on the server's disk "
                            r"and kept in this page until storage has them\. ?", text), text  # fmt: skip
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "recorder-storage-behind.png"))
        s3.start()
        wait_until(page, "() => window.camingest.storage === 'ok'", 90_000)
        assert page.get_by_test_id("storage").is_hidden()
        page.get_by_test_id("stop").click()
        wait_until(page, "() => window.camingest.state === 'stopped'")
        s = state(page)
        summary = get_json(f"{server.url}/api/sessions/{s['sessionId']}")
        assert summary["chunks"] == s["ackedChunks"] and summary["durable_seq"] == summary["chunks"] - 1, summary
    finally:
        server.stop()


def test_sessions_page_on_a_phone(server_factory, browser, clip):
    """390x844: tapping a card brings its detail into view and puts ?id= in the address (back and
    forward work); the id is shown; imports show their file name; downloads carry the id; with
    the server gone a tap says so."""
    server = server_factory("--no-analysis")
    recording = load_recording("webcam_vp8_kf1s_250ms")

    recorded = in_thread(record(server.url, recording, pace=0))["session_id"]
    request = urllib.request.Request(f"{server.url}/api/sessions?filename=holiday.mp4", data=clip.read_bytes(), method="POST")
    with urllib.request.urlopen(request) as response:
        imported = json.loads(response.read())["id"]
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(server.url + "/sessions")
    card = page.locator(f"[data-session-id='{imported}']")
    assert "holiday.mp4" in card.inner_text()
    page.locator(f"[data-session-id='{recorded}']").click()
    wait_until(page, f"() => window.camingestSessions.selected === '{recorded}' && window.camingestSessions.frames >= 0")
    wait_until(page, f"() => location.search === '?id={recorded}'")
    detail = page.locator("#detail")
    wait_until(page, "() => { const r = document.getElementById('detail').getBoundingClientRect(); "
               "return r.top >= -1 && r.top < window.innerHeight / 2; }")  # fmt: skip
    assert page.get_by_test_id("session-id").inner_text() == recorded
    names = page.locator("#downloads a[download]").evaluate_all("links => links.map(a => a.download)")
    assert names == [f"{recorded}.webm", f"{recorded}-raw.webm", f"{recorded}-landmarks.json"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "sessions-phone.png"))
    page.locator(f"[data-session-id='{imported}']").click()
    wait_until(page, f"() => location.search === '?id={imported}'")
    page.go_back()
    wait_until(page, f"() => window.camingestSessions.selected === '{recorded}'")
    page.go_back()
    wait_until(page, "() => window.camingestSessions.selected === null")
    assert detail.is_hidden()
    server.stop()  # the server goes away: a tap says so instead of nothing
    page.locator(f"[data-session-id='{recorded}']").click()
    wait_until(page, "() => document.getElementById('message').textContent.startsWith('The server cannot be reached')")


@pytest.mark.backends  # also on PostgreSQL + SeaweedFS (README, "Testing")
def test_sessions_page_exports_with_an_overlay(server_factory, browser, tmp_path, backend):
    """Export from the page: overlay and format chosen, progress shown, the file downloaded with
    the session id in its name, and it decodes to the recording's frames. The route's refusals
    are the contract's codes with messages that name the bad value."""
    server = server_factory()
    recording = load_recording("webcam_vp8_kf1s_250ms")

    async def make() -> tuple[str, str]:
        async with Client(server.url) as client:
            done = await record(server.url, recording, pace=0, client=client)
            open_session = await record(server.url, recording, pace=0, client=client, last=2, stop=False)
            return done["session_id"], open_session["session_id"]

    recorded, still_recording = in_thread(make())
    wait_for_summary(f"{server.url}/api/sessions/{recorded}", lambda s: "fill" not in s and s["finalized"])

    def post(session_id: str, body: bytes) -> tuple[int, dict]:
        request = urllib.request.Request(f"{server.url}/api/sessions/{session_id}/exports", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert post(recorded, b'{"overlay": "boxes"}') == (
        400, {"error": {"code": "bad_request", "message": "overlay 'boxes' is not one of landmarks, lips, none"}})
    assert post(recorded, b'{"format": "avi"}') == (
        400, {"error": {"code": "bad_request", "message": "format 'avi' is not one of mp4, webm"}})
    assert post(still_recording, b"{}") == (
        409, {"error": {"code": "session_closed", "message": "the session is still recording: stop it, then export"}})
    assert post("0" * 32, b"{}")[0] == 404
    with pytest.raises(urllib.error.HTTPError) as missing:
        fetch(f"{server.url}/api/sessions/{recorded}/exports/lips.webm")
    assert missing.value.code == 404

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{server.url}/sessions?id={recorded}")
    wait_until(page, f"() => window.camingestSessions.selected === '{recorded}'")
    page.get_by_test_id("export-overlay").select_option("lips")
    page.get_by_test_id("export-format").select_option("webm")
    page.get_by_test_id("export").click()
    wait_until(page, "() => window.camingestSessions.export.state === 'running'")
    wait_until(page, "() => window.camingestSessions.export.state === 'done'", 120_000)
    link = page.get_by_test_id("export-download")
    with page.expect_download() as download_info:
        link.click()
    download = download_info.value
    assert download.suggested_filename == f"{recorded}-lips.webm"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert ffprobe_frames(saved) == recording.expected["video_frames"]
    listed = get_json(f"{server.url}/api/sessions/{recorded}/exports")["exports"]
    assert listed == [{"overlay": "lips", "format": "webm", "state": "done", "bytes": saved.stat().st_size,
                       "url": f"/api/sessions/{recorded}/exports/lips.webm"}]  # fmt: skip


def test_gallery_on_the_pages_names_faces(server_factory, browser, tmp_path):
    """Enrol from the sessions page with a photo; the recorder page then names the face live
    (screenshot), and the session's detail lists who appears and when; remove from the page."""
    server = server_factory()
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server.url + "/sessions")
    page.get_by_test_id("enrol-name").fill("Barack Obama")
    page.get_by_test_id("enrol-file").set_input_files(str(IMAGES / "obama.jpg"))
    page.get_by_test_id("enrol").click()
    wait_until(page, "() => (window.camingestSessions.people || []).includes('Barack Obama')")
    assert page.get_by_test_id("enrol-status").inner_text().startswith("Enrolled Barack Obama (1 photo).")
    page.get_by_test_id("enrol-name").fill("Nobody")
    page.get_by_test_id("enrol-file").set_input_files(str(Path(__file__)))
    page.get_by_test_id("enrol").click()
    wait_until(page, "() => document.querySelector('[data-testid=enrol-status]').dataset.kind === 'error'")
    assert page.get_by_test_id("enrol-status").inner_text() == (
        "Not enrolled: test_pages.py is not a photo; send a JPEG, PNG or WebP image of the person's face")

    recorder = browser.new_page(viewport={"width": 1280, "height": 800})
    recorder.goto(server.url + "/")
    wait_for_selector(recorder, "[data-testid=connection][data-state=connected]")
    recorder.get_by_test_id("record").click()
    wait_until(recorder, "() => window.camingest.analysedFrames > 45")
    ARTIFACTS.mkdir(exist_ok=True)
    recorder.screenshot(path=str(ARTIFACTS / "recorder-names.png"))
    recorder.get_by_test_id("stop").click()
    wait_until(recorder, "() => window.camingest.state === 'stopped'")
    session_id = recorder.evaluate("() => window.camingest.sessionId")
    summary = wait_for_summary(f"{server.url}/api/sessions/{session_id}", lambda s: "fill" not in s and s["finalized"])
    frames = get_json(f"{server.url}/api/sessions/{session_id}/landmarks")["frames"]
    named = [f for f in frames if any((face.get("identity") or {}).get("name") == "Barack Obama" for face in f["faces"])]
    assert len(named) >= 0.9 * summary["frames_with_faces"] > 0

    page.goto(f"{server.url}/sessions?id={session_id}")
    wait_until(page, f"() => window.camingestSessions.selected === '{session_id}' && window.camingestSessions.appearances")
    (who,) = [p for p in page.evaluate("() => window.camingestSessions.appearances") if p["name"] == "Barack Obama"]
    assert who["frames"] == len(named) and who["first_ms"] == named[0]["pts_ms"] and who["last_ms"] == named[-1]["pts_ms"]
    assert page.get_by_test_id("appearances").inner_text().startswith("Barack Obama: ")
    page.screenshot(path=str(ARTIFACTS / "sessions-names.png"))
    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("remove-person").click()
    wait_until(page, "() => window.camingestSessions.people.length === 0")
    assert get_json(f"{server.url}/api/gallery") == {"people": []}
