"""The storage issue's figures, side by side in one run (issue 22):

    python3 -m bench.storage_bench acks --clients 50 200 --seconds 10
    python3 -m bench.storage_bench uploads --sessions 20
    python3 -m bench.storage_bench dask --repeat 2

``acks``: N real-time recorders (the 640x480 VP8 fixture's blobs at 4 per second, through the
package's client, spread over 2 client processes: bench/recorders.py) against one
``camingest serve --no-analysis`` on each of the four stores, for the same N and duration:
the index on SQLite (``DATA/index.sqlite3``) or PostgreSQL 15, the session bytes in the data
folder or on SeaweedFS (S3), the engines started here on loopback by tests/engines.py
(bench/rig.py). Per configuration: ack p50/p95/p99, how many chunks ``durable_seq`` trailed the
acked ``seq`` at each ack (0 for the local store: the disk is the store of record), the node's
own ``camingest_durable_lag_seconds`` and upload backlog (its /metrics, sampled every 0.5 s), and
CPU of every process. ``uploads``: segment upload throughput (bytes/s) of the replicator for a
burst of stopped sessions.

Output: JSON lines on stdout and in bench/results/storage_<part>.txt, the ack latency CDFs in
bench/results/storage_acks.png.

``dask``: the Dask reprocess client's bytes read per job, before and after jobs carry object ranges
(the four webcam fixtures recorded ``--repeat`` times into PostgreSQL + SeaweedFS, a 2-worker
``LocalCluster``): jobs sent with their bytes from the server's folder (before), as object ranges
from the server's folder (planning still reads the stream here), and as object ranges from an
empty folder (a worker plans).
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import chunks_of, machine_notes, percentile, start_server
from bench.recorders import run_recorders
from bench.rig import CpuMeter, Rig, Sampler, load
from ingest.client import CamingestClient
from tests.engines import PostgresServer, SeaweedFS

OUT = Path(__file__).resolve().parent / "results"
BACKENDS = ("sqlite+local", "postgresql+local", "sqlite+s3", "postgresql+s3")


def engines() -> tuple[PostgresServer, SeaweedFS, str, str, dict[str, str]]:
    postgres = PostgresServer().start()
    weed = SeaweedFS().start()
    bucket = f"bench-{os.getpid()}"
    weed.create_bucket(bucket)
    return postgres, weed, postgres.dsn, f"s3://{bucket}/", weed.env


def _ms(values: list[float], q: float) -> float:
    return round(percentile(values, q), 1)


def acks(clients: list[int], seconds: float, backends: list[str], client_procs: int) -> None:
    lines = [f"# {machine_notes()}", f"# started {time.strftime('%Y-%m-%d %H:%M:%S')}, load {load()}"]
    print("\n".join(lines), flush=True)
    samples: dict[str, dict[str, list[float]]] = {}
    with Rig() as rig:
        for n in clients:
            for backend in backends:
                index, store = backend.split("+")
                dsn, bucket = rig.fresh(f"acks{n}{index}{store}")
                extra = (["--index", dsn] if index == "postgresql" else []) + (
                    ["--store", bucket, "--s3-endpoint", rig.weed.endpoint] if store == "s3" else [])
                node = rig.node(f"{backend.replace('+', '-')}-{n}", "--no-analysis", *extra)
                meter = CpuMeter({"node": lambda node=node: node.pid, **rig.pids()})
                try:
                    with Sampler([node.url], ("camingest_upload_backlog_bytes", "camingest_durable_lag_seconds",
                                              "camingest_event_loop_lag_seconds")) as sampler:  # fmt: skip
                        result = run_recorders(node.url, n, seconds, client_procs, meter.start, meter.stop)
                finally:
                    rig.stop_nodes()
                latencies, lag = result["acks"], result["durable_lag"]
                samples.setdefault(f"{n} recorders: ack latency (ms)", {})[backend] = latencies
                record = {
                    "part": "acks", "backend": backend, "clients": n, "seconds": seconds,
                    "offered_acks_per_s": n * 4, "acks_per_s": round(len(latencies) / seconds, 1),
                    "errors": result["errors"], "late_blobs": result["late"],
                    "ack_p50_ms": _ms(latencies, 50), "ack_p95_ms": _ms(latencies, 95), "ack_p99_ms": _ms(latencies, 99),
                    "ack_max_ms": round(max(latencies), 1) if latencies else None,
                    "durable_lag_chunks_p50": percentile(lag, 50), "durable_lag_chunks_p99": percentile(lag, 99),
                    "durable_lag_chunks_max": max(lag) if lag else None,
                    "durable_lag_s_max": round(max(sampler.samples["camingest_durable_lag_seconds"] or [0]), 2),
                    "upload_backlog_MB_max": round(max(sampler.samples["camingest_upload_backlog_bytes"] or [0]) / 1e6, 1),
                    "loop_lag_ms_max": round(1000 * max(sampler.samples["camingest_event_loop_lag_seconds"] or [0]), 1),
                    "cpu_pct_of_one_core": {**meter.result, "recorders": result["clients_cpu_pct_of_one_core"]},
                    "load_after": load(),
                }  # fmt: skip
                line = json.dumps(record)
                lines.append(line)
                print(line, flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "storage_acks.txt").write_text("\n".join(lines) + "\n")
    from bench.plot import distributions

    distributions(samples, OUT / "storage_acks.png", f"ack latency, real-time recorders (--no-analysis), {seconds:g} s each",
                  "ms from emit to ack")  # fmt: skip


async def _burst(url: str, sessions: int) -> list[str]:
    chunks = chunks_of("webcam_vp8_kf1s_250ms")
    ids = []
    async with CamingestClient(url, reconnect=False) as client:
        for _ in range(sessions):
            session = await client.start("video/webm;codecs=vp8")
            for data in chunks:
                await session.send(data)
            ids.append(session.session_id)
            await client.call("stop", session.ids, timeout=120)
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


def dask(repeat: int) -> None:
    from distributed import LocalCluster

    from bench.cluster_bench import store_sessions
    from ingest.analysis.tracker import TrackerSettings
    from ingest.batch.cluster import ClusterReprocessor
    from ingest.config import Settings

    postgres, weed, dsn, store_url, env = engines()
    os.environ.update(env)  # this client's and the workers' credentials (AWS's standard chain)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server = Path(tmp) / "server"
            proc, url = start_server(server, "--no-analysis", "--index", dsn, "--store", store_url,
                                     "--s3-endpoint", weed.endpoint, env=env)  # fmt: skip
            try:
                ids = asyncio.run(store_sessions(url, repeat))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
            try:
                modes = [("before: jobs with their bytes", server, False), ("after: object ranges, server's folder", server, True),
                         ("after: object ranges, empty folder", Path(tmp) / "client", True)]  # fmt: skip
                for i, (mode, folder, ranges) in enumerate([modes[0], *modes]):  # the first: warm-up
                    settings = Settings(data_dir=folder, index=dsn, store=store_url, s3_endpoint=weed.endpoint)
                    store = settings.open_store()
                    store.open(recover=False)
                    try:
                        tracker = TrackerSettings.from_settings(settings)
                        with ClusterReprocessor(store, tracker, cluster.scheduler_address, object_ranges=ranges) as rp:
                            started = time.perf_counter()
                            sessions = ids[:1] if i == 0 else ids
                            plan = [(sid, rp.jobs(sid)) for sid in sessions]
                            results = dict(rp.run_many(plan))
                            seconds = time.perf_counter() - started
                    finally:
                        store.close()
                    if i == 0:
                        continue
                    assert all("error" not in r for r in results.values()), results
                    jobs = sum(len(j) for _, j in plan)
                    frames = sum(r["frames"] for r in results.values())
                    sent = sum(rp.reads.with_bytes) + sum(rp.reads.with_ranges)
                    print(json.dumps({
                        "mode": mode, "sessions": len(ids), "jobs": jobs, "frames": frames,
                        "client_planning_bytes_per_job": round(sum(rp.reads.planned) / jobs),
                        "client_sent_bytes_per_job": round(sent / jobs),
                        "jobs_with_bytes": len(rp.reads.with_bytes), "jobs_with_ranges": len(rp.reads.with_ranges),
                        "seconds": round(seconds, 2), "frames_per_s": round(frames / seconds, 1),
                    }), flush=True)  # fmt: skip
            finally:
                cluster.close()
    finally:
        weed.stop()
        postgres.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("acks")
    a.add_argument("--clients", type=int, nargs="+", default=[50, 200])
    a.add_argument("--seconds", type=float, default=10)
    a.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    a.add_argument("--client-procs", type=int, default=2, help="processes the recorders are spread over")
    u = sub.add_parser("uploads")
    u.add_argument("--sessions", type=int, default=20)
    d = sub.add_parser("dask")
    d.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if args.what == "acks":
        acks(args.clients, args.seconds, args.backends, args.client_procs)
    elif args.what == "dask":
        dask(args.repeat)
    else:
        print(f"# {machine_notes()}")
        uploads(args.sessions)


if __name__ == "__main__":
    main()
