"""Sessions in S3-compatible object storage with the index in PostgreSQL (issue 22), on the real
engines (tests/engines.py: PostgreSQL 15, SeaweedFS's S3 API): what is stored, durable_seq, and
the faults recovered from while the server runs or after it is killed."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.client import Client, http_get, http_json, run, wait_for_summary, wait_until
from tests.conftest import RECORDING_NAMES, ServerProcess, ffprobe_frames, free_port, load_recording


def engine_server(tmp_path: Path, postgres: Any, s3: Any, *extra: str, data: Path | None = None, port: int = 0,
                  env: dict[str, str] | None = None) -> ServerProcess:  # fmt: skip
    return ServerProcess(
        data or tmp_path / "data", "--index", postgres.dsn, "--store", s3.store_url, "--s3-endpoint", s3.endpoint,
        *extra, env={**s3.env, "CAMINGEST_SEGMENT_S": "1", **(env or {})}, port=port,
    ).start()  # fmt: skip


def segments(s3: Any, session_id: str) -> list[tuple[int, int, str]]:
    out = []
    for key in s3.keys(f"sessions/{session_id}/segments/"):
        first, last = key.rsplit("/", 1)[1].split("-")
        out.append((int(first), int(last), key))
    return sorted(out)


def joined_segments(s3: Any, session_id: str) -> bytes:
    """The segments in seq order, checked to follow each other without gap or overlap."""
    client, expected, data = s3.client(), 0, b""
    for first, last, key in segments(s3, session_id):
        assert first == expected, f"segments of {session_id}: {segments(s3, session_id)}"
        data += client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        expected = last + 1
    return data


def index_row(dsn: str, session_id: str) -> dict[str, Any]:
    with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row) as conn:
        row = conn.execute("SELECT * FROM sessions WHERE id = %s", (session_id,)).fetchone()
    assert row is not None
    return row


@pytest.mark.slow
def test_every_fixture_recorded_into_the_object_store(postgres, s3, tmp_path):
    """Raw bytes from GET equal what was sent, frames equal ffprobe's, and the objects under the
    session's prefix are exactly its segments, recording, landmarks and snapshots."""
    server = engine_server(tmp_path, postgres, s3)

    async def scenario() -> None:
        async with Client(server.url) as client:
            for name in RECORDING_NAMES:
                recording = load_recording(name)
                session = await client.start(recording.meta["mime"])
                await client.send_all(session, recording.chunks)
                snapshots = [await client.call("snapshot", {**session_ids(session), "mime": mime(p),
                                                            "data": p.read_bytes()}) for p in recording.snapshots[:2]]  # fmt: skip
                assert all(ack["ok"] for ack in snapshots), snapshots
                stopped = await client.stop(session)
                assert stopped["session"]["durable_seq"] == len(recording.chunks) - 1  # the tail went up at stop
                sid = session["session_id"]
                base = f"{server.url}/api/sessions/{sid}"
                summary = await wait_for_summary(
                    base, lambda s: s["finalized"] and "fill" not in s and s["skipped_frames"] == 0, f"{name} done"
                )
                assert summary["frames"] == recording.expected["video_frames"]
                status, raw, _ = await http_get(base + "/raw.webm")
                assert (status, raw) == (200, recording.stream)
                assert joined_segments(s3, sid) == recording.stream

                async def uploaded(sid: str = sid, summary: dict[str, Any] = summary) -> list[str] | None:
                    keys = [k.split(f"{sid}/", 1)[1] for k in s3.keys(f"sessions/{sid}/") if "/segments/" not in k]
                    expected = {"recording.webm", "landmarks.jsonl", "landmarks.meta.json"}
                    expected |= {f"snapshots/{s['snapshot_id']}.{s['mime'].split('/')[1].replace('jpeg', 'jpg')}"
                                 for s in summary["snapshots"]}  # fmt: skip
                    expected |= {f"snapshots/{s['snapshot_id']}.landmarks.json" for s in summary["snapshots"]}
                    return sorted(keys) if set(keys) == expected and index_row(postgres.dsn, sid)["uploaded_gen"] == \
                        index_row(postgres.dsn, sid)["changed_gen"] else None  # fmt: skip

                await wait_until(uploaded, f"{name}: derived files in object storage")
                recording_file = tmp_path / f"{name}.webm"
                recording_file.write_bytes(s3.client().get_object(
                    Bucket=s3.bucket, Key=f"sessions/{sid}/recording.webm")["Body"].read())  # fmt: skip
                assert ffprobe_frames(recording_file) == recording.expected["video_frames"]

    try:
        run(scenario())
    finally:
        server.stop()


