"""The sessions page as a new user found it (issue 18, items 5, 6, 7, 9): pictures instead of
identical text cards, who appears, failed sessions that say why, a timeline to click on, photos
of the people, pages and filters for thousands of sessions (on the route and the page), the
enrolment warning where the user acted, deletions confirmed in sight, an honest export bar."""

from __future__ import annotations

import json
import random
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.client import Client, run
from tests.conftest import ARTIFACTS, CHROMIUM, IMAGES, ServerProcess, load_recording
from tests.pages import fetch, get_json, wait_for_summary, wait_until

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")

RECORDING = load_recording("webcam_vp8_kf1s_250ms")
MP4_REASON = "this is an MP4/QuickTime stream (ftyp); only WebM/Matroska is supported"
NO_SKIP = {"CAMINGEST_LIVE_QUEUE_UNITS": "100000"}


def in_thread(coro):
    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's event loop
        return pool.submit(run, coro).result()


def enrol(url: str, name: str, photo: Path, confirm: bool = False) -> tuple[int, dict]:
    boundary = "----camingest-test"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n'.encode()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{photo.name}"\r\n'
                 "Content-Type: image/jpeg\r\n\r\n".encode() + photo.read_bytes() + b"\r\n")  # fmt: skip
    if confirm:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="confirm"\r\n\r\n1\r\n'.encode())
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "/api/gallery", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get_error(url: str) -> tuple[int, dict]:
    try:
        return 200, get_json(url)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def mp4_prefix(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("mp4")
    source, mp4 = folder / "in.webm", folder / "clip.mp4"
    source.write_bytes(RECORDING.stream)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(source), "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    str(mp4)], check=True)  # fmt: skip
    return mp4.read_bytes()[:60_000]


@pytest.fixture(scope="module")
def named_sessions(tmp_path_factory, mp4_prefix):
    """A server with analysis and Barack Obama enrolled; two identical recordings of him (one
    with a snapshot and a label), and a session that failed (an MP4 sent as chunks)."""
    data = tmp_path_factory.mktemp("named") / "data"
    server = ServerProcess(data, "--workers", "2", env=NO_SKIP).start()
    try:
        status, _ = enrol(server.url, "Barack Obama", IMAGES / "obama.jpg")
        assert status == 201

        async def record() -> tuple[str, str, str]:
            async with Client(server.url) as client:
                ids = []
                for meta in ({"label": "kitchen test"}, {}):
                    session = await client.start(RECORDING.meta["mime"], meta=meta)
                    await client.send_all(session, RECORDING.chunks)
                    if meta:
                        ack = await client.call("snapshot", {"session_id": session["session_id"], "token": session["token"],
                                                             "mime": "image/png", "data": RECORDING.snapshots[0].read_bytes()})  # fmt: skip
                        assert ack["ok"], ack
                    await client.stop(session)
                    ids.append(session["session_id"])
                bad = await client.start("video/webm;codecs=vp8")
                assert (await client.chunk(bad, 0, mp4_prefix))["error"]["code"] == "unsupported"
                await client.stop(bad)
            return ids[0], ids[1], bad["session_id"]

        labelled, plain, failed = in_thread(record())
        for session_id in (labelled, plain):
            wait_for_summary(f"{server.url}/api/sessions/{session_id}",
                             lambda s: s["analysed_frames"] == s["frames"] and s["finalized"] and "fill" not in s)  # fmt: skip
        yield server, labelled, plain, failed
    finally:
        server.stop()


def test_cards_have_a_picture_an_id_who_appears_and_failed_ones_say_why(named_sessions, browser):
    server, labelled, plain, failed = named_sessions
    # the thumbnail is a frame with a face, made by the server
    thumb = fetch(f"{server.url}/api/sessions/{plain}/thumbnail.jpg")
    picture = cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert picture.shape[1] == 320
    from ingest.analysis.detect import detect_faces

    assert len(detect_faces(picture, 1)) == 1
    assert fetch(f"{server.url}/api/sessions/{plain}/thumbnail.jpg") == thumb  # stored: the same bytes
    status, body = get_error(f"{server.url}/api/sessions/{failed}/thumbnail.jpg")
    assert (status, body["error"]["message"]) == (404, f"session {failed} has no frames to show: it failed while "
                                                  f"recording ({MP4_REASON})")  # fmt: skip
    listed = get_json(server.url + "/api/sessions")
    assert [s["id"] for s in listed["sessions"]] == [failed, plain, labelled] and listed["next_cursor"] is None
    assert [s["people"] for s in listed["sessions"]] == [[], ["Barack Obama"], ["Barack Obama"]]

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 and "thumbnail" not in r.url else None)
    page.goto(server.url + "/sessions")
    page.wait_for_selector(f"[data-session-id='{labelled}'] img")
    wait_until(page, "() => [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth === 320)")
    plain_card, labelled_card = (page.locator(f"[data-session-id='{i}']") for i in (plain, labelled))
    assert plain in plain_card.inner_text() and "Barack Obama" in plain_card.inner_text()
    assert "kitchen test" in labelled_card.inner_text() and labelled in labelled_card.inner_text()
    failed_card = page.locator(f"[data-session-id='{failed}']")
    assert failed_card.get_attribute("data-state") == "failed"
    assert failed_card.locator(".thumb").inner_text() == "failed"
    assert failed_card.get_by_test_id("failed-why").inner_text() == f"Failed: {MP4_REASON}"
    # the People list shows each person's photo
    wait_until(page, "() => [...document.querySelectorAll('#people img.face')].some(i => i.complete && i.naturalWidth > 0)")
    assert fetch(f"{server.url}/api/gallery/{urllib.parse.quote('Barack Obama')}/photo") == (IMAGES / "obama.jpg").read_bytes()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "sessions-cards.png"))

    # a failed session's detail says why instead of an empty player
    failed_card.click()
    wait_until(page, f"() => window.camingestSessions.selected === '{failed}'")
    reason = page.get_by_test_id("failed-reason")
    assert reason.is_visible() and page.locator("#frame").is_hidden()
    assert reason.inner_text() == (f"This session failed while recording: {MP4_REASON}. It has no frames: there is "
                                   "nothing to play or export.")  # fmt: skip
    assert errors == [], errors  # no 404 on the way (the favicon included)


