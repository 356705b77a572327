"""No half-done work after a crash (issue 26, item 4): the server is killed with SIGKILL at each
crash point, started again, and then nothing is left behind (no partial session nobody
acknowledged, no temporary folder) and nothing is forgotten (an upload's landmark fill ends);
recovery logs what it did. The enrolment process dies with its server and is replaced after a
crash of its own."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import psycopg
import pytest

from tests.client import http_json, run, wait_until
from tests.conftest import ROOT, ffprobe_frames, load_recording
from tests.test_gallery_names import enrol
from tests.test_identity import photos  # noqa: F401 -- the identity tests' photos (a fixture)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """An H.264 MP4 of a webcam fixture looped 8 times (1,432 frames, long enough to be killed
    during its import and during its fill)."""
    folder = tmp_path_factory.mktemp("long")
    source, mp4 = folder / "in.webm", folder / "long.mp4"
    source.write_bytes(load_recording("webcam_vp8_kf1s_250ms").stream)
    subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", "7", "-i", str(source), "-an", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(mp4)], check=True)  # fmt: skip
    return mp4


async def summary(url: str, session_id: str) -> dict:
    return (await http_json(f"{url}/api/sessions/{session_id}"))[1]


def test_an_upload_killed_during_its_fill_is_filled_after_the_restart(server_factory, tmp_path, long_clip):
    data = tmp_path / "data"
    frames = ffprobe_frames(long_clip)
    server = server_factory(data=data)

    async def upload_then_some_landmarks() -> str:
        async with aiohttp.ClientSession() as http, http.post(
            f"{server.url}/api/sessions?filename=long.mp4", data=long_clip.read_bytes()
        ) as response:
            created = await response.json()
            assert response.status == 201, created
        await wait_until(lambda: summary(server.url, created["id"]), "the session is listed")

        async def filling() -> int:
            detail = await summary(server.url, created["id"])
            assert "fill" in detail, f"the fill ended before the kill: make the clip longer ({detail})"
            return detail["fill"].get("frames_done", 0)

        done = await wait_until(filling, "the fill has begun", interval=0.02)
        print(f"killed with {done} of {frames} frames filled")
        return created["id"]

    session_id = run(upload_then_some_landmarks())
    server.kill()
    server = server_factory(data=data)

    async def filled() -> dict:
        async def done() -> dict | None:
            detail = await summary(server.url, session_id)
            return detail if detail["analysed_frames"] == frames and "fill" not in detail else None

        return await wait_until(done, f"the {frames} frames' landmarks filled after the restart", 240)

    detail = run(filled())
    assert (detail["state"], detail["frames"], detail["skipped_frames"]) == ("stopped", frames, 0)
    assert len((data / "sessions" / session_id / "landmarks.jsonl").read_text().splitlines()) == frames
    assert not list((data / "sessions" / session_id).glob("*.tmp"))
    log = server.log.read_text()
    assert f"recovery: {session_id}: removed 1 temporary file(s) a killed writer left: landmarks.jsonl." in log
    assert f"filled {frames} frames of {session_id}" in log


def test_an_upload_killed_during_its_import_leaves_nothing(server_factory, tmp_path, long_clip):
    data = tmp_path / "data"
    server = server_factory("--no-analysis", data=data)

    async def killed_mid_import() -> None:
        async with aiohttp.ClientSession() as http:
            upload = asyncio.create_task(http.post(f"{server.url}/api/sessions?filename=long.mp4",
                                                   data=long_clip.read_bytes()))  # fmt: skip
            # its session exists (chunks being committed) and was never acknowledged
            async def importing() -> bool:
                return bool((await http_json(f"{server.url}/api/sessions"))[1]["sessions"])

            await wait_until(importing, "the import's session is listed", 60, interval=0.01)
            server.kill()
            with pytest.raises(aiohttp.ClientError):
                await upload

    run(killed_mid_import())
    (partial,) = [p.name for p in (data / "sessions").iterdir()]
    server = server_factory("--no-analysis", data=data)
    assert run(http_json(f"{server.url}/api/sessions"))[1]["sessions"] == []
    assert not (data / "sessions" / partial).exists()
    for scratch in ("uploads", "tmp"):
        assert not (data / scratch).exists() or not any((data / scratch).iterdir()), scratch
    assert f"recovery: {partial}: removed an import that never completed (never acknowledged)" in server.log.read_text()


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_enrolment_process_is_replaced_after_a_crash_and_dies_with_its_server(server_factory, photos):  # noqa: F811
    server = server_factory("--no-analysis")
    assert server.proc is not None
    before = set(children(server.proc.pid))
    assert run(enrol(server.url, "Ada", photos["obama"]))[0] == 201
    (helper,) = [pid for pid in children(server.proc.pid) if pid not in before and alive(pid)
                 and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()] or [None]  # fmt: skip
    assert helper is not None
    os.kill(helper, signal.SIGKILL)
    run(wait_until(lambda: not alive(helper), "the enrolment process is gone", 10))
    # the next enrolment gets a new process (not 500 until a restart)
    status, body = run(enrol(server.url, "ada", photos["obama"]))
    assert (status, body["images"]) == (201, 2), body
    (replaced,) = [pid for pid in children(server.proc.pid) if pid not in before and alive(pid)
                   and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]  # fmt: skip
    assert replaced != helper
    assert "enrolment: its process died" in server.log.read_text()
    server.kill()
    run(wait_until(lambda: not alive(replaced), "the enrolment process died with its server", 10))


def test_every_child_process_dies_with_a_killed_server(server_factory, photos):  # noqa: F811
    """kill -9 of a server with analysis workers (and its enrolment process) left them all running."""
    server = server_factory()
    assert server.proc is not None
    assert run(enrol(server.url, "Ada", photos["obama"]))[0] == 201
    kids = [pid for pid in children(server.proc.pid) if alive(pid)]
    names = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[3][:40] for pid in kids]
    print(f"children {kids}: {names}")
    assert len(kids) >= 3, names  # two analysis workers and the enrolment process at least
    server.kill()
    run(wait_until(lambda: not [pid for pid in kids if alive(pid)], "every child process is gone", 10,
                   seen=lambda: [pid for pid in kids if alive(pid)]))  # fmt: skip


def test_an_export_killed_mid_way_is_encoded_again_after_the_restart(server_factory, tmp_path, long_clip):
    data = tmp_path / "data"
    frames = ffprobe_frames(long_clip)
    server = server_factory("--no-analysis", data=data)

    async def export_then_kill() -> str:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{server.url}/api/sessions?filename=long.mp4", data=long_clip.read_bytes()) as response:
                session_id = (await response.json())["id"]
            async with http.post(f"{server.url}/api/sessions/{session_id}/exports",
                                 json={"overlay": "none", "format": "mp4"}) as response:  # fmt: skip
                assert response.status == 202, await response.text()

        async def encoding() -> int:
            (job,) = (await http_json(f"{server.url}/api/sessions/{session_id}/exports"))[1]["exports"]
            assert job["state"] == "running", f"the export ended before the kill: make the clip longer ({job})"
            return job["frames_done"] if job["frames_done"] >= 200 else 0  # past x264's lookahead: in the file

        done = await wait_until(encoding, "the export is 200 frames in", 60, interval=0.02)
        print(f"killed with {done} of {frames} frames encoded")
        return session_id

    session_id = run(export_then_kill())
    server.kill()
    exports = data / "sessions" / session_id / "exports"
    assert [p.name for p in exports.iterdir() if p.name.endswith(".tmp")], "a partial export was being written"
    server = server_factory("--no-analysis", data=data)

    async def listed_then_done() -> dict:
        (job,) = (await http_json(f"{server.url}/api/sessions/{session_id}/exports"))[1]["exports"]
        assert job["state"] in ("running", "done"), job  # listed, never forgotten

        async def done() -> dict | None:
            (job,) = (await http_json(f"{server.url}/api/sessions/{session_id}/exports"))[1]["exports"]
            assert job["state"] != "failed", job
            return job if job["state"] == "done" else None

        return await wait_until(done, "the export encoded again", 240)

    job = run(listed_then_done())
    assert job["url"] == f"/api/sessions/{session_id}/exports/none.mp4"
    assert sorted(p.name for p in exports.iterdir()) == ["none.mp4"]  # no partial file, no marker
    assert ffprobe_frames(exports / "none.mp4") == frames
    log = server.log.read_text()
    assert f"recovery: {session_id}: removed 1 temporary file(s) a killed writer left: exports/none.mp4." in log
    assert f"recovery: {session_id}: encoding its export none.mp4 again (a restart interrupted it)" in log


def test_an_interrupted_export_is_listed_from_the_first_moment_of_its_restart(server_factory, tmp_path):
    """Between taking an interrupted export off its queue and recording it as running (start()
    reads the store first), a listing of the session's exports must still show it: CI saw an
    empty list there. ExportJobs on a real store, listed in the same step as resume()."""
    from ingest.server.export_jobs import ExportJobs
    from storage.store import SessionStore

    data = tmp_path / "data"
    server = server_factory("--no-analysis", data=data)
    recording = load_recording("webcam_vp8_kf1s_250ms")

    async def upload() -> str:
        async with aiohttp.ClientSession() as http, http.post(f"{server.url}/api/sessions?filename=a.webm",
                                                              data=recording.stream) as response:  # fmt: skip
            assert response.status == 201, await response.text()
            return (await response.json())["id"]

    session_id = run(upload())
    assert server.stop() == 0
    store = SessionStore(data)
    store.open(recover=False)
    store.want_export(session_id, "none.mp4")  # what an export interrupted by a crash leaves
    jobs = ExportJobs(store)

    async def resume_and_list() -> tuple[list[dict], dict]:
        await jobs.resume()
        first = jobs.list(session_id)  # no await between: the restart's task has not run yet

        async def done() -> dict | None:
            (job,) = await asyncio.to_thread(jobs.list, session_id)
            assert job["state"] != "failed", job
            return job if job["state"] == "done" else None

        return first, await wait_until(done, "the export encoded again", 120)

    try:
        first, last = run(resume_and_list())
    finally:
        jobs.close()
        store.close()
    assert [(j["overlay"], j["format"], j["state"]) for j in first] == [("none", "mp4", "running")]
    assert last["url"] == f"/api/sessions/{session_id}/exports/none.mp4"
    assert ffprobe_frames(data / "sessions" / session_id / "exports" / "none.mp4") == recording.expected["video_frames"]


def test_a_gallery_write_killed_between_photos_and_rows_leaves_no_photo(server_factory, tmp_path, photos):  # noqa: F811
    """The photos are kept before their rows are committed; the kill comes in between: another
    process (a backup, say) holds the index's write lock, so the server's commit waits."""
    data = tmp_path / "data"
    server = server_factory("--no-analysis", data=data)
    images = data / "gallery" / "images"
    locker = sqlite3.connect(data / "index.sqlite3", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # the index's write lock, held

    async def killed_mid_write() -> list[str]:
        enrolling = asyncio.create_task(enrol(server.url, "Ada", photos["obama"]))
        kept = await wait_until(lambda: images.is_dir() and [p.name for p in images.iterdir()],
                                "the photo kept before its row", 60, interval=0.01)  # fmt: skip
        server.kill()
        with pytest.raises(aiohttp.ClientError):
            await enrolling
        return kept

    kept = run(killed_mid_write())
    locker.execute("ROLLBACK")
    assert locker.execute("SELECT COUNT(*) FROM gallery_images").fetchone() == (0,)
    locker.close()
    server = server_factory("--no-analysis", data=data)
    assert run(http_json(f"{server.url}/api/gallery"))[1] == {"people": []}
    assert list(images.iterdir()) == []  # a biometric file nothing could delete, gone
    log = server.log.read_text()
    for name in kept:
        assert f"recovery: removed the gallery photo {name}, which no person holds" in log


@pytest.mark.slow
def test_a_gallery_write_killed_leaves_no_photo_in_object_storage(tmp_path, postgres, s3, photos):  # noqa: F811
    """The same kill with the index in PostgreSQL and photos kept in object storage too: the
    photo in the bucket (a biometric file only an operator with the bucket's keys could find)
    goes with the local one."""
    from tests.test_object_store import engine_server

    data = tmp_path / "data"
    server = engine_server(tmp_path, postgres, s3, "--no-analysis", data=data)
    locker = psycopg.connect(postgres.dsn)
    locker.execute("LOCK TABLE gallery_images IN EXCLUSIVE MODE")  # inserts wait; reads do not

    async def killed_mid_write() -> list[str]:
        enrolling = asyncio.create_task(enrol(server.url, "Ada", photos["obama"]))
        kept = await wait_until(lambda: s3.keys("gallery/"), "the photo in the bucket before its row", 60,
                                interval=0.01)  # fmt: skip
        server.kill()
        with pytest.raises(aiohttp.ClientError):
            await enrolling
        return [key.rsplit("/", 1)[-1] for key in kept]

    try:
        kept = run(killed_mid_write())
    finally:
        locker.rollback()
        locker.close()
    server = engine_server(tmp_path, postgres, s3, "--no-analysis", data=data)
    try:
        assert run(http_json(f"{server.url}/api/gallery"))[1] == {"people": []}
        assert s3.keys("gallery/") == []
        log = server.log.read_text()
        for name in kept:
            assert f"recovery: removed the gallery photo {name} from object storage, which no person holds" in log
    finally:
        server.stop()


def test_a_reprocess_killed_mid_run_takes_its_workers_and_the_server_sweeps_its_file(server_factory, tmp_path):
    """kill -9 of `camingest reprocess` while its pool writes the new landmarks: its workers go
    with it, the previous landmarks are kept, and the next server start removes the new file's
    temporary copy."""
    from tests.test_batch import NO_SKIP, record_live

    data = tmp_path / "data"
    server = server_factory(data=data, env=NO_SKIP)
    session_id = record_live(server, load_recording("scene_vp8_opus_250ms"))
    server.stop()
    folder = data / "sessions" / session_id
    before = (folder / "landmarks.jsonl").read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "ingest.cli", "reprocess", session_id, "--workers", "2", "--data",
                             str(data)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        run(wait_until(lambda: list(folder.glob("landmarks.jsonl.*.tmp")) and len(children(proc.pid)) >= 2,
                       "the reprocess writing with its workers", 120, interval=0.02))  # fmt: skip
        kids = [pid for pid in children(proc.pid) if alive(pid)]
        proc.kill()
        proc.wait(10)
        run(wait_until(lambda: not [pid for pid in kids if alive(pid)], "its workers are gone", 10,
                       seen=lambda: [pid for pid in kids if alive(pid)]))  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (folder / "landmarks.jsonl").read_bytes() == before
    (tmp,) = folder.glob("landmarks.jsonl.*.tmp")
    server = server_factory(data=data)
    assert not tmp.exists()
    assert f"recovery: {session_id}: removed 1 temporary file(s) a killed writer left: {tmp.name}" in server.log.read_text()
    assert (folder / "landmarks.jsonl").read_bytes() == before
