"""The recorder page as a new user found it (issue 18, items 4 and 7): the overlay says on the
picture that analysis is starting and how far the points trail it; after Stop the notice links
to the session and does not push Record out of an 800 px window; nothing wraps mid-word."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ARTIFACTS, CHROMIUM
from tests.pages import get_json, wait_until

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")

# words of the status panel that are drawn on more than one line, and values wider than their cell
MID_WORD_WRAPS = """() => {
  const bad = [];
  for (const dd of document.querySelectorAll('.stats dd')) {
    if (dd.scrollWidth > dd.clientWidth + 1) bad.push(`overflows: ${dd.textContent}`);
    const walker = document.createTreeWalker(dd, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.data.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        if (new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size > 1) bad.push(m[0]);
      }
    }
  }
  return bad;
}"""


def test_the_overlay_says_when_it_is_starting_and_how_late_it_is(server_factory, browser):
    server = server_factory()
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server.url + "/")
    page.wait_for_selector("[data-testid=connection][data-state=connected]")
    # every state the overlay's status shows, in order (nothing is missed between two polls)
    page.evaluate("""() => { window.overlaySeen = []; const el = document.getElementById('overlay-status');
      new MutationObserver(() => { const last = window.overlaySeen[window.overlaySeen.length - 1];
        if (!el.hidden && last !== el.dataset.state) window.overlaySeen.push(el.dataset.state); })
      .observe(el, {attributes: true, childList: true, characterData: true, subtree: true}); }""")
    page.get_by_test_id("record").click()
    wait_until(page, "() => window.camingest.analysedFrames > 30 && window.camingest.ackedChunks >= 8")
    seen = page.evaluate("() => window.overlaySeen")
    assert seen[0] == "warming", seen  # before the first landmarks: said, not a silent 0
    status = page.get_by_test_id("overlay-status")
    # the lag on the picture is the page's own measure (the newest landmarks' frame vs now)
    wait_until(page, "() => ['ok', 'late'].includes(document.getElementById('overlay-status').dataset.state)")
    shown, lag, kind = page.evaluate("""() => [document.getElementById('overlay-status').textContent,
      window.camingest.lagMs, document.getElementById('overlay-status').dataset.state]""")
    assert re.fullmatch(r"Landmarks \d+\.\d s behind the picture(: points trail a moving face)?( · skipping frames to keep up)?", shown)
    assert shown.startswith(f"Landmarks {lag / 1000:.1f} s behind the picture")
    assert kind == ("late" if lag > 1000 else "ok") and (": points trail" in shown) == (lag > 1000)
    frame, badge = page.locator(".frame").bounding_box(), status.bounding_box()
    assert frame is not None and badge is not None
    assert frame["x"] <= badge["x"] and badge["y"] + badge["height"] <= frame["y"] + frame["height"]  # on the picture
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "recorder-overlay-status.png"))
    wait_until(page, "() => window.camingest.ackedChunks >= 16")
    assert page.evaluate(MID_WORD_WRAPS) == []

    page.get_by_test_id("stop").click()
    wait_until(page, "() => window.camingest.state === 'stopped'")
    assert status.is_hidden()
    session_id = page.evaluate("() => window.camingest.sessionId")
    message = page.locator("#message")
    assert message.is_visible() and message.inner_text().startswith("Saved: ")
    record = page.get_by_test_id("record").bounding_box()
    assert record is not None and record["y"] + record["height"] <= 800  # not pushed out of the window
    assert page.evaluate(MID_WORD_WRAPS) == []
    page.screenshot(path=str(ARTIFACTS / "recorder-stopped.png"))
    link = message.get_by_role("link", name="See it on the Sessions page")
    assert link.get_attribute("href") == f"/sessions?id={session_id}"
    link.click()
    page.wait_for_function(f"() => window.camingestSessions && window.camingestSessions.selected === '{session_id}'")
    assert get_json(f"{server.url}/api/sessions/{session_id}")["state"] == "stopped"


def test_the_status_panel_does_not_wrap_ids_mid_word_on_a_phone(server_factory, browser):
    server = server_factory("--no-analysis")
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(server.url + "/")
    page.wait_for_selector("[data-testid=connection][data-state=connected]")
    page.get_by_test_id("record").click()
    wait_until(page, "() => window.camingest.ackedChunks >= 4")
    assert page.evaluate(MID_WORD_WRAPS) == []
    page.get_by_test_id("stop").click()
    wait_until(page, "() => window.camingest.state === 'stopped'")
    assert page.evaluate(MID_WORD_WRAPS) == []