def test_the_timeline_shows_faces_and_who_and_seeks_where_clicked(named_sessions, browser):
    server, _, plain, _ = named_sessions
    summary = get_json(f"{server.url}/api/sessions/{plain}")
    frames = get_json(f"{server.url}/api/sessions/{plain}/landmarks")["frames"]
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{server.url}/sessions?id={plain}")
    wait_until(page, f"() => window.camingestSessions.selected === '{plain}' && window.camingestSessions.timeline")
    drawn = page.evaluate("() => window.camingestSessions.timeline")
    assert drawn["withFaces"] == summary["frames_with_faces"] and drawn["missing"] == 0
    assert page.get_by_test_id("timeline-legend").inner_text().startswith("Barack Obama")
    # the colour under the face band is the person's (the legend's first colour)
    colour = page.evaluate("""() => { const c = document.getElementById('timeline');
      const [r, g, b] = c.getContext('2d').getImageData(Math.floor(c.width / 2), 2, 1, 1).data; return [r, g, b]; }""")
    assert colour == [0x3D, 0xDC, 0x97]
    page.wait_for_function("() => document.getElementById('player').readyState >= 1")
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    fraction = random.Random(seed).uniform(0.2, 0.8)
    box = page.get_by_test_id("timeline").bounding_box()
    page.mouse.click(box["x"] + fraction * box["width"], box["y"] + box["height"] / 2)
    wait_until(page, "() => window.camingestSessions.seekedTo !== undefined")
    index = page.evaluate("() => window.camingestSessions.seekedTo")
    expected = min(len(frames) - 1, int(fraction * summary["frames"]))
    assert abs(index - expected) <= 1, (index, expected)
    wait_until(page, f"() => Math.abs(document.getElementById('player').currentTime * 1000 - {frames[index]['pts_ms']}) < 1")
    page.screenshot(path=str(ARTIFACTS / "sessions-timeline.png"))


