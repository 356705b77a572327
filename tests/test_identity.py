"""Identification against a gallery (issue 12): the gallery's CLI, routes and refusals; who is
in the frame, live and in batch, with the people of the fixture recordings.

Photos: obama.jpg (tests/fixtures/images; the webcam fixtures were made from it) and "Far", the
second person of the scene fixture (frame 150, from the MIT-licensed face_recognition example
clip), who is the small face of two_people_720p_vp8."""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest

from tests.client import Client, http_json, record, run, wait_for_summary, wait_until
from tests.conftest import IMAGES, load_recording
from tests.media import decoded_frames
from tests.test_batch import NO_SKIP, cli, read_landmarks

WEBCAM = load_recording("webcam_vp8_kf1s_250ms")
TWO_PEOPLE = load_recording("two_people_720p_vp8")


def png(bgr: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", bgr)
    assert ok
    return encoded.tobytes()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    scene = load_recording("scene_vp8_opus_250ms")
    far = next(f for f in decoded_frames(scene.chunks) if f.index == 150).frame.to_ndarray(format="bgr24")
    both = next(decoded_frames(TWO_PEOPLE.chunks)).frame.to_ndarray(format="bgr24")
    files = {
        "obama": IMAGES / "obama.jpg",
        "far": folder / "far.png",
        "both": folder / "both.png",
        "blank": folder / "blank.png",
        "text": folder / "notes.txt",
        "bomb": folder / "bomb.png",
    }
    files["far"].write_bytes(png(far))
    files["both"].write_bytes(png(both))
    files["blank"].write_bytes(png(np.full((240, 320, 3), 128, np.uint8)))
    files["text"].write_text("not a photo\n")
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)  # 50000x50000 RGB, no pixel data
    files["bomb"].write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)))
    return files


def test_gallery_command_line(tmp_path, photos):
    data = tmp_path / "data"
    add = cli("gallery", "add", "Barack Obama", str(photos["obama"]), data=data)
    assert (add.returncode, add.stdout) == (0, "enrolled Barack Obama: 1 photo\n"), add.stderr
    listed = cli("gallery", "list", data=data)
    assert listed.stdout == "Barack Obama\t1 photo\n"
    refusals = {
        "text": "camingest gallery: notes.txt is not a photo; send a JPEG, PNG or WebP image of the person's face\n",
        "blank": "camingest gallery: blank.png: no face found; use a photo where the face is clearly visible, from the front\n",
        "bomb": "camingest gallery: bomb.png declares 50000x50000 = 2500000000 pixels, more than max_snapshot_pixels=40000000\n",
    }
    for key, message in refusals.items():
        result = cli("gallery", "add", "Someone", str(photos[key]), data=data)
        assert (result.returncode, result.stderr.splitlines()[-1] + "\n") == (1, message)
    several = cli("gallery", "add", "Someone", str(photos["both"]), data=data)
    assert several.returncode == 1
    assert several.stderr.splitlines()[-1].startswith("camingest gallery: both.png: 2 faces found; the largest (")
    assert several.stderr.rstrip().endswith(") would be taken. Crop the photo to the one person and send it again")
    unknown = cli("gallery", "remove", "Nobody", data=data)
    assert (unknown.returncode, unknown.stderr.splitlines()[-1]) == (
        1, "camingest gallery: the gallery holds no person named 'Nobody'")
    assert cli("gallery", "list", data=data).stdout == "Barack Obama\t1 photo\n"  # refusals stored nothing
    removed = cli("gallery", "remove", "Barack Obama", data=data)
    assert removed.stdout == "removed Barack Obama and 1 photo\n"
    assert list((data / "gallery" / "images").iterdir()) == []  # the photo is gone too
    assert "the gallery is empty" in cli("gallery", "list", data=data).stdout


async def enrol(url: str, name: str, *files: Path, headers: dict | None = None) -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("name", name)
    for path in files:
        form.add_field("file", path.read_bytes(), filename=path.name, content_type="application/octet-stream")
    async with aiohttp.ClientSession() as http, http.post(f"{url}/api/gallery", data=form, headers=headers) as r:
        return r.status, await r.json()