def session_ids(session: dict[str, Any]) -> dict[str, str]:
    return {"session_id": session["session_id"], "token": session["token"]}


def mime(path: Path) -> str:
    return "image/png" if path.suffix == ".png" else "image/jpeg"


def test_store_stopped_mid_recording_loses_nothing(postgres, s3, tmp_path):
    """SeaweedFS stopped for 20 s while a session records at its pace: every chunk is acked all
    along, durable_seq stalls and then catches up, and the segments concatenate to the raw stream."""
    server = engine_server(tmp_path, postgres, s3, "--no-analysis")
    recording = load_recording("webcam_vp8_kf1s_250ms")

    async def scenario() -> None:
        async with Client(server.url) as client:
            session = await client.start(recording.meta["mime"])
            acks = []
            for seq, chunk in enumerate(recording.chunks):
                if seq == 4:
                    await asyncio.to_thread(s3.stop)
                    outage_started = asyncio.get_running_loop().time()
                ack = await client.chunk(session, seq, chunk)
                assert ack["ok"], ack
                acks.append(ack)
                if seq == len(recording.chunks) - 4:  # 20 s after the store went away: back
                    await asyncio.sleep(max(0.0, 20 - (asyncio.get_running_loop().time() - outage_started)))
                    await asyncio.to_thread(s3.start)
                else:
                    await asyncio.sleep(0.8)
            stalled = [a["durable_seq"] for a in acks[4 : len(recording.chunks) - 3]]
            assert stalled == [stalled[0]] * len(stalled) and stalled[0] < 4, [a["durable_seq"] for a in acks]
            stopped = await client.stop(session)
            sid = session["session_id"]

            async def caught_up() -> int | None:
                _, summary = await http_json(f"{server.url}/api/sessions/{sid}")
                return summary["durable_seq"] if summary["durable_seq"] == len(recording.chunks) - 1 else None

            await wait_until(caught_up, "durable_seq caught up after the store came back", timeout=90)
            assert stopped["session"]["chunks"] == len(recording.chunks)
            assert joined_segments(s3, sid) == recording.stream
            _, raw, _ = await http_get(f"{server.url}/api/sessions/{sid}/raw.webm")
            assert raw == recording.stream

    try:
        run(scenario())
    finally:
        server.stop()
    assert "uploads paused: object storage" in server.log.read_text()


def test_kill_during_a_segment_upload_uploads_the_same_segment(postgres, s3, tmp_path):
    """The server killed (-9) while a planned segment could not be uploaded: after the restart the
    same segment (the same key) is uploaded, none under another key, and nothing acked is lost."""
    port, data = free_port(), tmp_path / "data"
    recording = load_recording("webcam_vp8_opus_250ms")
    server = engine_server(tmp_path, postgres, s3, "--no-analysis", data=data, port=port)

    async def first_half() -> dict[str, Any]:
        async with Client(server.url) as client:
            session = await client.start(recording.meta["mime"])
            await client.send_all(session, recording.chunks[:6])
            await wait_until(lambda: _durable(server.url, session["session_id"], 5), "the first chunks durable")
            await asyncio.to_thread(s3.stop)
            await client.send_all(session, recording.chunks[6:12], first_seq=6)

            async def planned() -> str | None:
                return index_row(postgres.dsn, session["session_id"])["segment_plan"]

            plan = await wait_until(planned, "a segment planned while the store is away")
            session["plan"] = plan
            return session

    session = run(first_half())
    server.kill()
    s3.start()
    server = engine_server(tmp_path, postgres, s3, "--no-analysis", data=data, port=port)

    async def second_half() -> None:
        async with Client(server.url) as client:
            resumed = await client.call("start", {"resume": session_ids(session)})
            assert resumed["next_seq"] == 12
            await client.send_all(session, recording.chunks[12:], first_seq=12)
            await client.stop(session)
        first, last = (int(v) for v in session["plan"].split("-"))
        assert (first, last, f"sessions/{session['session_id']}/segments/{first:08d}-{last:08d}") in segments(
            s3, session["session_id"])  # fmt: skip
        assert joined_segments(s3, session["session_id"]) == recording.stream

    try:
        run(second_half())
    finally:
        server.stop()