def test_enrolling_a_snapshot_face_warns_where_the_user_acted(named_sessions, browser):
    """The snapshot's face is Barack Obama's: enrolling it as "Snapshot Person" is not done
    silently; the warning and the choice appear in the snapshot's own caption, in view."""
    server, labelled, _, _ = named_sessions
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{server.url}/sessions?id={labelled}")
    name = page.get_by_test_id("snapshot-enrol-name")
    name.wait_for()
    name.scroll_into_view_if_needed()
    name.fill("Snapshot Person")
    page.get_by_test_id("enrol-snapshot").click()
    status = page.get_by_test_id("snapshot-enrol-status")
    wait_until(page, "() => document.querySelector('[data-testid=snapshot-enrol-status]').dataset.kind === 'warn'")
    text = status.inner_text()
    assert text.startswith("Not enrolled yet: this face looks like Barack Obama (distance ")
    assert "enrolled as Snapshot Person it would be named either; add it to Barack Obama." in text
    box = status.bounding_box()
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 800.5  # where the user looks
    page.screenshot(path=str(ARTIFACTS / "sessions-enrol-warning.png"))
    assert [p["name"] for p in get_json(server.url + "/api/gallery")["people"]] == ["Barack Obama"]
    page.get_by_test_id("enrol-as-match").click()
    wait_until(page, "() => document.querySelector('[data-testid=snapshot-enrol-status]').dataset.kind === 'ok'")
    assert status.inner_text().startswith("Enrolled Barack Obama (2 photos).")
    assert get_json(server.url + "/api/gallery")["people"][0]["images"] == 2


@pytest.fixture
def many_sessions(server_factory, mp4_prefix):
    """35 short sessions (more than a page of cards) with metadata, one failed, no analysis."""
    server = server_factory("--no-analysis")
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    apps = [random.Random(seed + i).choice(["alpha", "beta"]) for i in range(34)]

    async def make() -> tuple[list[str], str]:
        ids = []
        async with Client(server.url) as client:
            for app in apps:
                session = await client.start(RECORDING.meta["mime"], meta={"app": app})
                await client.send_all(session, RECORDING.chunks[:2])
                await client.stop(session)
                ids.append(session["session_id"])
            bad = await client.start("video/webm;codecs=vp8")
            await client.chunk(bad, 0, mp4_prefix)
            await client.stop(bad)
        return ids, bad["session_id"]

    ids, failed = in_thread(make())
    return server, ids, apps, failed


