"""Reprocess on a local 2-worker Dask cluster beside the local 2-process path (issue 13).

    python bench/cluster_bench.py [--repeat 3] [--rounds 2]

Stores the four 640x480 webcam fixtures ``--repeat`` times as sessions (one job each), then,
alternating local / cluster ``--rounds`` times in one run: frames/s of ``Reprocessor`` (2 warm
worker processes) and of ``ClusterReprocessor`` on ``distributed.LocalCluster(n_workers=2,
threads_per_worker=1, processes=True)`` (warm). The cluster's cost per job (reading the bytes
on the client, pickling, sending them through the scheduler to a worker, the result back) is
measured with a task that only counts the bytes, beside the same through the local pool.
Writes bench/results/cluster.{txt,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from bench.common import chunks_of, machine_notes, start_server
from bench.landmarks_bench import WEBCAMS
from ingest.analysis.tracker import TrackerSettings
from ingest.batch.cluster import ClusterReprocessor
from ingest.batch.jobs import read_runs
from ingest.batch.local import Reprocessor
from ingest.client import CamingestClient
from storage.store import SessionStore

OUT = Path(__file__).resolve().parent / "results"


def payload_size(runs: list[tuple[int, bytes]]) -> int:
    return sum(len(data) for _, data in runs)


def count_bytes(job, runs) -> int:  # the cluster task without the work: only the transfer
    return payload_size(runs)


def read_and_count(job) -> int:  # the local pool's equivalent: the worker reads the file itself
    return payload_size(read_runs(job))


async def store_sessions(url: str, repeat: int) -> list[str]:
    ids = []
    async with CamingestClient(url) as client:
        for _ in range(repeat):
            for name in WEBCAMS:
                session = await client.start()
                await session.send_stream(chunks_of(name))
                await session.stop()
                ids.append(session.session_id)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from distributed import LocalCluster

    lines = [f"# {machine_notes()}"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        proc, url = start_server(data, "--no-analysis")
        try:
            ids = asyncio.run(store_sessions(url, args.repeat))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        store = SessionStore(data)
        store.open(recover=False)
        settings = TrackerSettings()
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        local = Reprocessor(store, settings, 2).__enter__()
        remote = ClusterReprocessor(store, settings, cluster.scheduler_address).__enter__()
        try:
            plan = [(sid, local.jobs(sid)) for sid in ids]
            jobs = [job for _, session_jobs in plan for job in session_jobs]
            frames = sum(job.end - job.start for job in jobs)
            for reprocessor in (local, remote):  # warm: models loaded, kernels compiled
                list(reprocessor.run_many(plan[:2]))
            fps: dict[str, list[float]] = {"local": [], "cluster": []}
            for _ in range(args.rounds):
                for name, reprocessor in (("local", local), ("cluster", remote)):
                    start = time.perf_counter()
                    list(reprocessor.run_many(plan))
                    fps[name].append(frames / (time.perf_counter() - start))
            # per-job cost of the machinery alone, jobs one after another
            start = time.perf_counter()
            for job in jobs:
                remote.client.submit(count_bytes, job, read_runs(job), pure=False).result()
            cluster_job_ms = (time.perf_counter() - start) * 1000 / len(jobs)
            start = time.perf_counter()
            for job in jobs:
                local._pool.apply(read_and_count, (job,))
            local_job_ms = (time.perf_counter() - start) * 1000 / len(jobs)
            mean_bytes = float(np.mean([payload_size(read_runs(job)) for job in jobs]))
        finally:
            remote.__exit__(None, None, None)
            local.__exit__(None, None, None)
            cluster.close()
            store.close()
    result = {
        "sessions": len(ids), "jobs": len(jobs), "frames": frames, "workers": 2,
        "local_fps": [round(v, 1) for v in fps["local"]], "cluster_fps": [round(v, 1) for v in fps["cluster"]],
        "cluster_over_local": round(float(np.mean(fps["cluster"]) / np.mean(fps["local"])), 3),
        "job_overhead_cluster_ms": round(cluster_job_ms, 2), "job_overhead_local_pool_ms": round(local_job_ms, 2),
        "job_mean_bytes": round(mean_bytes), "job_mean_frames": round(frames / len(jobs), 1),
    }  # fmt: skip
    lines.append(json.dumps(result))
    OUT.mkdir(exist_ok=True)
    (OUT / "cluster.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = [f"local pool\n(2 processes), round {i + 1}" for i in range(args.rounds)] + [
        f"Dask LocalCluster\n(2 workers), round {i + 1}" for i in range(args.rounds)
    ]
    bars = ax.bar(labels, fps["local"] + fps["cluster"], color=["#4c78a8"] * args.rounds + ["#f58518"] * args.rounds)
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("frames/s")
    ax.set_title(f"reprocess of {len(ids)} sessions ({frames} frames, {len(jobs)} jobs), one run")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "cluster.png", dpi=110)


if __name__ == "__main__":
    main()
