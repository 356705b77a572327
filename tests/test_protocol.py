"""PROTOCOL.md chunk rules against a real server on loopback, with python-socketio's client."""

from __future__ import annotations

import asyncio
import io

import av
import pytest

from ingest.media.decode import UnitDecoder
from tests.client import Client, chunk_ack, http_get, http_json, run
from tests.conftest import ServerProcess, load_recording

pytestmark = pytest.mark.backends  # also on PostgreSQL + SeaweedFS (README, "Testing")


async def replay(server: ServerProcess, chunks: list[bytes], mime: str = "video/webm;codecs=vp8") -> dict:
    async with Client(server.url) as client:
        session = await client.start(mime)
        for seq, data in enumerate(chunks):
            ack = await client.chunk(session, seq, data, t_ms=seq * 250.0)
            assert ack == chunk_ack(ack, seq, server.durable_on_ack)
        stopped = await client.stop(session)
        assert stopped["ok"], stopped
        return {**session, "summary": stopped["session"]}


def count_frames(webm: bytes) -> int:
    with av.open(io.BytesIO(webm), format="webm") as container:
        return sum(1 for _ in container.decode(video=0))


def test_replay_stores_every_byte_and_units_decode(ingest_server, recording):
    async def scenario() -> None:
        session = await replay(ingest_server, recording.chunks, recording.meta["mime"])
        base = f"{ingest_server.url}/api/sessions/{session['session_id']}"
        status, raw, ctype = await http_get(base + "/raw.webm")
        assert status == 200 and ctype == "video/webm"
        assert raw == recording.stream
        decoder, frames = UnitDecoder(), 0
        for seq, chunk in enumerate(recording.chunks):
            status, body, _ = await http_get(f"{base}/chunks/{seq}")
            assert status == 200 and body == chunk
            status, unit, _ = await http_get(f"{base}/chunks/{seq}.webm")
            assert status == 200
            frames += sum(1 for _ in decoder.decode(unit))
        frames += sum(1 for _ in decoder.flush())
        assert frames == recording.expected["video_frames"]
        summary = session["summary"]
        assert summary["state"] == "stopped"
        assert summary["chunks"] == recording.expected["chunks"]
        assert summary["bytes"] == recording.expected["bytes"]
        assert summary["frames"] == recording.expected["video_frames"]
        status, listing = await http_json(ingest_server.url + "/api/sessions")
        assert [s["id"] for s in listing["sessions"]] == [session["session_id"]]
        status, recorded, _ = await http_get(base + "/recording.webm")
        assert count_frames(recorded) == recording.expected["video_frames"]

    run(scenario())


def test_chunk_rules(ingest_server):
    chunks = load_recording("webcam_vp8_kf1s_250ms").chunks

    async def scenario() -> None:
        async with Client(ingest_server.url) as client:
            session = await client.start()
            assert session["next_seq"] == 0 and len(session["token"]) >= 24
            assert (await client.chunk(session, 0, chunks[0]))["ok"]
            # duplicate with the same bytes: ok, stored once
            again = await client.chunk(session, 0, chunks[0])
            assert again == chunk_ack(again, 0, ingest_server.durable_on_ack)
            # same seq, other bytes: conflict
            ack = await client.chunk(session, 0, chunks[1])
            assert ack["ok"] is False and ack["error"]["code"] == "conflict"
            # a seq above next_seq: gap, with next_seq
            ack = await client.chunk(session, 3, chunks[3])
            assert ack["error"]["code"] == "gap" and ack["next_seq"] == 1
            # wrong and missing token
            ack = await client.chunk({**session, "token": "x" * 32}, 1, chunks[1])
            assert ack["error"]["code"] == "unauthorized"
            ack = await client.call("chunk", {"session_id": session["session_id"], "seq": 1, "data": chunks[1]})
            assert ack["error"]["code"] == "unauthorized"
            # unknown session, and ids that are not ours never reach the file system
            for bad_id in ("20990101-000000-deadbeef", "../../etc/passwd", 7):
                ack = await client.chunk({**session, "session_id": bad_id}, 1, chunks[1])
                assert ack["error"]["code"] == "unknown_session"
            # malformed payloads
            for payload in (None, "x", {"session_id": session["session_id"], "token": session["token"], "seq": -1, "data": b""},
                            {"session_id": session["session_id"], "token": session["token"], "seq": 1, "data": "text"},
                            {"session_id": session["session_id"], "token": session["token"], "seq": True, "data": b"x"}):  # fmt: skip
                ack = await client.call("chunk", payload)
                assert ack["error"]["code"] == "bad_request", payload
            # nothing above disturbed the session
            assert (await client.chunk(session, 1, chunks[1]))["next_seq"] == 2
            stopped = await client.stop(session)
            assert stopped["session"]["chunks"] == 2 and stopped["session"]["bytes"] == len(chunks[0]) + len(chunks[1])
            ack = await client.chunk(session, 2, chunks[2])
            assert ack["error"]["code"] == "session_closed"
            ack = await client.call(
                "start", {"resume": {"session_id": session["session_id"], "token": session["token"]}}
            )
            assert ack["error"]["code"] == "session_closed"
        _status, raw, _ = await http_get(f"{ingest_server.url}/api/sessions/{session['session_id']}/raw.webm")
        assert raw == chunks[0] + chunks[1]

    run(scenario())