async def delete(url: str, name: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.delete(f"{url}/api/gallery/{name}") as r:
        return r.status, await r.json()


def test_gallery_routes(server_factory, photos):
    server = server_factory()

    async def scenario() -> None:
        status, first = await enrol(server.url, "Obama", photos["obama"])
        assert (status, first["name"], first["images"]) == (201, "Obama", 1) and re.fullmatch(r"[0-9a-f]{12}", first["id"])
        # the same person by any spelling of the name (its key): one person, two photos
        assert await enrol(server.url, "OBAMA", photos["obama"]) == (201, {"id": first["id"], "name": "Obama", "images": 2})
        _, listed = await http_json(f"{server.url}/api/gallery")
        assert [(p["id"], p["name"], p["images"]) for p in listed["people"]] == [(first["id"], "Obama", 2)]
        assert await enrol(server.url, "Grey", photos["blank"]) == (422, {"error": {"code": "invalid_media", "message":
            "blank.png: no face found; use a photo where the face is clearly visible, from the front"}})  # fmt: skip
        assert await enrol(server.url, "Notes", photos["text"]) == (422, {"error": {"code": "invalid_media", "message":
            "notes.txt is not a photo; send a JPEG, PNG or WebP image of the person's face"}})  # fmt: skip
        # an image bomb: refused from its header, before anything decodes it
        assert await enrol(server.url, "Bomb", photos["bomb"]) == (413, {"error": {"code": "too_large", "message":
            "bomb.png declares 50000x50000 = 2500000000 pixels, more than max_snapshot_pixels=40000000"}})  # fmt: skip
        status, body = await enrol(server.url, "", photos["obama"])
        assert (status, body["error"]["message"]) == (400, "a person needs a name (1-100 characters)")
        status, body = await enrol(server.url, "Obama", photos["obama"], headers={"Origin": "http://evil.example"})
        assert status == 403 and body["error"]["code"] == "unauthorized"
        assert await delete(server.url, "Nobody") == (404, {"error": {"code": "not_found", "message":
            "the gallery holds no person 'Nobody' (neither an id nor a name)"}})  # fmt: skip
        assert await delete(server.url, first["id"]) == (200, {"ok": True, "id": first["id"], "name": "Obama",
                                                               "images_removed": 2})  # fmt: skip
        assert (await http_json(f"{server.url}/api/gallery"))[1] == {"people": []}

    run(scenario())


def names_per_frame(frames: list[dict]) -> list[list[str | None]]:
    return [[(face.get("identity") or {}).get("name") for face in f.get("faces") or []] for f in frames]


TWICE_REAL_TIME = 0.125  # s between 250 ms blobs


async def live_frames(url: str, session_id: str, count: int) -> list[dict]:
    async def ready():
        _, detail = await http_json(f"{url}/api/sessions/{session_id}/landmarks")
        return detail["frames"] if len(detail["frames"]) == count else None

    return await wait_until(ready, f"landmarks of {count} frames")


def test_live_identity_of_one_person_nobody_and_two_people(server_factory, tmp_path, photos):
    data = tmp_path / "data"
    server = server_factory(data=data, env=NO_SKIP)

    async def stopped(session: dict) -> dict:
        async with Client(server.url) as client:
            await client.stop(session)
        return await wait_for_summary(f"{server.url}/api/sessions/{session['session_id']}",
                                      lambda s: s["finalized"] and "fill" not in s, "session done")  # fmt: skip

    async def scenario() -> None:
        # someone who is not enrolled: no identity on any frame
        assert (await enrol(server.url, "Far", photos["far"]))[0] == 201
        session = await record(server.url, WEBCAM, TWICE_REAL_TIME, stop=False)
        summary = await stopped(session)
        frames = await live_frames(server.url, summary["id"], summary["frames"])
        assert summary["frames_with_faces"] >= 0.9 * summary["frames"]
        assert all(name is None for names in names_per_frame(frames) for name in names)

        # the gallery changes while a session records: the next frames carry the name
        session = await record(server.url, WEBCAM, TWICE_REAL_TIME, last=10, stop=False)
        assert (await enrol(server.url, "Obama", photos["obama"]))[0] == 201
        await record(server.url, WEBCAM, TWICE_REAL_TIME, session=session, first=10, stop=False)
        summary = await stopped(session)
        frames = await live_frames(server.url, summary["id"], summary["frames"])
        names = names_per_frame(frames)
        with_face = [n for n in names if n]
        named = [n for n in with_face if n == ["Obama"]]
        assert len(named) >= 0.5 * len(with_face)  # from the enrolment on
        assert names[-1] == ["Obama"] and all(n in ([], ["Obama"], [None]) for n in names)
        first_named = next(i for i, n in enumerate(names) if n == ["Obama"])
        assert all(n != [None] for n in names[first_named:])  # once named, named along the track
        identity = next(face["identity"] for f in frames for face in f.get("faces") or [] if face.get("identity"))
        assert set(identity) == {"name", "distance"} and 0 <= identity["distance"] <= 0.6

        # one enrolled person: named on >= 90% of the frames with a face
        session = await record(server.url, WEBCAM, TWICE_REAL_TIME, stop=False)
        summary = await stopped(session)
        frames = await live_frames(server.url, summary["id"], summary["frames"])
        names = [n for n in names_per_frame(frames) if n]
        assert sum(1 for n in names if n == ["Obama"]) >= 0.9 * len(names)
        assert all(n == ["Obama"] or n == [None] for n in names)

        # two people, both enrolled: each face its own name
        session = await record(server.url, TWO_PEOPLE, TWICE_REAL_TIME, stop=False)
        summary = await stopped(session)
        frames = await live_frames(server.url, summary["id"], summary["frames"])
        pairs = [f for f in frames if len(f.get("faces") or []) == 2]
        assert len(pairs) >= 0.9 * summary["frames"]
        right = 0
        for frame in pairs:
            by_size = sorted(frame["faces"], key=lambda face: -face["box"][2])  # the near face is the large one
            right += [(face.get("identity") or {}).get("name") for face in by_size] == ["Obama", "Far"]
        assert right >= 0.9 * len(pairs), f"{right} of {len(pairs)}"
        return summary["id"]

    two_people = run(scenario())
    server.stop()

    # batch: the same names as live with the same gallery; re-identified with the current one
    landmarks = data / "sessions" / two_people / "landmarks.jsonl"
    live = read_landmarks(landmarks)
    result = cli("reprocess", two_people, "--workers", "2", data=data)
    assert result.returncode == 0, result.stderr
    assert read_landmarks(landmarks) == live
    assert cli("gallery", "remove", "Far", data=data).returncode == 0
    assert cli("reprocess", two_people, "--workers", "2", data=data).returncode == 0
    after = read_landmarks(landmarks)
    assert {n for names in names_per_frame(after) for n in names} <= {"Obama", None}
    assert sum(1 for names in names_per_frame(after) if "Obama" in names) >= 0.9 * len(after)
    meta = json.loads((data / "sessions" / two_people / "landmarks.meta.json").read_text())
    assert meta["identity_threshold"] == 0.6 and meta["identify_every"] == 90


def test_export_overlay_writes_names_above_identified_faces():
    from ingest.media.overlay import draw

    face = {"box": [100, 120, 120, 120], "points": [[130 + i % 10, 160 + i // 10] for i in range(68)]}
    frames = {}
    for key, extra in {"plain": {}, "named": {"identity": {"name": "Obama", "distance": 0.1}},
                       "unknown": {"identity": None}}.items():  # fmt: skip
        bgr = np.full((300, 400, 3), 90, np.uint8)
        draw(bgr, [{**face, **extra}], "landmarks")
        frames[key] = bgr
    label = (slice(90, 120), slice(100, 220))  # above the box
    assert (frames["plain"][label] == 90).all()  # not identified: no label
    assert (frames["named"][label] != 90).any() and (frames["unknown"][label] != 90).any()
    assert not np.array_equal(frames["named"][label], frames["unknown"][label])  # "Obama" vs "unknown"
    for key in frames:  # below the label, the same landmarks drawing
        assert np.array_equal(frames[key][120:], frames["plain"][120:])
    none = np.full((300, 400, 3), 90, np.uint8)
    draw(none, [{**face, "identity": {"name": "Obama", "distance": 0.1}}], "none")
    assert (none == 90).all()


def test_snapshots_are_identified(server_factory, photos):
    from ingest.client import CamingestClient

    server = server_factory()

    async def scenario() -> None:
        assert (await enrol(server.url, "Obama", photos["obama"]))[0] == 201
        async with CamingestClient(server.url) as client:
            session = await client.start(WEBCAM.meta["mime"])
            await session.send_stream(WEBCAM.chunks[:2])
            known = await session.snapshot(photos["obama"].read_bytes())
            stranger = await session.snapshot(photos["far"].read_bytes())
            await wait_until(lambda: {known, stranger} <= set(session.snapshot_faces), "both snapshots' faces", 60,
                             seen=lambda: session.snapshot_faces)  # fmt: skip
            await session.stop()
        (face,) = session.snapshot_faces[known]
        assert face["identity"]["name"] == "Obama" and face["identity"]["distance"] < 0.3
        (face,) = session.snapshot_faces[stranger]
        assert face["identity"] is None  # identified, nobody matched: "unknown"

    run(scenario())
