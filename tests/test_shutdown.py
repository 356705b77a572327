"""SIGINT/SIGTERM shut the server down in seconds with clients connected; a second SIGINT exits at
once and the data folder stays intact (issue 9)."""

from __future__ import annotations

import asyncio
import signal
import time

from tests.client import Client, http_get, run, wait_until
from tests.conftest import load_recording

CHUNKS = load_recording("webcam_vp8_kf1s_250ms").chunks


def test_shutdown_with_connected_clients_is_quick(server_factory, tmp_path):
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
    assert took <= 5, f"shutdown took {took:.1f} s"


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
