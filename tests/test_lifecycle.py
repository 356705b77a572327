"""Every session ends (stop, `camingest close`, idle expiry), through one path, and no client can
hold the capacity others need (issue 9). Real servers on loopback, real fixtures."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest

from tests.client import Client, http_json, record, run, wait_for_summary
from tests.conftest import ROOT, load_recording

RECORDING = load_recording("webcam_vp8_kf1s_250ms")
CHUNKS = RECORDING.chunks  # 23 blobs, 179 frames
FRAMES = RECORDING.expected["video_frames"]


pytestmark = pytest.mark.backends  # also on PostgreSQL + SeaweedFS (README, "Testing")


def cli(*args: str, data, backend: tuple[tuple[str, ...], dict[str, str]] = ((), {})) -> subprocess.CompletedProcess[str]:
    """``camingest ARGS --data DATA`` with the test's backend flags (conftest ``backend_args``)."""
    flags, env = backend
    return subprocess.run([sys.executable, "-m", "ingest.cli", *args, "--data", str(data), *flags],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, **env})  # fmt: skip


def ended(url: str, session_id: str, ended_by: str):
    return wait_for_summary(
        f"{url}/api/sessions/{session_id}",
        lambda s: s["state"] == "stopped" and s.get("ended_by") == ended_by and s["finalized"],
        f"session {session_id} was not ended by {ended_by}",
    )


def test_one_connection_cannot_take_every_slot(server_factory):
    server = server_factory("--no-analysis", env={"CAMINGEST_MAX_OPEN_SESSIONS": "6"})

    async def scenario() -> None:
        async with Client(server.url) as greedy, Client(server.url) as other:
            for _ in range(4):
                await greedy.start()
            ack = await greedy.call("start", {"mime": "video/webm"})
            assert ack == {"ok": False, "error": {"code": "busy", "message": (
                "this connection is recording 4 sessions, the limit (max_sessions_per_connection) is 4; stop one first"
            )}}  # fmt: skip
            assert (await other.start())["ok"]  # everyone else still gets in

    run(scenario())


def test_sessions_of_vanished_clients_expire_and_free_capacity(server_factory):
    env = {"CAMINGEST_MAX_OPEN_SESSIONS": "5", "CAMINGEST_SESSION_IDLE_S": "1"}
    server = server_factory("--no-analysis", env=env)

    async def scenario() -> None:
        ids = []
        for _ in range(5):  # five clients start, send a little and go away without `stop`
            async with Client(server.url) as client:
                session = await client.start()
                await client.send_all(session, CHUNKS[:3])
                ids.append(session["session_id"])
        async with Client(server.url) as late:
            ack = await late.call("start", {"mime": "video/webm"})
            if not ack["ok"]:  # the reaper may not have passed yet: capacity is full for now
                assert ack["error"]["code"] == "busy"
                assert "max_open_sessions" in ack["error"]["message"]
            for session_id in ids:
                summary = await ended(server.url, session_id, "idle")
                assert summary["chunks"] == 3
            assert (await late.start())["ok"]

    run(scenario())


def test_a_client_that_comes_back_resumes_and_stops(server_factory):
    server = server_factory("--no-analysis", env={"CAMINGEST_SESSION_IDLE_S": "30"})

    async def scenario() -> None:
        async with Client(server.url) as first:
            session = await first.start()
            assert (await first.chunk(session, 0, CHUNKS[0]))["ok"]
        async with Client(server.url) as again:  # a new connection after an outage
            resume = {"session_id": session["session_id"], "token": session["token"]}
            ack = await again.call("start", {"resume": resume})
            assert ack["ok"] and ack["next_seq"] == 1
            assert (await again.chunk(session, 1, CHUNKS[1]))["ok"]
            stopped = await again.stop(session)
            assert stopped["ok"] and stopped["session"]["ended_by"] == "client"
            assert stopped["session"]["chunks"] == 2

    run(scenario())


