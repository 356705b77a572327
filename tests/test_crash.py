"""kill -9 at any moment loses no acknowledged chunk; a restarted server resumes the session."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest

from ingest.media.decode import UnitDecoder
from tests.client import (
    Client,
    chunk_ack,
    http_get,
    http_json,
    record,
    run,
    wait_for_event,
    wait_for_summary,
    wait_until,
)
from tests.conftest import IMAGES, load_recording

pytestmark = pytest.mark.backends  # also on PostgreSQL + SeaweedFS (README, "Testing")


def test_sigkill_mid_recording_then_resume(server_factory, tmp_path):
    recording = load_recording("webcam_vp8_opus_250ms")
    chunks = recording.chunks
    data = tmp_path / "data"
    server = server_factory("--no-analysis", data=data)

    session = run(record(server.url, recording, pace=0, last=11, stop=False))
    server.kill()
    server = server_factory("--no-analysis", data=data)

    async def second_half() -> None:
        async with Client(server.url) as client:
            resume = {"resume": {"session_id": session["session_id"], "token": session["token"]}}
            ack = await client.call("start", resume)
            durable = 10 if server.durable_on_ack else ack.get("durable_seq")
            assert isinstance(durable, int) and -1 <= durable <= 10, ack
            assert ack == {"ok": True, "session_id": session["session_id"], "token": session["token"], "next_seq": 11,
                           "durable_seq": durable}  # fmt: skip
            # a resend of an acked chunk is still recognised after the restart
            assert (await client.chunk(session, 10, chunks[10]))["ok"]
            for seq in range(11, len(chunks)):
                ack = await client.chunk(session, seq, chunks[seq])
                assert ack == chunk_ack(ack, seq, server.durable_on_ack)
            stopped = await client.stop(session)
            assert stopped["session"]["frames"] == recording.expected["video_frames"]
        base = f"{server.url}/api/sessions/{session['session_id']}"
        _, raw, _ = await http_get(base + "/raw.webm")
        assert raw == recording.stream
        decoder, frames = UnitDecoder(), 0
        for seq in range(len(chunks)):
            _, unit, _ = await http_get(f"{base}/chunks/{seq}.webm")
            frames += sum(1 for _ in decoder.decode(unit))
        assert frames + sum(1 for _ in decoder.flush()) == recording.expected["video_frames"]

    run(second_half())


def test_sigkill_under_load_loses_no_acked_chunk(server_factory, tmp_path):
    """Many sessions send as fast as they can; the server is killed while chunks are in flight.
    Every chunk acknowledged before the kill is served back byte for byte after the restart, and
    files past the acknowledged end are trimmed so that the sessions resume cleanly."""
    recording = load_recording("webcam_vp8_kf1s_250ms")
    chunks = recording.chunks
    data = tmp_path / "data"
    server = server_factory("--no-analysis", data=data)
    acked: dict[str, int] = {}
    sessions: dict[str, dict] = {}

    async def sender(client: Client) -> None:
        session = await client.start()
        sessions[session["session_id"]] = session
        acked[session["session_id"]] = 0
        for seq, chunk in enumerate(chunks):
            ack = await client.chunk(session, seq, chunk)
            if not ack.get("ok"):
                return
            acked[session["session_id"]] = seq + 1

    total = 8 * len(chunks)

    async def load_then_kill() -> None:
        clients = [Client(server.url) for _ in range(8)]
        for client in clients:
            await client.__aenter__()
        tasks = [asyncio.create_task(sender(c)) for c in clients]
        # killed once the load is under way (a quarter of the chunks acked), not after a guess
        await wait_until(lambda: sum(acked.values()) >= total // 4, "a quarter of the chunks acked", 60,
                         seen=lambda: acked, interval=0.01)  # fmt: skip
        server.kill()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            with contextlib.suppress(Exception):
                await client.sio.disconnect()

    run(load_then_kill())
    print(f"killed with {sum(acked.values())} of {total} chunks acked")
    assert total // 4 <= sum(acked.values()) < total  # killed mid-load: chunks were in flight
    server = server_factory("--no-analysis", data=data)

    async def verify() -> None:
        async with Client(server.url) as client:
            for session_id, count in acked.items():
                _, detail = await http_json(f"{server.url}/api/sessions/{session_id}")
                assert detail["chunks"] >= count  # acked ones are there (a commit may beat its ack)
                stored = detail["chunks"]
                _, raw, _ = await http_get(f"{server.url}/api/sessions/{session_id}/raw.webm")
                assert raw == b"".join(chunks[:stored])
                session = sessions[session_id]
                ack = await client.call("start", {"resume": {"session_id": session_id, "token": session["token"]}})
                assert ack["next_seq"] == stored
                for seq in range(stored, len(chunks)):
                    assert (await client.chunk(session, seq, chunks[seq]))["ok"]
                stopped = await client.stop(session)
                assert stopped["session"]["frames"] == recording.expected["video_frames"]
                _, raw, _ = await http_get(f"{server.url}/api/sessions/{session_id}/raw.webm")
                assert raw == recording.stream

    run(verify())


def test_restart_with_analysis_resumes_decoding_from_a_keyframe(server_factory, tmp_path):
    """After kill -9 and resume, the rebuilt decoder starts at a stored keyframe: every frame is
    landmarked exactly once, none twice, none with a face missing for lack of decoder state."""
    recording = load_recording("webcam_vp8_kf1s_250ms")
    chunks, expected = recording.chunks, recording.expected["video_frames"]
    data = tmp_path / "data"
    env = {"CAMINGEST_LIVE_QUEUE_UNITS": "100000"}
    server = server_factory(data=data, env=env)

    session = run(record(server.url, recording, pace=0.1, last=10, stop=False))
    server.kill()
    server = server_factory(data=data, env=env)

    async def second_half() -> None:
        async with Client(server.url) as client:
            ack = await client.call(
                "start", {"resume": {"session_id": session["session_id"], "token": session["token"]}}
            )
            assert ack["next_seq"] == 10
            for seq in range(10, len(chunks)):
                assert (await client.chunk(session, seq, chunks[seq]))["ok"]
            await client.stop(session)
            url = f"{server.url}/api/sessions/{session['session_id']}/landmarks"
            stored = await wait_for_summary(url, lambda s: len(s["frames"]) >= expected, f"stored landmarks of {expected} frames")
        assert [f["index"] for f in stored["frames"]] == list(range(expected))
        with_face = sum(1 for f in stored["frames"] if f.get("faces"))
        assert with_face >= 0.95 * expected

    run(second_half())


def worker_pids(server_pid: int) -> list[int]:
    """The server's analysis worker processes (multiprocessing spawn children)."""
    pids = []
    for child in Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"spawn_main" in cmdline:
            pids.append(int(child))
    return pids


