"""Webhooks never in the way of acks (issue 24): N recorders at the browser's pace (a chunk every
250 ms, a new session every --session-chunks chunks, so events keep coming), against a server
without webhooks and against one whose receiver never answers (or answers 500, or 200), runs
interleaved A, B, A, B; ack p50/p95/p99, refusals, and what the outbox held at the end.

    python bench/webhook_bench.py --clients 20 --seconds 15 --modes none hang none hang
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import chunks_of, machine_notes, percentile, send_paced, start_server
from ingest.client import CamingestClient

SECRET = "whsec-bench-0123456789abcdef0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def receiver(mode: str) -> tuple[web.AppRunner, str]:
    async def hook(request: web.Request) -> web.Response:
        await request.read()
        if mode == "hang":
            await asyncio.sleep(3600)
        return web.Response(status=500 if mode == "fail" else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook"


async def recorder(url: str, chunks: list[bytes], per_session: int, deadline: float, latencies: list[float],
                   errors: list[str]) -> int:  # fmt: skip
    sessions = 0
    async with CamingestClient(url, reconnect=False) as client:
        await asyncio.sleep(random.random() * 0.25)
        while time.monotonic() < deadline:
            session = await client.start("video/webm;codecs=vp8")
            sessions += 1
            await send_paced(session, chunks[:per_session], deadline, latencies, errors)
    return sessions


async def outbox_depth(url: str) -> float | None:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith("camingest_webhook_outbox_depth "):
                return float(line.split()[1])
    return None


async def run(mode: str, clients: int, seconds: float, per_session: int) -> dict:
    chunks = chunks_of("webcam_vp8_kf1s_250ms")
    runner, hook = await receiver(mode) if mode != "none" else (None, "")
    extra = ("--webhook", hook, "--webhook-secret", SECRET) if mode != "none" else ()
    with tempfile.TemporaryDirectory() as data:
        proc, url = start_server(Path(data), "--no-analysis", *extra, env={"CAMINGEST_WEBHOOK_TIMEOUT_S": "5"})
        try:
            latencies: list[float] = []
            errors: list[str] = []
            deadline = time.monotonic() + seconds
            sessions = await asyncio.gather(*(recorder(url, chunks, per_session, deadline, latencies, errors)
                                              for _ in range(clients)))  # fmt: skip
            depth = await outbox_depth(url) if mode != "none" else None
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            if runner is not None:
                await runner.cleanup()
    return {
        "mode": mode, "clients": clients, "seconds": seconds, "sessions": sum(sessions), "acks": len(latencies),
        "refused": len(errors), "busy": errors.count("busy"), "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2), "p99_ms": round(percentile(latencies, 99), 2),
        "outbox_depth_at_end": depth,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--session-chunks", type=int, default=8, help="chunks per session (2 s): events keep coming")
    parser.add_argument("--modes", nargs="+", default=["none", "hang", "none", "hang"],
                        choices=["none", "hang", "fail", "ok"])  # fmt: skip
    args = parser.parse_args()
    print(f"# {machine_notes()}")
    for mode in args.modes:
        print(json.dumps(asyncio.run(run(mode, args.clients, args.seconds, args.session_chunks))), flush=True)


if __name__ == "__main__":
    main()
