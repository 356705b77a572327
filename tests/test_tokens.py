"""Roles and signed per-person tokens (issue 24), each failure the issue lists tried as an attacker
holding a recorder's token would, on a real server on loopback: another's session is answered as
an unknown one on every route and event, a viewer reads but cannot delete, only admin enrols or
mints, every refusal has its own message, a recording outlives its token's expiry, a revocation
cuts the next request, keys rotate, the cookie never holds a token, health is bare."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import jwt
import pytest

from tests.client import Client, http_get, record, run
from tests.conftest import IMAGES, load_recording
from tests.tokens import ADMIN, KEYS, call, connect_refusal, jti_of, keyfile, mint, refusal

RECORDING = load_recording("webcam_vp8_kf1s_250ms")
UNKNOWN = "20260101-000000-00000000"
MISSING = "this server needs its access token (Authorization: Bearer, or open a page with ?token=)"


def start_server(server_factory, tmp_path, *extra: str, env: dict[str, str] | None = None):
    return server_factory("--no-analysis", "--token", ADMIN, "--secret-file", str(keyfile(tmp_path, **KEYS)), *extra,
                          env=env)  # fmt: skip


def session_routes(session_id: str) -> list[tuple[str, str]]:
    base = f"/api/sessions/{session_id}"
    return [("GET", base), ("GET", base + "/raw.webm"), ("GET", base + "/recording.webm"), ("GET", base + "/chunks/0"),
            ("GET", base + "/chunks/0.webm"), ("GET", base + "/landmarks"), ("GET", base + "/preview.mjpg"),
            ("GET", base + "/thumbnail.jpg"), ("GET", base + "/snapshots/000000-abcdef"),
            ("GET", base + "/snapshots/000000-abcdef/landmarks"), ("GET", base + "/exports"),
            ("GET", base + "/exports/none.mp4"), ("POST", base + "/exports"), ("DELETE", base),
            ("PUT", base + "/hold"), ("DELETE", base + "/hold")]  # fmt: skip


def test_recorders_see_only_their_own_and_a_viewer_reads_but_cannot_delete(server_factory, tmp_path):
    """Two recorder tokens (A, B: each may read its own sessions) and a viewer. B cannot list,
    read, download, preview, export, delete, hold or resume A's session: every route and event
    answers exactly as for an unknown session; B's own session works end to end; the viewer
    lists and downloads both but cannot delete; only admin enrols or mints."""
    server = start_server(server_factory, tmp_path)
    url = server.url
    # A's token from the server (an app's backend may ask it), B's minted as the README shows
    status, minted = run(call("POST", url + "/api/tokens", ADMIN, json={
        "role": "recorder", "sub": "participant-a", "ttl_s": 3600, "read": True, "meta": {"study": "s1"}}))  # fmt: skip
    assert status == 201 and set(minted) == {"token", "jti", "role", "sub", "expires_at"}
    token_a = minted["token"]
    token_b = mint(KEYS["k1"], "k1", sub="participant-b", read=True)
    viewer = mint(KEYS["k2"], "k2", role="viewer", sub="viewer-1")

    async def scenario() -> None:
        async with Client(url, token=token_a) as a, Client(url, token=token_b) as b:
            session_a = await a.start(RECORDING.meta["mime"], meta={"label": "mine", "study": "the client's"})
            await record(url, RECORDING, 0, client=a, session=session_a, stop=False)
            snapshot = await a.call("snapshot", {"session_id": session_a["session_id"], "token": session_a["token"],
                                                 "mime": "image/jpeg", "data": (IMAGES / "obama.jpg").read_bytes()})  # fmt: skip
            assert snapshot["ok"], snapshot
            a_id = session_a["session_id"]

            # over HTTP: each route of A's session answers B exactly as for a session that does not exist
            for method, path in session_routes(a_id):
                unknown = await call(method, url + path.replace(a_id, UNKNOWN), token_b, json={})
                answer = await call(method, url + path, token_b, json={})
                assert answer[0] == unknown[0] == 404, (method, path, answer)
                assert answer[1] == refusal(f"unknown session {a_id!r}", "unknown_session"), (method, path, answer)
                assert unknown[1] == refusal(f"unknown session {UNKNOWN!r}", "unknown_session")
            status, listing = await call("GET", url + "/api/sessions", token_b)
            assert status == 200 and listing["sessions"] == []
            # over Socket.IO: B holding A's session token still cannot reach it
            for event, payload in (("start", {"resume": {"session_id": a_id, "token": session_a["token"]}}),
                                   ("chunk", {"session_id": a_id, "token": session_a["token"], "seq": 99, "data": b"x"}),
                                   ("snapshot", {"session_id": a_id, "token": session_a["token"], "mime": "image/jpeg",
                                                 "data": b"x"}),
                                   ("status", {"session_id": a_id, "token": session_a["token"]}),
                                   ("stop", {"session_id": a_id, "token": session_a["token"]})):  # fmt: skip
                ack = await b.call(event, payload)
                assert ack == {"ok": False, "error": {"code": "unknown_session", "message": f"unknown session {a_id!r}"}}, event
            assert (await a.stop(session_a))["ok"]

            # B's own session, end to end
            session_b = await b.start(RECORDING.meta["mime"])
            await record(url, RECORDING, 0, client=b, session=session_b)
        b_id = session_b["session_id"]
        status, raw = await call("GET", f"{url}/api/sessions/{b_id}/raw.webm", token_b)
        assert (status, raw) == (200, RECORDING.stream)
        status, listing = await call("GET", url + "/api/sessions", token_b)
        assert [s["id"] for s in listing["sessions"]] == [b_id]
        status, own = await call("GET", f"{url}/api/sessions/{b_id}", token_b)
        assert status == 200 and own["sub"] == "participant-b" and own["chunks"] == len(RECORDING.chunks)
        # a recorder reads its own, changes nothing of it over HTTP
        status, body = await call("DELETE", f"{url}/api/sessions/{b_id}", token_b)
        assert (status, body) == (403, refusal("a recorder token may not use DELETE /api/sessions/{session_id} (it "
                                               "needs an admin token)"))  # fmt: skip

        # the viewer: lists both (with who recorded them), downloads, cannot delete
        status, listing = await call("GET", url + "/api/sessions", viewer)
        assert status == 200 and {s["id"]: s.get("sub") for s in listing["sessions"]} == {
            a_id: "participant-a", b_id: "participant-b"}  # fmt: skip
        status, summary_a = await call("GET", f"{url}/api/sessions/{a_id}", viewer)
        # the token's meta over the client's: the client cannot change what the app's backend said
        assert summary_a["meta"] == {"label": "mine", "study": "s1"}
        assert await call("GET", f"{url}/api/sessions/{a_id}/raw.webm", viewer) == (200, RECORDING.stream)
        assert (await call("GET", f"{url}/api/sessions/{a_id}/preview.mjpg?overlay=none", viewer))[0] == 200
        status, body = await call("DELETE", f"{url}/api/sessions/{a_id}", viewer)
        assert (status, body) == (403, refusal("a viewer token may not use DELETE /api/sessions/{session_id} (it needs "
                                               "an admin token)"))  # fmt: skip
        status, body = await call("PUT", f"{url}/api/sessions/{a_id}/hold", viewer)
        assert (status, body) == (403, refusal("a viewer token may not use PUT /api/sessions/{session_id}/hold (it "
                                               "needs an admin token)"))  # fmt: skip
        # a viewer does not record
        async with Client(url, token=viewer) as v:
            ack = await v.call("start", {"mime": "video/webm"})
            assert ack == {"ok": False, "error": {"code": "unauthorized", "message": (
                "a viewer token may not record (it needs a recorder or admin token)")}}  # fmt: skip

        # only admin enrols or mints
        photo = (IMAGES / "obama.jpg").read_bytes()

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("name", "Barack Obama")
            data.add_field("file", photo, filename="obama.jpg", content_type="image/jpeg")
            return data

        for who, token in (("recorder", token_b), ("viewer", viewer)):
            status, body = await call("POST", url + "/api/gallery", token, data=form())
            assert (status, body) == (403, refusal(f"a {who} token may not use POST /api/gallery (it needs an admin "
                                                   "token)"))  # fmt: skip
            status, body = await call("POST", url + "/api/tokens", token, json={"role": "admin", "sub": "me"})
            assert (status, body) == (403, refusal(f"a {who} token may not use POST /api/tokens (it needs an admin "
                                                   "token)"))  # fmt: skip
            status, body = await call("DELETE", f"{url}/api/tokens/{jti_of(token_a)}", token)
            assert status == 403
        status, body = await call("GET", url + "/api/gallery", token_b)
        assert (status, body) == (403, refusal("a recorder token may not use GET /api/gallery (it needs a viewer or "
                                               "admin token)"))  # fmt: skip
        status, enrolled = await call("POST", url + "/api/gallery", ADMIN, data=form())
        assert status == 201 and enrolled["name"] == "Barack Obama", enrolled
        # and admin deletes
        assert (await call("DELETE", f"{url}/api/sessions/{a_id}", ADMIN))[0] == 200

    run(scenario())
    assert "Traceback" not in server.log.read_text()


def test_a_recorder_without_the_read_grant_and_max_sessions(server_factory, tmp_path):
    """A recorder token without ``read`` records but reads nothing (not even its own), and one
    with ``max_sessions: 1`` starts one session, its second start refused."""
    server = start_server(server_factory, tmp_path)
    token = mint(KEYS["k1"], "k1", sub="p-1", max_sessions=1)

    async def scenario() -> None:
        async with Client(server.url, token=token) as client:
            session = await record(server.url, RECORDING, 0, client=client)
            ack = await client.call("start", {"mime": RECORDING.meta["mime"]})
            assert ack == {"ok": False, "error": {"code": "unauthorized", "message": (
                f"token {jti_of(token)} may start 1 session (its max_sessions) and has started them")}}  # fmt: skip
        status, body = await call("GET", server.url + "/api/sessions", token)
        assert (status, body) == (403, refusal("a recorder token may not use GET /api/sessions (it needs a viewer or "
                                               "admin token, or a recorder token with the read grant)"))  # fmt: skip
        status, body = await call("GET", f"{server.url}/api/sessions/{session['session_id']}", token)
        assert (status, body) == (403, refusal("a recorder token may not read sessions (GET /api/sessions/{session_id})"
                                               " (it needs a recorder token with the read grant)"))  # fmt: skip
        status, body = await call("GET", f"{server.url}/api/sessions/{UNKNOWN}", token)
        assert (status, body) == (404, refusal(f"unknown session {UNKNOWN!r}", "unknown_session"))

    run(scenario())


def test_each_refusal_has_its_own_message(server_factory, tmp_path):
    """Wrong, expired, revoked, badly signed, alg none, another algorithm, an unknown key id,
    claims missing or wrong, a recorder on an admin route: each refused with its own exact
    message, over HTTP and over Socket.IO, and never a traceback."""
    server = start_server(server_factory, tmp_path)
    url = server.url
    expired = mint(KEYS["k1"], "k1", ttl_s=-60)
    revoked = mint(KEYS["k1"], "k1", role="viewer")
    exp_iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(jwt.decode(expired, options={"verify_signature": False})["exp"]))
    unsigned = jwt.encode({"role": "admin", "sub": "x", "jti": "j", "exp": int(time.time()) + 60}, None,
                          algorithm="none", headers={"kid": "k1"})  # fmt: skip
    cases = {
        "wrong": ("not-the-token", "wrong token: it is neither this server's token nor a token signed by it"),
        "expired": (expired, f"token expired at {exp_iso}"),
        "revoked": (revoked, f"token {jti_of(revoked)} was revoked"),
        "badly signed": (mint("someone-else-" + "c" * 40, "k1"),
                         "token signature does not verify: it was not signed with this server's key 'k1'"),
        "alg none": (unsigned, "token algorithm 'none' is refused: tokens are signed with HS256"),
        "HS512": (mint(KEYS["k1"] * 2, "k1", algorithm="HS512"), "token algorithm 'HS512' is refused: tokens are signed with HS256"),
        "unknown kid": (mint(KEYS["k1"], "k9"),
                        "token key id 'k9' is not one of this server's keys (retired, or never configured)"),
        "no kid": (jwt.encode({"role": "viewer", "sub": "x", "jti": "j", "exp": int(time.time()) + 60}, KEYS["k1"]),
                   "token has no kid header: a token names the key that signed it"),
        "no exp": (jwt.encode({"role": "viewer", "sub": "x", "jti": "j"}, KEYS["k1"], headers={"kid": "k1"}),
                   "token has no exp claim"),
        "bad role": (mint(KEYS["k1"], "k1", role="root"), "token claim role must be one of admin, viewer, recorder (got 'root')"),
        "no jti": (jwt.encode({"role": "viewer", "sub": "x", "exp": int(time.time()) + 60}, KEYS["k1"], headers={"kid": "k1"}),
                   "token has no jti claim (the id a revocation names)"),
    }

    async def scenario() -> None:
        status, body = await call("DELETE", f"{url}/api/tokens/{jti_of(revoked)}", ADMIN)
        assert (status, body) == (200, {"ok": True, "revoked": jti_of(revoked), "already": False})
        assert await call("GET", url + "/api/sessions") == (401, refusal(MISSING))
        for name, (token, message) in cases.items():
            assert await call("GET", url + "/api/sessions", token) == (401, refusal(message)), name
            if name != "expired":  # an expired token connects, to resume; it starts nothing (the next test)
                assert await connect_refusal(url, token) == f"unauthorized: {message}", name
        assert await connect_refusal(url, None) == f"unauthorized: {MISSING}"
        recorder = mint(KEYS["k1"], "k1")
        for method, path in (("POST", "/api/tokens"), ("GET", "/metrics"), ("POST", "/api/sessions?filename=x.webm"),
                             ("DELETE", "/api/gallery/someone")):  # fmt: skip
            status, body = await call(method, url + path, recorder, data=b"x")
            route = path.split("?")[0].replace("someone", "{person}")
            needs = "a viewer or admin token" if path == "/metrics" else "an admin token"
            assert (status, body) == (403, refusal(f"a recorder token may not use {method} {route} (it needs {needs})"))

    run(scenario())
    assert "Traceback" not in server.log.read_text()


def test_a_recording_outlives_its_token_and_a_revocation_cuts_the_next_request(server_factory, tmp_path):
    """A recorder token with a 5 s life records 20 s without interruption (token_leeway_s 5: its
    expiry is past after 10 s); a new `start` after expiry is refused `unauthorized` with the
    exact message, on the same connection and a new one. A revoked token's next chunk, next
    HTTP request and next connection are refused."""
    server = start_server(server_factory, tmp_path)
    short = mint(KEYS["k1"], "k1", sub="short-lived", ttl_s=5, read=True)
    exp_iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(jwt.decode(short, options={"verify_signature": False})["exp"]))
    expired = refusal(f"token expired at {exp_iso}")

    async def scenario() -> None:
        pace = 20.5 / len(RECORDING.chunks)
        async with Client(server.url, token=short) as client:
            loop = asyncio.get_running_loop()
            began = loop.time()
            session = await record(server.url, RECORDING, pace, client=client)  # every ack and the stop: ok
            assert loop.time() - began >= 20
            ack = await client.call("start", {"mime": RECORDING.meta["mime"]})
            assert ack == {"ok": False, **expired}
        assert await call("GET", f"{server.url}/api/sessions/{session['session_id']}/raw.webm", ADMIN) == (200, RECORDING.stream)
        async with Client(server.url, token=short) as again:  # an expired token still connects (to resume) ...
            assert await again.call("start", {"mime": RECORDING.meta["mime"]}) == {"ok": False, **expired}  # ... not to start
        assert await call("GET", f"{server.url}/api/sessions", short) == (401, expired)

        status, minted = await call("POST", server.url + "/api/tokens", ADMIN, json={"role": "recorder", "sub": "r"})
        assert status == 201
        revocable = minted["token"]
        async with Client(server.url, token=revocable) as client:
            session = await client.start(RECORDING.meta["mime"])
            await client.send_all(session, RECORDING.chunks[:3])
            assert (await call("DELETE", f"{server.url}/api/tokens/{minted['jti']}", ADMIN))[0] == 200
            gone = refusal(f"token {minted['jti']} was revoked")
            assert await client.chunk(session, 3, RECORDING.chunks[3]) == {"ok": False, **gone}
            assert await client.call("start", {"mime": RECORDING.meta["mime"]}) == {"ok": False, **gone}
        assert await call("GET", f"{server.url}/api/me", revocable) == (401, gone)
        assert await connect_refusal(server.url, revocable) == f"unauthorized: {gone['error']['message']}"

    run(scenario())


def test_key_rotation(server_factory, tmp_path):
    """Tokens of the old and the new kid are both accepted while both keys are configured (the
    new one from CAMINGEST_SECRET, minting); the old one is refused once its key is removed."""
    old_key, new_key = "old-key-" + "d" * 40, "new-key-" + "e" * 40
    data = tmp_path / "data"
    server = server_factory("--no-analysis", "--secret-file", str(keyfile(tmp_path, "old", old=old_key)), data=data)
    admin_old = mint(old_key, "old", role="admin", sub="ops")
    viewer_old = mint(old_key, "old", role="viewer", sub="v-old")
    assert run(call("GET", server.url + "/api/me", viewer_old))[0] == 200
    server.stop()

    server = server_factory("--no-analysis", "--secret-file", str(keyfile(tmp_path, "old", old=old_key)), data=data,
                            env={"CAMINGEST_SECRET": f"new={new_key}"})  # fmt: skip
    # the first key listed mints: the secret file's, then CAMINGEST_SECRET's
    status, minted = run(call("POST", server.url + "/api/tokens", admin_old, json={"role": "viewer", "sub": "v-new"}))
    assert status == 201 and jwt.get_unverified_header(minted["token"])["kid"] == "old"
    viewer_new = mint(new_key, "new", role="viewer", sub="v-new")
    for token, sub in ((viewer_old, "v-old"), (viewer_new, "v-new"), (minted["token"], "v-new")):
        status, me = run(call("GET", server.url + "/api/me", token))
        assert (status, me["sub"]) == (200, sub)
    server.stop()

    server = server_factory("--no-analysis", "--secret-file", str(keyfile(tmp_path, "new", new=new_key)), data=data)
    assert run(call("GET", server.url + "/api/me", viewer_old)) == (401, refusal(
        "token key id 'old' is not one of this server's keys (retired, or never configured)"))  # fmt: skip
    assert run(call("GET", server.url + "/api/me", viewer_new))[0] == 200


def test_the_cookie_holds_no_token_is_secure_behind_https_and_expires(server_factory, tmp_path):
    """``?token=`` sets a cookie holding a short-lived token of its own for the same principal:
    never the admin token nor the JWT; ``Secure`` when a trusted proxy says https (not when
    anyone else says it); an expiry no later than the token's; revoking the token ends it."""
    server = start_server(server_factory, tmp_path, env={"CAMINGEST_TRUSTED_PROXIES": "127.0.0.1",
                                                         "CAMINGEST_COOKIE_TTL_S": "600"})  # fmt: skip
    viewer = mint(KEYS["k1"], "k1", role="viewer", sub="v-cookie", ttl_s=300)

    async def page(token: str, https: bool):
        headers = {"X-Forwarded-Proto": "https"} if https else {}
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/sessions?id=x&token={token}", headers=headers,
                                                             allow_redirects=False) as r:  # fmt: skip
            return r.status, r.headers, r.cookies.get("camingest_token")

    async def scenario() -> None:
        status, headers, cookie = await page(ADMIN, https=True)
        assert status == 303 and headers["Location"] == "/sessions?id=x" and headers["Referrer-Policy"] == "no-referrer"
        assert ADMIN not in cookie.value and cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Strict"
        assert 590 <= int(cookie["max-age"]) <= 600  # cookie_ttl_s
        status, me = await call("GET", server.url + "/api/me", cookies={"camingest_token": cookie.value})
        assert (status, me["role"], me["sub"]) == (200, "admin", "admin")

        status, _, cookie = await page(viewer, https=False)
        assert viewer not in cookie.value and not cookie["secure"]
        assert 290 <= int(cookie["max-age"]) <= 300  # no longer than the token it stands for
        status, me = await call("GET", server.url + "/api/me", cookies={"camingest_token": cookie.value})
        assert (me["role"], me["sub"], me["jti"]) == ("viewer", "v-cookie", jti_of(viewer))
        assert (await call("DELETE", f"{server.url}/api/tokens/{jti_of(viewer)}", ADMIN))[0] == 200
        assert await call("GET", server.url + "/api/me", cookies={"camingest_token": cookie.value}) == (
            401, refusal(f"token {jti_of(viewer)} was revoked"))  # fmt: skip
        assert (await page("wrong", https=False))[0] == 401

    run(scenario())