async def _durable(url: str, session_id: str, seq: int) -> bool:
    _, summary = await http_json(f"{url}/api/sessions/{session_id}")
    return summary["durable_seq"] >= seq


def test_a_node_that_lost_its_disk_gets_the_rest_from_the_client(postgres, s3, tmp_path):
    """The data folder removed while the server is down: it comes back empty, restores what object
    storage has, and the resume answers next_seq = durable_seq + 1; the client resends from its
    memory and the stored stream equals the recording."""
    port, data = free_port(), tmp_path / "data"
    recording = load_recording("webcam_vp8_opus_250ms")
    server = engine_server(tmp_path, postgres, s3, "--no-analysis", data=data, port=port)

    async def record_some() -> tuple[dict[str, Any], int]:
        async with Client(server.url) as client:
            session = await client.start(recording.meta["mime"])
            await client.send_all(session, recording.chunks[:8])
            await wait_until(lambda: _durable(server.url, session["session_id"], 7), "chunks 0-7 durable")
            await asyncio.to_thread(s3.stop)  # the next ones are acked, never uploaded
            await client.send_all(session, recording.chunks[8:14], first_seq=8)
            _, summary = await http_json(f"{server.url}/api/sessions/{session['session_id']}")
            return session, summary["durable_seq"]

    session, durable = run(record_some())
    assert durable == 7
    server.kill()
    shutil.rmtree(data)
    s3.start()
    server = engine_server(tmp_path, postgres, s3, "--no-analysis", data=data, port=port)

    async def resume() -> None:
        async with Client(server.url) as client:
            resumed = await client.call("start", {"resume": session_ids(session)})
            assert (resumed["ok"], resumed["next_seq"], resumed["durable_seq"]) == (True, 8, 7), resumed
            await client.send_all(session, recording.chunks[8:], first_seq=8)
            await client.stop(session)
        _, raw, _ = await http_get(f"{server.url}/api/sessions/{session['session_id']}/raw.webm")
        assert raw == recording.stream
        assert joined_segments(s3, session["session_id"]) == recording.stream

    try:
        run(resume())
    finally:
        server.stop()
    assert "were not in object storage; next_seq is 8" in server.log.read_text()


def test_postgres_restarted_mid_recording_answers_busy_then_acks(postgres, s3, tmp_path):
    """PostgreSQL restarted while chunks arrive: those in flight get `busy` (never `internal`),
    the client's retries are acked, and the stored stream is the recording."""
    server = engine_server(tmp_path, postgres, s3, "--no-analysis")
    recording = load_recording("webcam_vp8_opus_250ms")

    async def scenario() -> None:
        async with Client(server.url) as client:
            session = await client.start(recording.meta["mime"])
            codes = []
            seq = 0
            while seq < len(recording.chunks):
                if seq == 5 and not codes:
                    await asyncio.to_thread(postgres.stop)
                    codes.append("stopped")
                ack = await client.chunk(session, seq, recording.chunks[seq])
                if ack["ok"]:
                    seq += 1
                    continue
                codes.append(ack["error"]["code"])
                assert ack["error"]["code"] == "busy", ack
                if len(codes) == 3:
                    await asyncio.to_thread(postgres.start)
                await asyncio.sleep(0.2)
            assert codes[:3] == ["stopped", "busy", "busy"]
            await client.stop(session)
        _, raw, _ = await http_get(f"{server.url}/api/sessions/{session['session_id']}/raw.webm")
        assert raw == recording.stream

    try:
        run(scenario())
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()


def test_evicted_sessions_are_read_back_from_object_storage(postgres, s3, tmp_path):
    """With a local cache smaller than one session, a stopped session wholly uploaded leaves the
    local disk and every route still serves it, fetched back from object storage."""
    server = engine_server(tmp_path, postgres, s3, "--no-analysis",
                           env={"CAMINGEST_LOCAL_CACHE_BYTES": "1", "CAMINGEST_EVICT_QUIET_S": "0"})  # fmt: skip
    recording = load_recording("webcam_h264_250ms")

    async def scenario() -> None:
        async with Client(server.url) as client:
            session = await client.start(recording.meta["mime"])
            await client.send_all(session, recording.chunks)
            await client.stop(session)
        sid = session["session_id"]
        base = f"{server.url}/api/sessions/{sid}"
        await wait_for_summary(base, lambda s: s["finalized"], "finalized")

        async def evicted() -> bool:
            return not (server.data / "sessions" / sid).exists()

        await wait_until(evicted, "the session evicted from the local cache")
        status, raw, _ = await http_get(base + "/raw.webm")
        assert (status, raw) == (200, recording.stream)
        status, final, _ = await http_get(base + "/recording.webm")
        path = tmp_path / "final.mkv"
        path.write_bytes(final)
        assert status == 200 and ffprobe_frames(path) == recording.expected["video_frames"]
        status, chunk, _ = await http_get(base + "/chunks/3")
        assert (status, chunk) == (200, recording.chunks[3])

    try:
        run(scenario())
    finally:
        server.stop()
    assert "fetched from object storage" in server.log.read_text()


