"""SIGINT/SIGTERM shut the server down in seconds with clients connected; a second SIGINT exits at
once and the data folder stays intact (issue 9)."""

from __future__ import annotations

import asyncio
import signal
import time

from tests.client import Client, http_get, run, wait_until
from tests.conftest import load_recording

CHUNKS = load_recording("webcam_vp8_kf1s_250ms").chunks


def test_shutdown_with_connected_clients_closes_them_and_exits_0(server_factory, tmp_path):
    data = tmp_path / "data"
    server = server_factory(data=data)

    async def scenario() -> float:
        async with Client(server.url) as recording, Client(server.url) as idle:
            session = await recording.start()
            await recording.send_all(session, CHUNKS[:5])
            assert idle.sio.connected
            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(server.proc.wait, 60)
            return time.monotonic() - started

    took = run(scenario())
    assert server.proc.returncode == 0
    # the connections were closed by the server after the grace (the recording client never
    # stopped): the log's last shutdown steps, in order; how long it takes is bench/'s business
    log = server.log.read_text()
    steps = ["shutdown: connections closed", "shutdown: finalizes done", "shutdown: analysis workers stopped",
             "shutdown: index closed"]  # fmt: skip
    assert [log.find(step) >= 0 for step in steps] == [True] * 4, log[-2000:]
    assert [log.find(step) for step in steps] == sorted(log.find(step) for step in steps), log[-2000:]
    print(f"SIGTERM to exit with two clients connected: {took:.1f} s (shutdown_grace_s 5)")


def test_second_sigint_exits_at_once_and_keeps_the_data(server_factory, tmp_path):
    data = tmp_path / "data"
    server = server_factory(data=data)

    async def scenario() -> str:
        async with Client(server.url) as client:
            session = await client.start()
            await client.send_all(session, CHUNKS[:8])
            server.proc.send_signal(signal.SIGINT)

            async def shutting_down() -> bool:
                return "shutdown: connections closed" in server.log.read_text()

            await wait_until(shutting_down, "the first SIGINT started the shutdown")
            server.proc.send_signal(signal.SIGINT)  # impatient: a second Ctrl-C
            started = time.monotonic()
            await asyncio.to_thread(server.proc.wait, 30)
            assert time.monotonic() - started <= 1
            return session["session_id"]

    session_id = run(scenario())
    assert server.proc.returncode == 130
    restarted = server_factory(data=data)
    status, raw, _ = run(http_get(f"{restarted.url}/api/sessions/{session_id}/raw.webm"))
    assert status == 200 and raw == b"".join(CHUNKS[:8])
