"""Ingest benchmarks: reframing throughput, and ack latency of N recorders at real-time pace.

    python bench/ingest_bench.py reframe
    python bench/ingest_bench.py acks --clients 200 --seconds 30

``acks`` starts ``camingest serve --no-analysis`` and N python-socketio clients in this process,
each sending the 640x480 VP8 fixture's blobs at 4 per second (a new session after the last),
and reports ack latency percentiles. The clients share the 2 cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RECORDINGS, chunks_of, machine_notes, percentile, send_paced, start_server
from ingest.client import CamingestClient
from ingest.media.webm import WebMReader, build_unit


def reframe(repeat: int) -> dict:
    names = sorted(p.name for p in RECORDINGS.iterdir())
    streams = {name: chunks_of(name) for name in names}
    total_bytes = sum(len(c) for chunks in streams.values() for c in chunks) * repeat
    units = 0
    start = time.perf_counter()
    for _ in range(repeat):
        for chunks in streams.values():
            reader = WebMReader()
            for chunk in chunks:
                unit = reader.feed(chunk)
                if len(unit):
                    build_unit(bytes(reader.init), unit.clusters)
                units += 1
    elapsed = time.perf_counter() - start
    return {"bytes": total_bytes, "units": units, "seconds": elapsed,
            "MB_per_s": total_bytes / elapsed / 1e6, "units_per_s": units / elapsed}  # fmt: skip


async def recorder(url: str, chunks: list[bytes], deadline: float, latencies: list[float], errors: list[str]) -> None:
    """One browser-like recorder: a chunk every 250 ms through the package's client."""
    async with CamingestClient(url, reconnect=False) as client:
        await asyncio.sleep(random.random() * 0.25)  # spread the clients over the 250 ms slice
        while time.monotonic() < deadline:
            session = await client.start("video/webm;codecs=vp8,opus")
            await send_paced(session, chunks, deadline, latencies, errors)


async def acks(clients: int, seconds: float) -> dict:
    chunks = chunks_of("webcam_vp8_opus_250ms")
    with tempfile.TemporaryDirectory() as data:
        proc, url = start_server(Path(data), "--no-analysis")
        try:
            latencies: list[float] = []
            errors: list[str] = []
            deadline = time.monotonic() + seconds
            await asyncio.gather(*(recorder(url, chunks, deadline, latencies, errors) for _ in range(clients)))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return {
        "clients": clients, "seconds": seconds, "acks": len(latencies), "errors": len(errors),
        "acks_per_s": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95), "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) if latencies else float("nan"),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("reframe")
    r.add_argument("--repeat", type=int, default=20)
    a = sub.add_parser("acks")
    a.add_argument("--clients", type=int, nargs="+", default=[50, 100, 200])
    a.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    print(f"# {machine_notes()}")
    if args.what == "reframe":
        print(json.dumps(reframe(args.repeat)))
    else:
        for n in args.clients:
            print(json.dumps(asyncio.run(acks(n, args.seconds))), flush=True)


if __name__ == "__main__":
    main()