def test_killed_workers_are_replaced_and_sessions_go_on(server_factory, tmp_path):
    """kill -9 of every analysis worker mid-session: new workers take over, each frame still gets
    exactly one result, snapshots are analysed, and the server stays healthy."""
    recording = load_recording("webcam_vp8_kf1s_250ms")
    expected = recording.expected["video_frames"]
    server = server_factory(env={"CAMINGEST_LIVE_QUEUE_UNITS": "100000", "CAMINGEST_WORKERS": "2"})
    assert server.proc is not None
    before = worker_pids(server.proc.pid)
    assert len(before) == 2

    async def scenario() -> tuple[dict, list[dict]]:
        async with Client(server.url) as client:
            session = await record(server.url, recording, client=client, last=9, stop=False)
            for pid in before:  # after the 9th chunk
                os.kill(pid, signal.SIGKILL)
            await record(server.url, recording, client=client, session=session, first=9, stop=False)
            snapshot = await client.call(
                "snapshot", {**{k: session[k] for k in ("session_id", "token")}, "mime": "image/jpeg",
                             "data": (IMAGES / "obama.jpg").read_bytes()},
            )  # fmt: skip
            assert snapshot["ok"], snapshot
            await client.stop(session)
            url = f"{server.url}/api/sessions/{session['session_id']}"
            await wait_for_summary(url, lambda s: s["analysed_frames"] == expected, "every frame analysed")
            await wait_for_event(client, "snapshot_landmarks")
            _, stored = await http_json(url + "/landmarks")
            _, health = await http_json(f"{server.url}/api/health")
            assert health["ok"]
            return client.events["snapshot_landmarks"][0], stored["frames"]

    snapshot, frames = run(scenario())
    assert [f["index"] for f in frames] == list(range(expected))
    assert sum(1 for f in frames if f.get("faces")) >= 0.95 * expected
    assert len(snapshot["faces"]) == 1 and "error" not in snapshot
    after = worker_pids(server.proc.pid)
    assert len(after) == 2 and not set(after) & set(before)
    assert server.log.read_text().count("exited with -9; starting a new one") == 2
