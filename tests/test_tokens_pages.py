"""The pages with signed tokens (issue 24), in headless Chromium: the recorder page opened with a
recorder's token records and gets only its own landmarks while another recorder records beside
it; the sessions page opened with a viewer's token lists and plays but offers no Delete."""

from __future__ import annotations

import pytest

from tests.client import Client, record, wait_for_frames
from tests.conftest import ARTIFACTS, CHROMIUM, load_recording
from tests.pages import in_thread, state, wait_for_selector, wait_until
from tests.tokens import ADMIN, KEYS, call, keyfile, mint

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
RECORDING = load_recording("webcam_vp8_kf1s_250ms")

# every `landmarks` event the page's Socket.IO connection receives, whichever session it names
# (the page's client module gets its `io` from the vendor script: wrapped as it is defined)
SPY = """(() => {
  let real;
  window.landmarkSessions = [];
  Object.defineProperty(window, "io", { configurable: true, get() { return real && ((...args) => {
    const socket = real(...args);
    socket.onAny((event, message) => { if (event === "landmarks") window.landmarkSessions.push(message.session_id); });
    return socket;
  }); }, set(value) { real = value; } });
})();"""


def test_the_recorder_page_with_a_recorder_token_gets_only_its_landmarks(server_factory, browser, tmp_path):
    server = server_factory("--token", ADMIN, "--secret-file", str(keyfile(tmp_path, **KEYS)))
    page_token = mint(KEYS["k1"], "k1", sub="page-person")
    other_token = mint(KEYS["k2"], "k2", sub="someone-else")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.add_init_script(SPY)
    page.goto(f"{server.url}/?token={page_token}")
    assert page.url == server.url + "/"  # the token left the address for a cookie of its own
    cookie = next(c for c in page.context.cookies() if c["name"] == "camingest_token")
    assert page_token not in cookie["value"] and cookie["httpOnly"] and cookie["expires"] > 0
    wait_for_selector(page, "[data-testid=connection][data-state=connected]")
    page.get_by_test_id("record").click()
    wait_until(page, "() => window.camingest.ackedChunks >= 4 && window.camingest.landmarkFrames > 10")

    async def beside() -> str:  # another recorder records while the page does, and gets its landmarks
        async with Client(server.url, token=other_token) as other:
            session = await record(server.url, RECORDING, 0.05, client=other)
            await wait_for_frames(other, RECORDING.expected["video_frames"])
            return session["session_id"]

    other_id = in_thread(beside())
    wait_until(page, "() => window.camingest.ackedChunks >= 12")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "recorder-recorder-token.png"))
    page.get_by_test_id("stop").click()
    wait_until(page, "() => window.camingest.state === 'stopped'")
    own = state(page)["sessionId"]
    seen = page.evaluate("() => window.landmarkSessions")
    # the other session's landmarks were all sent (its client has them) before this was read
    assert seen and set(seen) == {own} and other_id != own
    status, summary = in_thread(call("GET", f"{server.url}/api/sessions/{own}", ADMIN))
    assert status == 200 and summary["sub"] == "page-person" and summary["chunks"] >= 12


def test_the_sessions_page_with_a_viewer_token_offers_no_delete(server_factory, browser, tmp_path):
    server = server_factory("--no-analysis", "--token", ADMIN, "--secret-file", str(keyfile(tmp_path, **KEYS)))
    recorder = mint(KEYS["k1"], "k1", sub="participant-7")
    viewer = mint(KEYS["k1"], "k1", role="viewer", sub="reviewer")

    async def recorded() -> str:
        async with Client(server.url, token=recorder) as client:
            return (await record(server.url, RECORDING, 0, client=client))["session_id"]

    session_id = in_thread(recorded())
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{server.url}/sessions?token={viewer}")
    wait_until(page, f"() => window.camingestSessions.listed.includes('{session_id}')")
    card = page.locator(f"[data-session-id='{session_id}']")
    assert card.get_by_test_id("session-sub").inner_text() == " · by participant-7"
    card.click()
    wait_until(page, f"() => window.camingestSessions.selected === '{session_id}'")
    assert page.evaluate("() => window.camingestSessions.role") == "viewer"
    # what a viewer may not do is not offered: no Delete, no upload, no enrolment
    for testid in ("delete", "upload", "enrol-form", "remove-person"):
        assert page.get_by_test_id(testid).count() == 0, testid
    assert page.get_by_test_id("export-form").is_visible()  # a viewer may export
    assert "recorded by participant-7" in page.locator("#facts").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "sessions-viewer-token.png"))
    # the same page as admin offers Delete
    admin_page = browser.new_page(viewport={"width": 1280, "height": 800})
    admin_page.goto(f"{server.url}/sessions?token={ADMIN}&id={session_id}")
    wait_until(admin_page, f"() => window.camingestSessions.selected === '{session_id}'")
    assert admin_page.get_by_test_id("delete").is_visible()