def test_start_validation(ingest_server):
    async def scenario() -> None:
        async with Client(ingest_server.url) as client:
            ack = await client.call("start", {"mime": "video/mp4;codecs=avc1"})
            assert ack["error"]["code"] == "unsupported"
            ack = await client.call("start", {"mime": 5})
            assert ack["error"]["code"] == "bad_request"
            ack = await client.call("start", {"resume": {"session_id": "20990101-000000-deadbeef", "token": "t"}})
            assert ack["error"]["code"] == "unknown_session"

    run(scenario())


def test_garbage_fails_only_its_session(ingest_server):
    good = load_recording("webcam_vp8_opus_250ms").chunks

    async def scenario() -> None:
        async with Client(ingest_server.url) as client:
            other = await client.start()
            assert (await client.chunk(other, 0, good[0]))["ok"]
            bad = await client.start()
            garbage = b"this is not a webm stream" * 10
            ack = await client.chunk(bad, 0, garbage)
            assert ack["error"]["code"] == "invalid_media"
            assert "EBML header" in ack["error"]["message"]
            ack = await client.chunk(bad, 1, good[1])
            assert ack["error"]["code"] == "invalid_media"
            # the other session goes on
            for seq in range(1, 4):
                assert (await client.chunk(other, seq, good[seq]))["ok"]
            await client.stop(other)
        base = ingest_server.url + "/api/sessions/"
        _, detail = await http_json(base + bad["session_id"])
        assert detail["state"] == "failed" and "EBML" in detail["error"]
        assert (detail["chunks"], detail["bytes"]) == (0, 0)
        _status, raw, _ = await http_get(base + bad["session_id"] + "/raw.webm")
        assert raw == b""  # the raw stream is the acknowledged chunks: a refused one is not stored
        _, detail = await http_json(base + other["session_id"])
        assert detail["state"] == "stopped" and detail["chunks"] == 4

    run(scenario())


def test_truncated_stream_keeps_what_was_complete(ingest_server):
    recording = load_recording("webcam_vp8_kf1s_250ms")
    stream = recording.stream[: len(recording.stream) // 2 + 777]

    async def scenario() -> None:
        pieces = [stream[i : i + 30_000] for i in range(0, len(stream), 30_000)]
        session = await replay(ingest_server, pieces)
        summary = session["summary"]
        assert summary["state"] == "stopped" and summary["bytes"] == len(stream)
        assert 0 < summary["frames"] < recording.expected["video_frames"]
        _, raw, _ = await http_get(f"{ingest_server.url}/api/sessions/{session['session_id']}/raw.webm")
        assert raw == stream

    run(scenario())


def test_oversized_chunk_is_refused(server_factory, tmp_path):
    server = server_factory("--no-analysis")
    limit = 8 * 1024 * 1024

    async def scenario() -> None:
        async with Client(server.url) as client:
            session = await client.start()
            ack = await client.chunk(session, 0, bytes(limit + 1))
            assert ack["error"]["code"] == "too_large"
            chunks = load_recording("webcam_vp8_kf1s_250ms").chunks
            assert (await client.chunk(session, 0, chunks[0]))["ok"]

    run(scenario())


def test_http_errors_are_json(ingest_server):
    async def scenario() -> None:
        for path in ("/api/sessions/20990101-000000-deadbeef", "/api/sessions/..%2F..%2Fetc/raw.webm",
                     "/api/sessions/20990101-000000-deadbeef/chunks/0", "/api/nothing"):  # fmt: skip
            status, body = await http_json(ingest_server.url + path)
            assert status == 404 and body["error"]["code"] in ("unknown_session", "not_found"), path

    run(scenario())


def test_concurrent_sessions_do_not_mix(ingest_server):
    names = ["webcam_vp8_opus_250ms", "webcam_vp9_opus_250ms", "webcam_h264_250ms"]
    recordings = [load_recording(n) for n in names]

    async def scenario() -> None:
        sessions = await asyncio.gather(*(replay(ingest_server, r.chunks, r.meta["mime"]) for r in recordings))
        for recording, session in zip(recordings, sessions, strict=True):
            _, raw, _ = await http_get(f"{ingest_server.url}/api/sessions/{session['session_id']}/raw.webm")
            assert raw == recording.stream

    run(scenario())
