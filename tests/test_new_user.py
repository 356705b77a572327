"""What a new user tripped on with the Python client and the enrolment API (issue 18, items 3
and 6): waiting for complete landmarks, and enrolment that would merge or split people."""

from __future__ import annotations

import json

import aiohttp

from ingest.client import CamingestClient
from tests.client import http_json, run
from tests.conftest import IMAGES, load_recording
from tests.test_batch import cli
from tests.test_identity import photos  # noqa: F401 -- the identity tests' photos (a fixture)

FAST = load_recording("two_people_720p_vp8")  # 720p: live analysis on one worker cannot keep up


def test_stop_can_wait_until_every_frame_has_landmarks(server_factory, tmp_path):
    """A file sent faster than real time: live analysis skips frames, the server fills them after
    stop; ``stop(wait="analysed")`` returns only then, with the final landmarks."""
    server = server_factory("--workers", "1", env={"CAMINGEST_LIVE_QUEUE_UNITS": "1"})
    source = tmp_path / "clip.webm"
    source.write_bytes(FAST.stream)

    async def scenario() -> None:
        async with CamingestClient(server.url) as client:
            session = await client.start(FAST.meta["mime"])
            await session.send_file(source, piece_bytes=50_000)
            summary = await session.stop(wait="analysed")
            skipped_live = sum(1 for f in client.events["landmarks"] for fr in f["frames"] if fr.get("skipped"))
            print(f"skipped live: {skipped_live} of {summary['frames']}")
            frames = summary["frames"]
            assert frames == FAST.expected["video_frames"]
            assert summary["analysed_frames"] == frames and summary["skipped_frames"] == 0 and "fill" not in summary
            assert sorted(session.frames) == list(range(frames))
            assert all("faces" in f and not f.get("skipped") for f in session.frames.values())
            _, stored = await http_json(f"{server.url}/api/sessions/{summary['id']}/landmarks")
            assert [session.frames[i] for i in range(frames)] == stored["frames"]
            if skipped_live:  # the fill happened, and stop waited for it
                assert [e["session_id"] for e in client.events["landmarks_filled"]] == [summary["id"]]

    run(scenario())


def test_stop_wait_rejects_an_unknown_wait(server_factory):
    server = server_factory("--no-analysis")

    async def scenario() -> None:
        async with CamingestClient(server.url) as client:
            session = await client.start("video/webm;codecs=vp8")
            try:
                await session.stop(wait="everything")
            except ValueError as exc:
                assert str(exc) == "wait='everything'; allowed: None (the stop only) or 'analysed'"
            else:
                raise AssertionError("stop(wait='everything') was accepted")

    run(scenario())


async def _enrol(url: str, name: str, photo: bytes, confirm: bool = False, filename: str = "face.jpg") -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("name", name)
    form.add_field("file", photo, filename=filename)
    if confirm:
        form.add_field("confirm", "1")
    async with aiohttp.ClientSession() as http, http.post(url + "/api/gallery", data=form) as response:
        return response.status, json.loads(await response.read())


def test_enrolment_warns_when_the_face_is_someone_else_or_the_name_is_taken(server_factory, photos):  # noqa: F811
    """The snapshot's face already matched "Barack Obama" at 0.08, and was enrolled as "Snapshot
    Person" without a word: now a 409 says whom it matches, and only confirm=1 enrols it; a name
    already taken by another face is said too."""
    server = server_factory("--no-analysis")
    photo = (IMAGES / "obama.jpg").read_bytes()

    async def scenario() -> None:
        status, body = await _enrol(server.url, "Barack Obama", photo)
        assert status == 201 and body == {"name": "Barack Obama", "images": 1}
        status, body = await _enrol(server.url, "Snapshot Person", photo)
        assert status == 409, body
        error = body["error"]
        assert error["code"] == "conflict"
        assert error["message"] == (
            "this face looks like Barack Obama (distance 0.00, a match below 0.6): enrolled as Snapshot Person it "
            "would be named either; add it to Barack Obama, or send confirm=1 to enrol a new person anyway"
        )
        assert error["matches"] == [{"name": "Barack Obama", "distance": 0.0}]
        _, people = await http_json(server.url + "/api/gallery")
        assert [p["name"] for p in people["people"]] == ["Barack Obama"]  # nothing enrolled
        status, body = await _enrol(server.url, "Snapshot Person", photo, confirm=True)
        assert status == 201 and body["name"] == "Snapshot Person"
        # more photos of the same person: no question
        status, body = await _enrol(server.url, "Barack Obama", photo)
        assert status == 201 and body["images"] == 2
        # another face under a name already taken: two people, one name
        status, body = await _enrol(server.url, "Barack Obama", photos["far"].read_bytes(), filename="far.png")
        assert status == 409, body
        same = body["error"]["same_name"]
        assert same["name"] == "Barack Obama" and same["distance"] > 0.6 and body["error"]["matches"] == []
        assert body["error"]["message"] == (
            f"the gallery already holds Barack Obama, whose photos do not look like this face (distance "
            f"{same['distance']:.2f}, more than 0.6): two people would share one name; choose another name, or send "
            "confirm=1 to add it to Barack Obama anyway"
        )
        _, people = await http_json(server.url + "/api/gallery")
        assert {p["name"]: p["images"] for p in people["people"]} == {"Barack Obama": 2, "Snapshot Person": 1}

    run(scenario())


def test_gallery_add_on_the_command_line_asks_for_confirm_too(tmp_path):
    data = tmp_path / "data"
    photo = str(IMAGES / "obama.jpg")
    assert cli("gallery", "add", "Barack Obama", photo, data=data).returncode == 0
    again = cli("gallery", "add", "Snapshot Person", photo, data=data)
    assert again.returncode == 1
    assert again.stderr == (
        "camingest gallery: this face looks like Barack Obama (distance 0.00, a match below 0.6): enrolled as "
        "Snapshot Person it would be named either; add it to Barack Obama, or run it again with --confirm to enrol "
        "a new person anyway\n"
    )
    confirmed = cli("gallery", "add", "Snapshot Person", photo, "--confirm", data=data)
    assert confirmed.returncode == 0 and confirmed.stdout == "enrolled Snapshot Person: 1 photo\n"