@pytest.mark.parametrize("proxied", [False, True])
def test_secure_cookie_only_from_a_trusted_proxy(server_factory, tmp_path, proxied):
    """``X-Forwarded-Proto: https`` from a peer that is not a trusted proxy is anyone's to send."""
    env = {"CAMINGEST_TRUSTED_PROXIES": "127.0.0.1"} if proxied else {}
    server = start_server(server_factory, tmp_path, env=env)

    async def scenario() -> bool:
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/?token={ADMIN}", allow_redirects=False,
                                                             headers={"X-Forwarded-Proto": "https"}) as r:  # fmt: skip
            return bool(r.cookies["camingest_token"]["secure"])

    assert run(scenario()) is proxied


def test_health_is_bare_unless_a_viewer_asks(server_factory, tmp_path):
    server = start_server(server_factory, tmp_path)
    for token in (None, "wrong", mint(KEYS["k1"], "k1")):  # nobody, a wrong token, a recorder
        assert run(call("GET", server.url + "/api/health", token)) == (200, {"ok": True, "node": None})
    for token in (ADMIN, mint(KEYS["k1"], "k1", role="viewer")):
        status, health = run(call("GET", server.url + "/api/health", token))
        assert status == 200 and health["sessions_recording"] == 0 and "loop_lag_ms" in health
    assert run(http_get(server.url + "/api/health"))[0] == 200
