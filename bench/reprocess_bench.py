"""Batch re-processing benchmark (issue 5), one run, side by side.

    python bench/reprocess_bench.py [--workers 2]

Stores the four 640x480 webcam fixtures as sessions (a --no-analysis server), then times, on
this machine in one run: decode only (one core); the naive pipeline (OpenCV VideoCapture +
HOG at upsample 1 + 68 points on every frame, one core, first 60 frames); ``Reprocessor``
with N warm workers over all four sessions; and the server's own path for the same files:
uploads (POST /api/sessions) imported and landmarked by N warm live workers (ingest/fill.py),
from the first byte sent to the last landmark stored. Accuracy: every 8th frame of the batch
result against per-frame full detection (upsample 1). Writes bench/results/reprocess.{txt,png}.
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

import aiohttp
import cv2
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.common import chunks_of, machine_notes, start_server
from bench.landmarks_bench import WEBCAMS, naive_fps
from ingest.analysis.detect import detect_faces
from ingest.analysis.tracker import TrackerSettings
from ingest.batch.local import Reprocessor
from ingest.client import CamingestClient
from storage.store import SessionStore
from tests.media import decoded_frames, match_faces

OUT = Path(__file__).resolve().parent / "results"


async def store_sessions(url: str) -> dict[str, str]:
    ids = {}
    async with CamingestClient(url) as client:
        for name in WEBCAMS:
            session = await client.start()
            await session.send_stream(chunks_of(name))
            await session.stop()
            ids[name] = session.session_id
    return ids


async def upload_fps(data: Path, workers: int, total: int) -> float:
    """Frames/s of uploads through a server with ``workers`` warm live workers: POST of each
    fixture's stream, import, landmarks filled by the workers; timed to the last one stored."""
    proc, url = start_server(data, "--workers", str(workers))
    try:
        async with aiohttp.ClientSession() as http:

            async def upload(name: str) -> str:
                body = b"".join(chunks_of(name))
                async with http.post(f"{url}/api/sessions?filename={name}.webm", data=body) as response:
                    assert response.status == 201, await response.text()
                    return (await response.json())["id"]

            async def complete(session_id: str) -> int:
                while True:
                    async with http.get(f"{url}/api/sessions/{session_id}") as response:
                        detail = await response.json()
                    if "fill" not in detail and detail["analysed_frames"] == detail["frames"]:
                        return detail["frames"]
                    await asyncio.sleep(0.02)

            await complete(await upload(WEBCAMS[0]))  # warm: the workers have loaded the model
            start = time.perf_counter()
            ids = [await upload(name) for name in WEBCAMS]
            frames = sum([await complete(session_id) for session_id in ids])
            assert frames == total
            return frames / (time.perf_counter() - start)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    lines = [f"# {machine_notes()}"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        proc, url = start_server(data, "--no-analysis")
        try:
            ids = asyncio.run(store_sessions(url))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        frames = {name: sum(1 for _ in decoded_frames(chunks_of(name))) for name in WEBCAMS}
        total = sum(frames.values())

        start = time.perf_counter()
        for name in WEBCAMS:
            for _ in decoded_frames(chunks_of(name)):
                pass
        decode = total / (time.perf_counter() - start)
        naive = float(np.mean([naive_fps(chunks_of(name)) for name in WEBCAMS]))

        store = SessionStore(data)
        store.open(recover=False)

        def reprocess(engine: str) -> float:
            with Reprocessor(store, TrackerSettings(engine=engine), args.workers) as reprocessor:
                warm = reprocessor.jobs(ids[WEBCAMS[0]])
                reprocessor.run(ids[WEBCAMS[0]], warm)  # workers have loaded the model
                start = time.perf_counter()  # as `camingest reprocess ID...`: one pass over the pool
                list(reprocessor.run_many([(ids[name], reprocessor.jobs(ids[name])) for name in WEBCAMS]))
                return total / (time.perf_counter() - start)

        batch_dlib = reprocess("dlib")  # the same detection, dlib's own predictor
        batch = reprocess("numba")

        upload = asyncio.run(upload_fps(Path(tmp) / "uploads", args.workers, total))

        errors: list[float | None] = []
        for name in WEBCAMS:
            stored = [
                json.loads(x) for x in (data / "sessions" / ids[name] / "landmarks.jsonl").read_text().splitlines()
            ]
            for frame in decoded_frames(chunks_of(name)):
                if frame.index % 8 == 0:
                    errors += match_faces(detect_faces(np.array(frame.gray()), 1), stored[frame.index]["faces"])
        store.close()
    hits = [e for e in errors if e is not None]
    result = {
        "frames": total, "workers": args.workers, "decode_only_fps_1core": decode, "naive_fps_1core": naive,
        "reprocess_fps": batch, "reprocess_dlib_engine_fps": batch_dlib, "upload_fill_fps": upload, "x_naive": batch / naive, "x_decode_only_2cores": batch / (2 * decode),
        "recall": len(hits) / len(errors), "median_error_iod": float(np.median(hits)), "sampled_faces": len(errors),
    }  # fmt: skip
    lines.append(json.dumps(result))
    OUT.mkdir(exist_ok=True)
    (OUT / "reprocess.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(10, 3.8))
    labels = ["naive\n(1 core)", "decode only\n(1 core)", f"decode only\n(x{args.workers}, ideal)",
              f"reprocess, dlib\npredictor ({args.workers} w.)", f"reprocess, numba\nkernel ({args.workers} w.)",
              f"server upload+fill\n({args.workers} workers)"]  # fmt: skip
    values = [naive, decode, 2 * decode, batch_dlib, batch, upload]
    bars = ax.bar(labels, values, color=["#b0b0b0", "#4c78a8", "#9ecae9", "#c9a26b", "#f58518", "#e45756"])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_yscale("log")
    ax.set_ylabel("frames/s (log)")
    ax.set_title(f"640x480 webcam fixtures, {total} frames, one run")
    fig.tight_layout()
    fig.savefig(OUT / "reprocess.png", dpi=110)


if __name__ == "__main__":
    main()
