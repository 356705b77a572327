"""Headers and exposure (issue 26, item 5): every answer carries security headers (a strict
Content-Security-Policy on camingest's pages, which still work under it; frame-ancestors on the
user's own pages), another site cannot frame the pages, and /pages/ serves no dotfiles and lists
no folder (nor lets a path or a symlink out of it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.client import Client, run
from tests.conftest import CHROMIUM, ServerProcess
from tests.pages import wait_until

PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
               "media-src 'self' blob:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
               "form-action 'self'; frame-ancestors 'self'")
EVERY = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "X-Frame-Options": "SAMEORIGIN"}


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    folder = root / "pages"
    (folder / "sub").mkdir(parents=True)
    (folder / ".git").mkdir()
    (folder / "index.html").write_text("<!doctype html><title>mine</title><script>window.inline = 1</script>\n")
    (folder / "frames.html").write_text("<!doctype html><title>frames</title><iframe id='same' src='/sessions'></iframe>"
                                        "<iframe id='other' src='about:blank'></iframe>\n")  # fmt: skip
    (folder / ".env").write_text("CAMINGEST_TOKEN=secret\n")
    (folder / ".git" / "config").write_text("[core]\n")
    (folder / "sub" / ".hidden").write_text("hidden\n")
    (folder / "sub" / "file.txt").write_text("visible\n")
    (root / "outside.txt").write_text("outside\n")
    os.symlink(root / "outside.txt", folder / "link.txt")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, pages) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("headers") / "data"
    server = ServerProcess(data, "--no-analysis", "--pages", str(pages)).start()
    yield server
    server.stop()


async def answer(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as http, http.request(method, url) as response:
        return response.status, dict(response.headers), await response.read()


def test_every_answer_carries_the_security_headers(server):
    async def scenario() -> None:
        async with Client(server.url) as client:
            session = await client.start()
        sid = session["session_id"]
        ours = ["/", "/sessions", "/static/recorder.js", "/static/style.css", "/favicon.ico", "/socket.io/socket.io.js",
                "/api/sessions", f"/api/sessions/{sid}", f"/api/sessions/{sid}/raw.webm", "/api/health", "/metrics",
                "/api/sessions/20990101-000000-deadbeef", "/api/nothing", "/nothing", "/socket.io/?EIO=4&transport=polling",
                "/static/missing.js"]  # fmt: skip
        for path in ours:
            status, headers, _ = await answer(server.url + path)
            for name, value in {**EVERY, "Content-Security-Policy": PAGE_POLICY}.items():
                assert headers.get(name) == value, (path, status, name, headers)
        for method, path, expected in (("DELETE", "/api/sessions/20990101-000000-deadbeef", 404),
                                       ("DELETE", f"/api/sessions/{sid}", 200), ("POST", "/api/gallery", 400)):
            status, headers, _ = await answer(server.url + path, method)
            assert status == expected and headers["X-Content-Type-Options"] == "nosniff", (method, path, status)
        # the user's own pages: their scripts are theirs; only nobody else may frame them
        for path in ("/pages/index.html", "/pages/.env", "/pages/"):
            _, headers, _ = await answer(server.url + path)
            assert {k: headers.get(k) for k in EVERY} == EVERY, path
            assert headers["Content-Security-Policy"] == "frame-ancestors 'self'", path

    run(scenario())


def test_pages_serves_files_only(server):
    async def scenario() -> None:
        status, _, body = await answer(server.url + "/pages/index.html")
        assert status == 200 and b"window.inline" in body
        assert (await answer(server.url + "/pages/sub/file.txt"))[::2] == (200, b"visible\n")
        # dotfiles, however the address spells them
        for path in ("/pages/.env", "/pages/%2eenv", "/pages/.git/config", "/pages/.git/", "/pages/sub/.hidden",
                     "/pages/sub/%2Ehidden", "/pages/sub/../.env", "/pages/sub/%2e%2e/.env"):  # fmt: skip
            status, _, body = await answer(server.url + path)
            assert status == 404 and b"secret" not in body and b"hidden" not in body and b"[core]" not in body, path
        # no folder listings
        for path in ("/pages/", "/pages/sub/", "/pages/sub"):
            status, _, body = await answer(server.url + path)
            assert status in (403, 404) and b"Index of" not in body and b"file.txt" not in body, (path, status)
        # nothing outside the folder: paths and symlinks
        for path in ("/pages/../outside.txt", "/pages/%2e%2e/outside.txt", "/pages/link.txt", "/pages//etc/passwd",
                     "/pages/%2fetc%2fpasswd", "/static/../README.md"):  # fmt: skip
            status, _, body = await answer(server.url + path)
            assert status in (403, 404) and b"outside" not in body and b"root:" not in body, (path, status)

    run(scenario())


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_the_pages_work_under_their_policy_and_other_sites_cannot_frame_them(server, browser):
    page = browser.new_page()
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.add_init_script("document.addEventListener('securitypolicyviolation', (e) => "
                         "(window.violations = window.violations || []).push(e.violatedDirective + ' ' + e.blockedURI))")  # fmt: skip
    for path in ("/", "/sessions"):
        page.goto(server.url + path)
        wait_until(page, "() => document.readyState === 'complete'")
    # the recorder's client connected over Socket.IO under connect-src 'self'
    page.goto(server.url + "/")
    wait_until(page, "() => document.querySelector('[data-testid=connection]')?.dataset.state === 'connected'")
    page.goto(server.url + "/sessions")
    wait_until(page, "() => Array.isArray(window.camingestSessions?.listed)")
    assert page.evaluate("() => window.violations || []") == [] and violations == []
    # framed by its own site: it loads; by another (localhost is another origin than 127.0.0.1): refused
    other = server.url.replace("127.0.0.1", "localhost")
    page.goto(server.url + "/pages/frames.html")
    wait_until(page, "() => document.getElementById('same').contentWindow.camingestSessions !== undefined")
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text))
    page.evaluate(f"() => {{ document.getElementById('other').src = {other + '/sessions'!r}; }}")
    page.wait_for_event("console", lambda m: "frame-ancestors" in m.text, timeout=30_000)
    assert any(m.startswith(f"Framing '{other}/' violates the following Content Security Policy directive: "
                            "\"frame-ancestors 'self'\". The request has been blocked.") for m in refused), refused
