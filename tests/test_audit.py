"""The audit trail (issue 24): one JSON line per access to session data and per gallery, hold or
token change, with the principal's sub, role and jti, the route and the session; and no token
anywhere: not in the audit log, the server's log, the data folder (index included) or /metrics."""

from __future__ import annotations

import aiohttp

from tests.client import Client, record, run, wait_until
from tests.conftest import load_recording
from tests.tokens import ADMIN, KEYS, call, jti_of, keyfile, lines, mint

RECORDING = load_recording("webcam_vp8_kf1s_250ms")


def test_one_line_per_access_with_the_right_sub_and_no_token_anywhere(server_factory, tmp_path):
    audit = tmp_path / "audit.jsonl"
    data = tmp_path / "data"
    server = server_factory("--no-analysis", "--token", ADMIN, "--secret-file", str(keyfile(tmp_path, **KEYS)),
                            "--audit-log", str(audit), data=data)  # fmt: skip
    url = server.url
    a = mint(KEYS["k1"], "k1", sub="participant-a", read=True)
    b = mint(KEYS["k1"], "k1", sub="participant-b", read=True)
    v = mint(KEYS["k2"], "k2", role="viewer", sub="reviewer")
    secrets_seen = [ADMIN, a, b, v, *KEYS.values()]

    async def scenario() -> list[tuple]:
        async with Client(url, token=a) as client:
            session = await record(url, RECORDING, 0, client=client)
        secrets_seen.append(session["token"])
        sid = session["session_id"]
        # the page way: ?token= once, then the cookie (not audited: the page itself, /api/me)
        async with aiohttp.ClientSession() as http, http.get(f"{url}/?token={a}", allow_redirects=False) as r:
            cookie = r.cookies["camingest_token"].value
        secrets_seen.append(cookie)
        assert (await call("GET", url + "/api/me", cookies={"camingest_token": cookie}))[0] == 200
        assert (await call("GET", url + "/api/health", v))[0] == 200
        expected: list[tuple] = []

        async def access(method: str, path: str, token: str | None, status: int, route: str, who: tuple,
                         **kwargs) -> object:  # fmt: skip
            got, body = await call(method, url + path, token, **kwargs)
            assert got == status, (method, path, body)
            expected.append((*who, method, route, path.split("?")[0], sid if "{session_id}" in route else None, status))
            return body

        as_a, as_b, as_v = ("participant-a", "recorder", jti_of(a)), ("participant-b", "recorder", jti_of(b)), (
            "reviewer", "viewer", jti_of(v))  # fmt: skip
        as_admin = ("admin", "admin", None)
        s = "/api/sessions/{session_id}"
        await access("GET", "/api/sessions", v, 200, "/api/sessions", as_v)
        await access("GET", f"/api/sessions/{sid}/raw.webm", v, 200, s + "/raw.webm", as_v)
        await access("GET", f"/api/sessions/{sid}/landmarks", v, 200, s + "/landmarks", as_v)
        await access("GET", f"/api/sessions/{sid}/preview.mjpg?overlay=none", v, 200, s + "/preview.mjpg", as_v)
        await access("POST", f"/api/sessions/{sid}/exports", v, 202, s + "/exports", as_v,
                     json={"overlay": "none", "format": "mp4"})  # fmt: skip
        await access("DELETE", f"/api/sessions/{sid}", v, 403, s, as_v)
        await access("GET", f"/api/sessions/{sid}", b, 404, s, as_b)  # another's: refused, and written down
        await access("GET", f"/api/sessions/{sid}", None, 200, s, as_a, cookies={"camingest_token": cookie})
        minted = await access("POST", "/api/tokens", ADMIN, 201, "/api/tokens", as_admin,
                              json={"role": "recorder", "sub": "new-person", "ttl_s": 60})  # fmt: skip
        secrets_seen.append(minted["token"])
        await access("DELETE", f"/api/tokens/{minted['jti']}", ADMIN, 200, "/api/tokens/{jti}", as_admin)
        await access("DELETE", "/api/gallery/nobody", ADMIN, 404, "/api/gallery/{person}", as_admin)
        await access("PUT", f"/api/sessions/{sid}/hold", ADMIN, 200, s + "/hold", as_admin)
        await access("DELETE", f"/api/sessions/{sid}/hold", ADMIN, 200, s + "/hold", as_admin)
        await access("DELETE", f"/api/sessions/{sid}", ADMIN, 200, s, as_admin)
        status, text = await call("GET", url + "/metrics", ADMIN)
        secrets_seen_in_metrics = [t for t in secrets_seen if t.encode() in text]
        assert status == 200 and secrets_seen_in_metrics == []
        await wait_until(lambda: audit.exists() and len(lines(audit)) >= len(expected), "the audit lines",
                         seen=lambda: len(lines(audit)) if audit.exists() else None)  # fmt: skip
        (mint_line,) = [w for w in lines(audit) if w["route"] == "/api/tokens"]
        assert mint_line["minted"] == {"jti": minted["jti"], "sub": "new-person", "role": "recorder",
                                       "expires_at": minted["expires_at"]}  # what was minted, by its id
        return expected

    expected = run(scenario())
    server.stop()
    written = lines(audit)
    got = [(w["sub"], w["role"], w["jti"], w["method"], w["route"], w["path"], w["session_id"], w["status"])
           for w in written]  # fmt: skip
    assert got == expected
    assert all(w["client"] == "127.0.0.1" and w["at"].endswith("Z") for w in written)
    assert (audit.stat().st_mode & 0o777) == 0o600
    # no token anywhere: the audit log, the server's log, every file of the data folder (the index too)
    places = [audit, server.log, *(p for p in data.rglob("*") if p.is_file())]
    found = [(str(p), t[:12]) for p in places for t in secrets_seen if t.encode() in p.read_bytes()]
    assert found == []