def test_sessions_route_pages_with_a_cursor_and_filters(many_sessions):
    server, ids, apps, failed = many_sessions
    newest_first = [failed, *reversed(ids)]
    everything = get_json(server.url + "/api/sessions")
    assert [s["id"] for s in everything["sessions"]] == newest_first and everything["next_cursor"] is None
    seen, cursor = [], None
    while True:
        query = "limit=8" + (f"&cursor={cursor}" if cursor else "")
        page = get_json(f"{server.url}/api/sessions?{query}")
        assert len(page["sessions"]) <= 8
        seen += [s["id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == newest_first
    failed_only = get_json(server.url + "/api/sessions?state=failed")["sessions"]
    assert [s["id"] for s in failed_only] == [failed] and failed_only[0]["error"] == MP4_REASON
    alpha = get_json(server.url + "/api/sessions?meta=app=alpha")["sessions"]
    assert [s["id"] for s in alpha] == [i for i, app in zip(reversed(ids), reversed(apps), strict=True) if app == "alpha"]
    created = [s["created_at"] for s in everything["sessions"]]
    middle = created[len(created) // 2]
    since = get_json(f"{server.url}/api/sessions?since={urllib.parse.quote(middle)}")["sessions"]
    assert [s["id"] for s in since] == [s["id"] for s in everything["sessions"] if s["created_at"] >= middle]
    until = get_json(f"{server.url}/api/sessions?until={urllib.parse.quote(middle)}")["sessions"]
    assert [s["id"] for s in until] == [s["id"] for s in everything["sessions"] if s["created_at"] < middle]
    today = created[0][:10]
    assert len(get_json(f"{server.url}/api/sessions?since={today}&until={today}")["sessions"]) == len(newest_first)
    assert get_json(server.url + "/api/sessions?person=Nobody")["sessions"] == []
    refusals = {
        "state=paused": "state='paused' is not one of recording, stopped, failed",
        "limit=0": "limit='0': allowed 1-500 (max_sessions_page)",
        "since=yesterday": "since='yesterday' is not a date (2026-12-01) or a time (2026-12-01T14:30:00Z)",
        "meta=app": "meta='app': give it as key=value (e.g. meta=app=my-app)",
        "meta=a.b=1": "meta key 'a.b': letters, digits, _ and - only (1-64)",
        "cursor=abc": "cursor is not one this server gave (use next_cursor of the previous page)",
    }
    for query, message in refusals.items():
        assert get_error(f"{server.url}/api/sessions?{query}") == (
            400, {"error": {"code": "bad_request", "message": message}}), query


def test_the_page_loads_a_page_at_a_time_filters_and_confirms_a_deletion(many_sessions, browser):
    server, ids, apps, failed = many_sessions
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server.url + "/sessions")
    wait_until(page, "() => window.camingestSessions.listed.length === 30")
    more = page.get_by_test_id("more")
    assert more.is_visible()
    more.click()
    wait_until(page, f"() => window.camingestSessions.listed.length === {len(ids) + 1}")
    assert page.evaluate("() => window.camingestSessions.listed") == [failed, *reversed(ids)]
    assert more.is_hidden()
    page.get_by_test_id("filter-state").select_option("failed")
    page.get_by_test_id("filter-apply").click()
    wait_until(page, f"() => window.camingestSessions.listed.join() === '{failed}'")
    page.get_by_test_id("filter-state").select_option("")
    page.get_by_test_id("filter-meta").fill("app=beta")
    page.get_by_test_id("filter-apply").click()
    beta = [i for i, app in zip(reversed(ids), reversed(apps), strict=True) if app == "beta"]
    wait_until(page, f"() => window.camingestSessions.listed.join() === '{','.join(beta)}'")
    page.screenshot(path=str(ARTIFACTS / "sessions-filtered.png"))
    # delete one: the page says so where the user is looking
    doomed = beta[0]
    page.locator(f"[data-session-id='{doomed}']").click()
    wait_until(page, f"() => window.camingestSessions.selected === '{doomed}'")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("delete").click()
    wait_until(page, f"() => window.camingestSessions.deleted === '{doomed}'")
    toast = page.get_by_test_id("toast")
    assert toast.is_visible() and toast.inner_text().startswith("Deleted the session of ")
    assert toast.inner_text().endswith(f" ({doomed}) and its files.")
    box = toast.bounding_box()
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 800.5
    page.screenshot(path=str(ARTIFACTS / "sessions-deleted.png"))
    wait_until(page, f"() => !window.camingestSessions.listed.includes('{doomed}')")


def test_the_export_bar_and_its_text_agree(server_factory, browser):
    server = server_factory("--no-analysis")

    async def record() -> str:
        async with Client(server.url) as client:
            session = await client.start(RECORDING.meta["mime"])
            await client.send_all(session, RECORDING.chunks)
            await client.stop(session)
            return session["session_id"]

    session_id = in_thread(record())
    wait_for_summary(f"{server.url}/api/sessions/{session_id}", lambda s: s["finalized"])
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{server.url}/sessions?id={session_id}")
    wait_until(page, f"() => window.camingestSessions.selected === '{session_id}'")
    page.evaluate("""() => { window.exportSeen = []; const status = document.getElementById('export-status');
      new MutationObserver(() => { const bar = document.getElementById('export-progress');
        window.exportSeen.push({text: status.textContent, value: bar.value, max: bar.max, hidden: bar.hidden}); })
      .observe(status, {childList: true, characterData: true, subtree: true}); }""")
    page.get_by_test_id("export-overlay").select_option("none")
    page.get_by_test_id("export").click()
    wait_until(page, "() => window.camingestSessions.export.state === 'done'", 120_000)
    seen = page.evaluate("() => window.exportSeen")
    running = [s for s in seen if s["text"].startswith("Encoding")]
    assert running, seen
    for s in running:
        done, total = (int(n) for n in s["text"].removeprefix("Encoding ").split(" frames")[0].split(" of "))
        assert (s["value"], s["max"], s["hidden"]) == (done, total, False), s
        assert s["text"] == f"Encoding {done} of {total} frames ({100 * done // total}%)…"
    assert seen[-1]["text"].startswith("Ready: ") and seen[-1]["hidden"]


def test_no_page_asks_for_something_missing(server_factory, browser):
    """A favicon, served: no 404 on every page."""
    server = server_factory("--no-analysis")
    icon = urllib.request.urlopen(server.url + "/favicon.ico")
    assert icon.status == 200 and icon.headers["Content-Type"] == "image/svg+xml"
    for path in ("/", "/sessions"):
        page = browser.new_page()
        failures: list[str] = []
        page.on("response", lambda r, failures=failures: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.goto(server.url + path)
        page.wait_for_load_state("networkidle")
        assert failures == [], failures
        icons = page.evaluate("() => [...document.querySelectorAll('link[rel=icon]')].map(l => l.href)")
        assert icons == [server.url + "/static/favicon.svg"]