def test_migrate_a_data_folder(postgres, s3, tmp_path, clip):
    """A data folder with 5 sessions (one still recording, one with snapshots, one imported) and a
    gallery person, migrated into PostgreSQL + object storage: listings, bytes and landmarks are
    equal before and after; a second run copies nothing again."""
    import os
    import subprocess
    import sys

    from tests.conftest import IMAGES, ROOT

    source = tmp_path / "source"
    server = ServerProcess(source).start()
    names = ["webcam_vp8_opus_250ms", "webcam_vp8_kf1s_250ms", "webcam_h264_250ms"]

    async def fill_source() -> list[str]:
        async with Client(server.url) as client:
            ids = []
            for name in names:
                recording = load_recording(name)
                session = await client.start(recording.meta["mime"])
                await client.send_all(session, recording.chunks)
                for path in recording.snapshots[:2]:
                    ack = await client.call("snapshot", {**session_ids(session), "mime": mime(path), "data": path.read_bytes()})
                    assert ack["ok"], ack
                await client.stop(session)
                ids.append(session["session_id"])
            recording = load_recording("webcam_vp9_opus_250ms")
            still = await client.start(recording.meta["mime"])  # left recording
            await client.send_all(still, recording.chunks[:5])
            ids.append(still["session_id"])
        for sid in ids[:3]:
            await wait_for_summary(f"{server.url}/api/sessions/{sid}",
                                   lambda s: s["finalized"] and "fill" not in s and s["skipped_frames"] == 0, "done")  # fmt: skip
        return ids

    ids = run(fill_source())
    server.stop()
    env = {**os.environ, **s3.env, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "ingest.cli"]
    imported = subprocess.run([*base, "import", str(clip), "--data", str(source)], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=600)  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    added = subprocess.run([*base, "gallery", "add", "Obama", str(IMAGES / "obama.jpg"), "--data", str(source)],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)  # fmt: skip
    assert added.returncode == 0, added.stderr

    def snapshot_of(url: str) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            _, listing = await http_json(f"{url}/api/sessions")
            out: dict[str, Any] = {"sessions": [{k: v for k, v in s.items() if k != "durable_seq"} for s in listing["sessions"]]}
            for s in listing["sessions"]:
                base_url = f"{url}/api/sessions/{s['id']}"
                out[s["id"]] = [(await http_get(base_url + path))[1] for path in ("/raw.webm", "/landmarks")]
                _, detail = await http_json(base_url)
                for snap in detail["snapshots"]:
                    out[s["id"]].append((await http_get(f"{base_url}/snapshots/{snap['snapshot_id']}"))[1])
            out["gallery"] = [(p["name"], p["images"]) for p in (await http_json(f"{url}/api/gallery"))[1]["people"]]
            return out

        return run(read())

    before_server = ServerProcess(source, "--no-analysis").start()
    before = snapshot_of(before_server.url)
    before_server.stop()
    assert len(before["sessions"]) == 5 and before["gallery"] == [("Obama", 1)]

    command = [*base, "migrate", "--from", str(source), "--index", postgres.dsn, "--store", s3.store_url,
               "--s3-endpoint", s3.endpoint, "--data", str(tmp_path / "target")]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("migrated 5 sessions (0 already there, checked) and 1 gallery people"), first.stdout
    again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert again.stdout.startswith("migrated 0 sessions (5 already there, checked)"), again.stdout

    target = engine_server(tmp_path, postgres, s3, "--no-analysis", data=tmp_path / "fresh")
    try:
        after = snapshot_of(target.url)
    finally:
        target.stop()
    assert after == before
    assert sorted(joined_segments(s3, sid) == before[sid][0] for sid in ids) == [True] * 4
