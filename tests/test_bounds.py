"""Inputs within the limits cost little, and malformed numbers anywhere get the contract's error,
never ``internal`` or a plain-text 500 (issue 9). Real server on loopback."""

from __future__ import annotations

import aiohttp

from ingest.webm import CLUSTER_HEADER_UNKNOWN, WebMReader
from tests.client import Client, http_json, run
from tests.conftest import load_recording

CHUNKS = load_recording("webcam_vp8_kf1s_250ms").chunks


def init_segment() -> bytes:
    reader = WebMReader()
    reader.feed(CHUNKS[0])
    return bytes(reader.init)


def test_huge_cluster_timecode_is_invalid_media(ingest_server):
    bomb = init_segment() + CLUSTER_HEADER_UNKNOWN + bytes([0xE7, 0x80 | 64]) + b"\xff" * 64

    async def scenario() -> None:
        async with Client(ingest_server.url) as client:
            session = await client.start()
            ack = await client.chunk(session, 0, bomb)
            assert ack == {"ok": False, "error": {"code": "invalid_media", "message": (
                "an unsigned integer element of 64 bytes; EBML allows at most 8"
            )}}  # fmt: skip
            again = await client.chunk(session, 1, CHUNKS[1])  # the session is failed, said clearly
            assert again["error"]["code"] == "invalid_media"
            _, summary = await http_json(f"{ingest_server.url}/api/sessions/{session['session_id']}")
            assert summary["state"] == "failed"
            assert summary["error"] == "an unsigned integer element of 64 bytes; EBML allows at most 8"

    run(scenario())


def test_malformed_numbers_in_urls_get_json_errors(ingest_server):
    async def scenario() -> None:
        async with Client(ingest_server.url) as client:
            session = await client.start()
            assert (await client.chunk(session, 0, CHUNKS[0]))["ok"]
        base = f"{ingest_server.url}/api/sessions/{session['session_id']}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/chunks/%C2%B2") as response:  # "²": isdigit(), not int()
                assert response.status == 400
                assert await response.json() == {"error": {"code": "bad_request", "message": (
                    "seq must be a non-negative integer, got '²'"
                )}}  # fmt: skip
            headers = {"Range": "bytes=0-" + "9" * 5000}  # not a range we parse: ignored (RFC 9110)
            async with http.get(f"{base}/raw.webm", headers=headers) as response:
                assert response.status == 200 and await response.read() == CHUNKS[0]
            async with http.get(f"{base}/raw.webm", headers={"Range": "bytes=1-3"}) as response:
                assert response.status == 206 and await response.read() == CHUNKS[0][1:4]

    run(scenario())
