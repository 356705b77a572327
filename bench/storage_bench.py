"""The storage issue's figures, side by side in one run (issue 22):

    python bench/storage_bench.py acks --clients 50 200 --seconds 30
    python bench/storage_bench.py uploads --sessions 20

``acks``: N real-time recorders (the 640x480 VP8 fixture's blobs at 4 per second, through the
package's client) against ``camingest serve --no-analysis`` on the embedded default (data folder
+ SQLite) and then on PostgreSQL + SeaweedFS (started here, on loopback, by tests/engines.py),
for the same N and duration: ack p50/p95/p99 and how far durable_seq lags. ``uploads``: segment
upload throughput (bytes/s) of the replicator for a burst of stopped sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import chunks_of, machine_notes, percentile, start_server
from bench.ingest_bench import recorder
from ingest.client import CamingestClient
from tests.engines import PostgresServer, SeaweedFS


def engines() -> tuple[PostgresServer, SeaweedFS, str, str, dict[str, str]]:
    postgres = PostgresServer().start()
    weed = SeaweedFS().start()
    bucket = f"bench-{os.getpid()}"
    weed.create_bucket(bucket)
    return postgres, weed, postgres.dsn, f"s3://{bucket}/", weed.env


async def _acks(url: str, clients: int, seconds: float) -> dict[str, Any]:
    chunks = chunks_of("webcam_vp8_opus_250ms")
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(recorder(url, chunks, deadline, latencies, errors) for _ in range(clients)))
    return {
        "clients": clients, "acks": len(latencies), "errors": len(errors),
        "p50_ms": round(percentile(latencies, 50), 2), "p95_ms": round(percentile(latencies, 95), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
    }  # fmt: skip


def acks(clients: list[int], seconds: float) -> None:
    postgres, weed, dsn, store, env = engines()
    try:
        for n in clients:
            for backend in ("embedded", "postgresql+seaweedfs"):
                with tempfile.TemporaryDirectory() as data:
                    extra = [] if backend == "embedded" else ["--index", dsn, "--store", store, "--s3-endpoint", weed.endpoint]
                    proc, url = start_server(Path(data), "--no-analysis", *extra, env=env)
                    try:
                        result = asyncio.run(_acks(url, n, seconds))
                    finally:
                        proc.send_signal(signal.SIGTERM)
                        proc.wait(60)
                print(json.dumps({"backend": backend, "seconds": seconds, **result}), flush=True)
                if backend != "embedded":  # a fresh database for the next round
                    postgres.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public", dbname="camingest")
    finally:
        weed.stop()
        postgres.stop()


async def _burst(url: str, sessions: int) -> list[str]:
    chunks = chunks_of("webcam_vp8_kf1s_250ms")
    ids = []
    async with CamingestClient(url, reconnect=False) as client:
        for _ in range(sessions):
            session = await client.start("video/webm;codecs=vp8")
            for data in chunks:
                await session.send(data)
            ids.append(session.session_id)
            await client.call("stop", session.ids(), timeout=120)
    return ids


def uploads(sessions: int) -> None:
    """Sessions recorded with uploads held back (segment_s long), then all released at stop: the
    time until every byte is durable gives the replicator's throughput."""
    postgres, weed, dsn, store, env = engines()
    try:
        with tempfile.TemporaryDirectory() as data:
            proc, url = start_server(
                Path(data), "--no-analysis", "--index", dsn, "--store", store, "--s3-endpoint", weed.endpoint,
                env={**env, "CAMINGEST_SEGMENT_S": "3600", "CAMINGEST_SEGMENT_BYTES": str(64 << 20),
                     "CAMINGEST_STOP_DURABLE_WAIT_S": "0"},
            )  # fmt: skip
            try:
                started = time.monotonic()
                ids = asyncio.run(_burst(url, sessions))
                sent = time.monotonic()
                total = sum(len(c) for c in chunks_of("webcam_vp8_kf1s_250ms")) * sessions
                import urllib.request

                while True:
                    lagging = 0
                    for sid in ids:
                        with urllib.request.urlopen(f"{url}/api/sessions/{sid}") as response:
                            summary = json.loads(response.read())
                        lagging += summary["durable_seq"] < summary["chunks"] - 1
                    if not lagging:
                        break
                    time.sleep(0.05)
                done = time.monotonic()
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
        print(json.dumps({"sessions": sessions, "bytes": total, "recorded_s": round(sent - started, 2),
                          "durable_after_last_stop_s": round(done - sent, 2),
                          "upload_MB_per_s": round(total / max(done - started, 1e-9) / 1e6, 1)}))  # fmt: skip
    finally:
        weed.stop()
        postgres.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("acks")
    a.add_argument("--clients", type=int, nargs="+", default=[50, 200])
    a.add_argument("--seconds", type=float, default=30)
    u = sub.add_parser("uploads")
    u.add_argument("--sessions", type=int, default=20)
    args = parser.parse_args()
    print(f"# {machine_notes()}")
    if args.what == "acks":
        acks(args.clients, args.seconds)
    else:
        uploads(args.sessions)


if __name__ == "__main__":
    main()