def test_sessions_left_recording_expire_after_a_restart(server_factory, tmp_path):
    data = tmp_path / "data"
    server = server_factory(data=data)

    session_id = run(record(server.url, RECORDING, pace=0, stop=False))["session_id"]
    server.kill()  # and the client never comes back
    server = server_factory(data=data, env={"CAMINGEST_SESSION_IDLE_S": "1"})
    summary = run(ended(server.url, session_id, "idle"))
    summary = run(wait_for_summary(f"{server.url}/api/sessions/{session_id}",
                                   lambda s: s["analysed_frames"] == FRAMES and "fill" not in s,
                                   "landmarks of the expired session"))  # fmt: skip
    assert summary["skipped_frames"] == 0 and summary["frames"] == FRAMES


def test_kill_right_after_stop_is_finished_after_restart(server_factory, tmp_path):
    """kill -9 0-20 ms after the stop ack: landmarks complete and the recording finalized. The
    delay is random (seeded: CAMINGEST_TEST_SEED=N repeats a run; the seed is printed)."""
    data = tmp_path / "data"
    server = server_factory(data=data)
    seed = int(os.environ.get("CAMINGEST_TEST_SEED", time.time_ns() % 2**32))
    delay = random.Random(seed).uniform(0, 0.02)
    print(f"kill {delay * 1000:.1f} ms after the stop ack (CAMINGEST_TEST_SEED={seed})")

    async def record_and_stop() -> str:
        async with Client(server.url) as client:
            session = await record(server.url, RECORDING, pace=0, client=client)
            time.sleep(delay)  # block the test's loop: nothing else of ours runs before the kill
            server.kill()
            return session["session_id"]

    session_id = run(record_and_stop())
    restarted = server_factory(data=data)
    summary = run(wait_for_summary(
        f"{restarted.url}/api/sessions/{session_id}",
        lambda s: s["analysed_frames"] == FRAMES and s["skipped_frames"] == 0 and "fill" not in s and s["finalized"],
        "landmarks and finalize after the restart",
    ))  # fmt: skip
    assert summary["state"] == "stopped" and summary["ended_by"] == "client"
    lines = (data / "sessions" / session_id / "landmarks.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(FRAMES))


def test_camingest_close_ends_a_session_left_recording(server_factory, tmp_path, backend_args):
    data = tmp_path / "data"
    server = server_factory("--no-analysis", data=data)

    session_id = run(record(server.url, RECORDING, pace=0, last=12, stop=False))["session_id"]
    refused = cli("close", session_id, data=data, backend=backend_args)  # not while a server owns the folder
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (  # the lock names its holder (issue 18)
        f"camingest close: a camingest server (camingest serve, pid {server.proc.pid}, {server.url}/) is running on "
        f"{data}; it ends sessions whose client is gone after session_idle_s (120 s) itself, or stop it first"
    )
    server.stop()
    closed = cli("close", session_id, "--workers", "2", data=data, backend=backend_args)
    assert closed.returncode == 0, closed.stderr
    server = server_factory("--no-analysis", data=data)
    _, summary = run(http_json(f"{server.url}/api/sessions/{session_id}"))
    assert summary["state"] == "stopped" and summary["ended_by"] == "close" and summary["finalized"]
    assert summary["analysed_frames"] == summary["frames"] > 0
    assert closed.stdout.strip().startswith(f"{session_id}: closed; {summary['frames']} frames")
    server.stop()
    again = cli("close", session_id, data=data, backend=backend_args)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1] == f"camingest close: session {session_id} is not recording (it is stopped)"


def test_unknown_session_events_leave_nothing_behind(server_factory):
    """Events for unknown ids are refused; the server keeps no per-id state for them."""
    server = server_factory("--no-analysis")

    async def scenario() -> None:
        async with Client(server.url) as client:
            for i in range(200):
                ack = await client.call("chunk", {"session_id": f"20260101-000000-{i:08x}", "token": "x",
                                                  "seq": 0, "data": b"x"})  # fmt: skip
                assert ack["error"]["code"] == "unknown_session"
            _, health = await http_json(f"{server.url}/api/health")
            assert health["sessions_loading"] == 0

    run(scenario())
