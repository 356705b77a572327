"""Snapshots: validated from the header before decoding, stored, analysed, served."""

from __future__ import annotations

import asyncio
import struct
import time
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest

from ingest.config import Settings
from ingest.exceptions import InvalidMediaError, TooLargeError
from ingest.media.image_headers import probe_image
from ingest.recording.snapshots import validate_snapshot
from tests.client import Client, http_get, http_json, run, wait_for_event, wait_for_frames, wait_for_summary
from tests.conftest import IMAGES, load_recording


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    # a tiny IDAT that would inflate to width*height bytes: the classic decompression bomb
    idat = zlib.compress(bytes(width + 1) * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", len(idat)) + b"IDAT" + idat


def test_probe_reads_sizes_of_real_files():
    jpeg = (IMAGES / "obama.jpg").read_bytes()
    info = probe_image(jpeg)
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert (info.mime, info.width, info.height) == ("image/jpeg", decoded.shape[1], decoded.shape[0])
    for path in load_recording("webcam_vp8_kf1s_250ms").snapshots[:3]:
        info = probe_image(path.read_bytes())
        assert (info.mime, info.width, info.height) == ("image/png", 640, 480)
    ok, webp = cv2.imencode(".webp", decoded)
    assert ok and probe_image(webp.tobytes()).width == decoded.shape[1]
    ok, lossless = cv2.imencode(".webp", decoded, [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert ok and probe_image(lossless.tobytes()).height == decoded.shape[0]


def test_image_bomb_is_refused_before_decoding():
    bomb = png_header(50_000, 50_000)
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(TooLargeError, match="50000x50000"):
        validate_snapshot(bomb, "image/png", Settings())
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000, f"{peak} bytes allocated"  # nothing near 2.5 GB of pixels
    assert elapsed < 1.0


def test_non_images_and_wrong_types():
    with pytest.raises(InvalidMediaError, match="unknown magic"):
        validate_snapshot(b"hello, this is text\n" * 10, "image/jpeg", Settings())
    jpeg = (IMAGES / "obama.jpg").read_bytes()
    with pytest.raises(InvalidMediaError, match="declared image/png but the bytes are image/jpeg"):
        validate_snapshot(jpeg, "image/png", Settings())
    with pytest.raises(InvalidMediaError, match="JPEG without a frame header"):
        validate_snapshot(jpeg[:300], "image/jpeg", Settings())


def test_snapshots_over_socketio(analysis_server):
    jpeg = (IMAGES / "obama.jpg").read_bytes()
    pngs = load_recording("webcam_vp8_kf1s_250ms").snapshots[:2]
    jpgs = load_recording("webcam_vp8_opus_250ms").snapshots[:2]

    async def scenario() -> None:
        async with Client(analysis_server.url) as client:
            session = await client.start()
            auth = {"session_id": session["session_id"], "token": session["token"]}
            sent = {}
            for mime, data in (
                [("image/jpeg", jpeg)]
                + [("image/png", p.read_bytes()) for p in pngs]
                + [("image/jpeg", p.read_bytes()) for p in jpgs]
            ):
                ack = await client.call("snapshot", {**auth, "mime": mime, "data": data, "t_ms": 1.5})
                assert ack["ok"], ack
                sent[ack["snapshot_id"]] = (mime, data)
            ack = await client.call("snapshot", {**auth, "mime": "image/png", "data": png_header(50_000, 50_000)})
            assert ack["error"]["code"] == "too_large"
            ack = await client.call("snapshot", {**auth, "mime": "image/jpeg", "data": b"plain text" * 50})
            assert ack["error"]["code"] == "invalid_media"
            ack = await client.call("snapshot", {**auth, "mime": "image/gif", "data": jpeg})
            assert ack["error"]["code"] == "bad_request"
            ack = await client.call("snapshot", {**auth, "token": "wrong", "mime": "image/jpeg", "data": jpeg})
            assert ack["error"]["code"] == "unauthorized"
            events = await wait_for_event(client, "snapshot_landmarks", len(sent))
            results = {e["snapshot_id"]: e for e in events}
            assert len(events) == len(results)  # one result per snapshot
            assert set(results) == set(sent)
            for snapshot_id, event in results.items():
                assert len(event["faces"]) == 1, snapshot_id
                assert len(event["faces"][0]["points"]) == 68
            await client.stop(session)

        base = f"{analysis_server.url}/api/sessions/{session['session_id']}"
        _, detail = await http_json(base)
        assert detail["snapshots"] and len(detail["snapshots"]) == len(sent)
        for item in detail["snapshots"]:
            mime, data = sent[item["snapshot_id"]]
            assert (item["mime"], item["bytes"], item["t_ms"]) == (mime, len(data), 1.5)
            status, body, ctype = await http_get(f"{base}/snapshots/{item['snapshot_id']}")
            assert status == 200 and body == data and ctype == mime
            _, stored = await http_json(f"{base}/snapshots/{item['snapshot_id']}/landmarks")
            assert stored["faces"] == results[item["snapshot_id"]]["faces"]
        status, body = await http_json(f"{base}/snapshots/../../index.sqlite3")
        assert status == 404
        status, body = await http_json(f"{base}/snapshots/000099-abcdef")
        assert status == 404 and body["error"]["code"] == "unknown_snapshot"

    run(scenario())


def test_big_snapshots_never_starve_a_live_session(server_factory):
    """Six 6300x6300 snapshots (under max_snapshot_pixels) sent while a session records in real
    time: every frame of the session gets its live result and, after the fill, its landmarks;
    each snapshot gets its face in its own pixels (found on a downscaled copy, scaled back). The
    share of frames live analysis keeps under this load is measured by bench/loop_bench.py."""
    from ingest.analysis.detect import detect_faces, inter_ocular

    recording = load_recording("webcam_vp8_opus_250ms")
    photo = cv2.imread(str(IMAGES / "obama.jpg"))
    big = cv2.resize(photo, (6300, 6300), interpolation=cv2.INTER_LINEAR)
    data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
    (reference,) = detect_faces(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), 1)
    expected = np.array(reference["points"]) * [6300 / photo.shape[1], 6300 / photo.shape[0]]
    server = server_factory()
    frames = recording.expected["video_frames"]

    async def scenario() -> None:
        async with Client(server.url) as client:
            session = await client.start(recording.meta["mime"])
            ids = {"session_id": session["session_id"], "token": session["token"]}
            started = time.monotonic()
            for seq, chunk in enumerate(recording.chunks):
                # at the recorder's own pace (its blob times): this is the load, not a wait
                await asyncio.sleep(max(0.0, started + recording.meta["times"][seq][1] / 1000 - time.monotonic()))
                assert (await client.chunk(session, seq, chunk))["ok"]
                if seq == 1:
                    for _ in range(6):
                        ack = await client.call("snapshot", {**ids, "mime": "image/jpeg", "data": data})
                        assert ack["ok"], ack
            assert (await client.stop(session))["ok"]

            live = await wait_for_frames(client, frames)
            assert [f["index"] for f in live] == list(range(frames))  # one live result a frame
            summary = await wait_for_summary(f"{server.url}/api/sessions/{session['session_id']}",
                                             lambda s: s["analysed_frames"] == frames and "fill" not in s,
                                             "every frame's landmarks after the fill")  # fmt: skip
            assert summary["skipped_frames"] == 0

            for event in await wait_for_event(client, "snapshot_landmarks", 6, timeout=120):
                assert "error" not in event
                (face,) = event["faces"]
                points = np.array(face["points"], dtype=float)
                assert points.shape == (68, 2)
                # the photo's own landmarks, scaled up: the same face, in the snapshot's pixels
                error = np.linalg.norm(points - expected, axis=1).mean() / inter_ocular(expected)
                assert error < 0.08, f"mean point error {error:.3f} of the inter-ocular distance"

    run(scenario())
