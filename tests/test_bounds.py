"""Inputs within the limits cost little, and malformed numbers anywhere get the contract's error,
never ``internal`` or a plain-text 500 (issue 9). Real server on loopback."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from ingest.media.webm import CLUSTER_HEADER_UNKNOWN, WebMReader
from tests.client import Client, http_json, run, wait_until
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


def test_block_bomb_is_refused_after_the_limit(ingest_server):
    """An 8 MB chunk of 1.3 million 6-byte SimpleBlocks: refused once max_blocks_per_chunk is passed."""
    block = bytes([0xA3, 0x84, 0x81, 0x00, 0x00, 0x80])  # SimpleBlock: track 1, time 0, keyframe
    cluster = CLUSTER_HEADER_UNKNOWN + bytes([0xE7, 0x81, 0x00])  # Timecode 0
    bomb = init_segment() + cluster + block * ((8 * 1024 * 1024 - 4096) // len(block))

    async def scenario() -> None:
        async with Client(ingest_server.url) as client:
            session = await client.start()
            ack = await client.chunk(session, 0, bomb)
            assert ack == {"ok": False, "error": {"code": "invalid_media", "message": (
                "a chunk completes more than 5000 blocks (limit max_blocks_per_chunk); MediaRecorder blobs hold a few dozen"
            )}}  # fmt: skip
            other = await client.start()  # the server is fine
            assert (await client.chunk(other, 0, CHUNKS[0]))["ok"]

    run(scenario())


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("attachments", [8, 4])
def test_attachment_flood_is_cut_off(ingest_server, attachments):
    """One event of 30 MB attachments (each under engine.io's per-message limit): 8 are refused
    from the packet header, 4 once their total passes the limit; the event is never handled."""
    before = peak_rss_mb(ingest_server.proc.pid)

    async def scenario() -> None:
        async with Client(ingest_server.url) as flooder, Client(ingest_server.url) as bystander:
            session = await bystander.start()
            payload = {"session_id": session["session_id"], "token": session["token"], "seq": 0,
                       "data": CHUNKS[0], "extra": [bytes(30 * 1024 * 1024)] * (attachments - 1)}  # fmt: skip
            await flooder.sio.emit("chunk", payload)

            async def cut_off() -> bool:
                return not flooder.sio.connected

            await wait_until(cut_off, "the flooding client was disconnected")
            assert (await bystander.chunk(session, 0, CHUNKS[0]))["ok"]  # the event was not handled
            _, health = await http_json(f"{ingest_server.url}/api/health")
            assert health["ok"]

    run(scenario())
    grown = peak_rss_mb(ingest_server.proc.pid) - before
    # measured: +91 MB (8 attachments, refused from the header) and +139 MB (4: refused at the
    # second; aiohttp and engine.io each hold a 30 MB frame before it is counted); unbounded,
    # the event held 240 MB and was handled
    assert grown < 200, f"peak memory grew by {grown:.0f} MB"


def test_held_back_bytes_are_bounded_across_sessions(server_factory):
    """Each session holds 80 KB of a frame whose end has not come yet; with max_held_bytes at
    100 KB the second such chunk is refused (busy) until the first session lets go of its bytes."""
    server = server_factory("--no-analysis", env={"CAMINGEST_MAX_HELD_BYTES": str(100 * 1024)})
    # a SimpleBlock that declares 200,000 bytes, of which the chunk carries 80 KB
    head = bytes([0xA3, 0x10]) + (200_000).to_bytes(3, "big") + bytes([0x81, 0, 0, 0x80])  # 4-byte size
    partial = init_segment() + CLUSTER_HEADER_UNKNOWN + bytes([0xE7, 0x81, 0x00]) + head + bytes(80 * 1024)

    async def scenario() -> None:
        async with Client(server.url) as client:
            first, second = await client.start(), await client.start()
            assert (await client.chunk(first, 0, partial))["ok"]
            ack = await client.chunk(second, 0, partial)
            assert ack["ok"] is False and ack["error"]["code"] == "busy"
            assert ack["error"]["message"].endswith("the limit (max_held_bytes) is 102400; retry later")
            assert (await client.stop(first))["ok"]  # its reader is gone, and its held bytes
            assert (await client.chunk(second, 0, partial))["ok"]

    run(scenario())
