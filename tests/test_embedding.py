"""camingest inside other apps, in headless Chromium: a page of another origin recording with the
ES module web/camingest-client.js, and the Node tutorial's own page emitting `video` blobs."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest

from tests.conftest import CHROMIUM, ffprobe_frames
from tests.pages import fetch, get_json, wait_for_summary, wait_until

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
PAGES = Path(__file__).parent / "pages"


@pytest.fixture
def other_origin(tmp_path):
    """A plain static web server for another app's pages (its own origin: another port)."""
    root = tmp_path / "app"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def check_stored(server_url: str, summary: dict, tmp_path: Path) -> None:
    """The stored stream is the bytes acknowledged, and decodes to the session's frames."""
    base = f"{server_url}/api/sessions/{summary['id']}"
    raw = tmp_path / f"{summary['id']}.webm"
    raw.write_bytes(fetch(base + "/raw.webm"))
    assert raw.stat().st_size == summary["bytes"]
    assert ffprobe_frames(raw) == summary["frames"] > 0


def test_another_apps_page_records_with_the_client_module(server_factory, browser, other_origin, tmp_path):
    root, origin = other_origin
    server = server_factory(env={"CAMINGEST_CORS_ORIGINS": origin})
    (root / "embed.html").write_text((PAGES / "embed.html").read_text().replace("SERVER", server.url))
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{origin}/embed.html")
    wait_until(page, "() => window.result && window.result.ready")
    wait_until(page, "() => window.result.acked >= 8 && window.result.facesSeen >= 10")
    page.evaluate("() => window.stopRecording()")
    wait_until(page, "() => window.result.summary !== undefined")
    result = page.evaluate("() => window.result")
    summary = result["summary"]
    assert errors == []
    assert result["states"][0] == "connected"
    assert summary["id"] == result["sessionId"] and summary["state"] == "stopped"
    assert summary["chunks"] == result["acked"] == result["recorded"] and result["pending"] == 0
    check_stored(server.url, summary, tmp_path)
    stored = wait_for_summary(f"{server.url}/api/sessions/{summary['id']}",
                              lambda s: "fill" not in s and s["analysed_frames"] == s["frames"])  # fmt: skip
    assert stored["meta"]["app"] == "embed-test"
    # the live landmarks the page received are the stored ones, frame for frame
    frames = get_json(f"{server.url}/api/sessions/{summary['id']}/landmarks")["frames"]
    assert len(frames) == summary["frames"]
    wait_until(page, f"() => window.result.landmarkFrames === {summary['frames']}")  # the last ones follow stop


def test_the_node_tutorials_page_works_unchanged(server_factory, browser, tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "tutorial.html").write_text((PAGES / "tutorial.html").read_text())
    server = server_factory("--pages", str(pages))
    page = browser.new_page()
    page.goto(f"{server.url}/pages/tutorial.html")
    # (on a busy machine the page's first blob can be the header's first byte: classic.py holds it)
    wait_until(page, "() => window.sent >= 8 && window.facesSeen >= 10")
    page.evaluate("() => window.stopRecording()")
    wait_until(page, "() => window.stopped === true")
    sent = page.evaluate("() => window.sent")
    (listed,) = get_json(f"{server.url}/api/sessions")["sessions"]
    base = f"{server.url}/api/sessions/{listed['id']}"
    wait_for_summary(base, lambda s: s["chunks"] == sent)  # emitted without acks: wait for the last
    page.close()  # the tutorial page goes away: its session ends
    summary = wait_for_summary(base, lambda s: s["state"] == "stopped" and s["finalized"] and "fill" not in s
                               and s["analysed_frames"] == s["frames"])  # fmt: skip
    assert summary["meta"]["client"] == "classic" and summary["chunks"] == sent
    check_stored(server.url, summary, tmp_path)
    frames = get_json(base + "/landmarks")["frames"]
    assert [f["index"] for f in frames] == list(range(summary["frames"]))
    assert 0 < summary["frames_with_faces"] == sum(1 for f in frames if f["faces"])
