"""Running it for others (issue 10): Host allow-list, Origin checks, the access token, TLS and
metrics, each with a real server on loopback."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys

import aiohttp
import pytest
import socketio
from prometheus_client.parser import text_string_to_metric_families

from tests.client import Client, run, wait_for_summary
from tests.conftest import ROOT, load_recording

RECORDING = load_recording("webcam_vp8_kf1s_250ms")
TOKEN = "s3cret-token-for-tests"


async def request(method: str, url: str, **kwargs) -> tuple[int, dict | str, aiohttp.ClientResponse]:
    async with aiohttp.ClientSession() as http, http.request(method, url, allow_redirects=False, **kwargs) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body, r


def test_foreign_host_is_refused(ingest_server):
    status, body, _ = run(request("GET", f"{ingest_server.url}/api/sessions", headers={"Host": "evil.example"}))
    assert (status, body) == (421, {"error": {"code": "misdirected", "message": (
        "host 'evil.example' is not served here (setting allowed_hosts)"
    )}})  # fmt: skip
    status, _, _ = run(request("GET", f"{ingest_server.url}/api/sessions", headers={"Host": "localhost:1234"}))
    assert status == 200

    async def socket() -> None:
        sio = socketio.AsyncClient(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sio.connect(ingest_server.url, headers={"Host": "evil.example"}, transports=["websocket"])

    run(socket())


def test_foreign_origin_cannot_change_anything(ingest_server):
    async def scenario() -> None:
        async with Client(ingest_server.url) as client:
            session = await client.start()
            await client.stop(session)
        url = f"{ingest_server.url}/api/sessions/{session['session_id']}"
        status, body, _ = await request("DELETE", url, headers={"Origin": "http://evil.example"})
        assert (status, body) == (403, {"error": {"code": "unauthorized", "message": (
            "requests from origin http://evil.example may not change anything here"
        )}})  # fmt: skip
        status, _, _ = await request("POST", f"{ingest_server.url}/api/sessions?filename=x.webm",
                                     data=b"x", headers={"Origin": "http://evil.example"})  # fmt: skip
        assert status == 403
        status, _, _ = await request("DELETE", url, headers={"Origin": ingest_server.url})  # same origin
        assert status == 200

    run(scenario())


def test_token_guards_every_route_and_the_socket(server_factory):
    server = server_factory("--no-analysis", "--token", TOKEN)
    url = server.url

    sid = "20260101-000000-00000000"
    every_route = [("GET", p) for p in (
        "/", "/sessions", "/metrics", "/api/sessions", f"/api/sessions/{sid}",
        f"/api/sessions/{sid}/raw.webm", f"/api/sessions/{sid}/recording.webm", f"/api/sessions/{sid}/chunks/0",
        f"/api/sessions/{sid}/chunks/0.webm", f"/api/sessions/{sid}/landmarks", f"/api/sessions/{sid}/preview.mjpg",
        f"/api/sessions/{sid}/snapshots/000000-abcdef", f"/api/sessions/{sid}/snapshots/000000-abcdef/landmarks",
        f"/api/sessions/{sid}/exports", f"/api/sessions/{sid}/exports/lips.mp4",
    )] + [("POST", "/api/sessions?filename=x.webm"), ("DELETE", f"/api/sessions/{sid}"),
          ("POST", f"/api/sessions/{sid}/exports")]  # fmt: skip

    async def scenario() -> None:
        for method, path in every_route:
            status, body, _ = await request(method, url + path)
            assert status == 401, (method, path)
            assert body["error"]["code"] == "unauthorized"
        assert (await request("GET", url + "/api/health"))[0] == 200
        # the pages' scripts hold no data: public, so that other apps' pages can import the client
        assert (await request("GET", url + "/static/camingest-client.js"))[0] == 200
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert (await request("GET", url + "/api/sessions", headers=bearer))[0] == 200
        assert (await request("GET", url + "/api/sessions", headers={"Authorization": "Bearer wrong"}))[0] == 401
        status, _, response = await request("GET", url + "/sessions?token=" + TOKEN)
        assert status == 303 and response.headers["Location"] == "/sessions"
        cookie = response.cookies["camingest_token"]
        # the cookie holds a short-lived token of its own for the same principal, never the token (issue 24)
        assert TOKEN not in cookie.value and cookie["httponly"] and cookie["samesite"] == "Strict"
        assert int(cookie["max-age"]) > 0
        assert (await request("GET", url + "/api/sessions", cookies={"camingest_token": cookie.value}))[0] == 200
        assert (await request("GET", url + "/?token=wrong"))[0] == 401

        refused = socketio.AsyncClient(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.connect(url, transports=["websocket"])
        allowed = socketio.AsyncClient(reconnection=False)
        await allowed.connect(url, transports=["websocket"], auth={"token": TOKEN})
        ack = await allowed.call("start", {"mime": "video/webm"})
        assert ack["ok"]
        await allowed.disconnect()

    run(scenario())


def test_metrics_count_a_replayed_recording(server_factory):
    server = server_factory(env={"CAMINGEST_LIVE_QUEUE_UNITS": "100000"})
    frames = RECORDING.expected["video_frames"]

    async def scenario() -> dict[str, float]:
        async with Client(server.url) as client:
            session = await client.start(RECORDING.meta["mime"])
            await client.send_all(session, RECORDING.chunks)
            assert (await client.stop(session))["ok"]
        await wait_for_summary(f"{server.url}/api/sessions/{session['session_id']}",
                               lambda s: s["analysed_frames"] == frames, "live landmarks")  # fmt: skip
        _, text, _ = await request("GET", server.url + "/metrics")
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
                if "le" not in sample.labels:
                    samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        return samples

    m = run(scenario())
    assert m["camingest_chunks_total"] == len(RECORDING.chunks)
    assert m["camingest_chunk_bytes_total"] == len(RECORDING.stream)
    assert m["camingest_chunk_ack_seconds_count"] == len(RECORDING.chunks)
    assert m["camingest_frames_analysed_total"] == frames
    assert m["camingest_frames_skipped_total"] == 0
    assert 0 < m["camingest_landmark_lag_seconds_count"] <= len(RECORDING.chunks)
    assert m["camingest_sessions_recording"] == 0
    assert m["camingest_sessions_ended_total{ended_by=client}"] == 1
    assert m["camingest_worker_restarts_total"] == 0
    assert m["camingest_workers"] == 2 and m["camingest_disk_free_bytes"] > 0


def make_certificate(folder) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return str(cert_path), str(key_path)


def test_tls_serves_https_and_wss(server_factory, tmp_path):
    cert, key = make_certificate(tmp_path)
    server = server_factory("--no-analysis", "--tls-cert", cert, "--tls-key", key)
    assert server.url.startswith("https://")
    context = ssl.create_default_context(cafile=cert)

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http, http.get(server.url + "/api/health", ssl=context) as r:
            assert r.status == 200 and (await r.json())["ok"]
        sio = socketio.AsyncClient(reconnection=False, ssl_verify=False)
        await sio.connect(server.url, transports=["websocket"])
        ack = await sio.call("start", {"mime": "video/webm"})
        session = {"session_id": ack["session_id"], "token": ack["token"]}
        chunk = await sio.call("chunk", {**session, "seq": 0, "data": RECORDING.chunks[0]})
        assert chunk["ok"]
        await sio.disconnect()
        _, summary = await http_json_tls(server.url + f"/api/sessions/{ack['session_id']}", context)
        assert summary["bytes"] == len(RECORDING.chunks[0])

    run(scenario())


async def http_json_tls(url: str, context: ssl.SSLContext) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(url, ssl=context) as r:
        return r.status, await r.json()


def test_version_and_license():
    result = subprocess.run([sys.executable, "-m", "ingest.cli", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "camingest 0.1.0"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")




def test_aborted_downloads_log_no_traceback(ingest_server):
    recording = load_recording("scene_vp8_opus_250ms")  # 1.3 MB: more than one write

    async def scenario() -> None:
        async with Client(ingest_server.url) as client:
            session = await client.start()
            await client.send_all(session, recording.chunks)
        base = f"{ingest_server.url}/api/sessions/{session['session_id']}"
        for path in ("raw.webm", "recording.webm", "raw.webm"):
            async with aiohttp.ClientSession() as http:
                response = await http.get(f"{base}/{path}")
                await response.content.read(1000)
                response.close()  # the viewer closed the tab
        status, _, _ = await request("GET", f"{ingest_server.url}/api/health")  # and it is still fine
        assert status == 200

    run(scenario())
    log = ingest_server.log.read_text()
    assert "Traceback" not in log and "Error handling request" not in log
