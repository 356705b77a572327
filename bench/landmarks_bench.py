"""Landmark benchmarks (issue 3), all measured in one run.

    python bench/landmarks_bench.py pipeline      # frames/s on one core: decode-only, tracker, naive
    python bench/landmarks_bench.py live --sessions 4 6 8 10

``pipeline`` times, side by side on the 640x480 fixtures: decoding alone; decoding + the live
tracker (camingest); and the naive pipeline (OpenCV VideoCapture + HOG detection at upsample 1
+ 68 points on every frame). ``live`` starts a server with analysis and N clients that replay a
640x480 fixture at the pace it was recorded (blob times from meta.json), and reports skipped
frames and the lag from capture (pts_ms) to landmarks at the client.
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

import cv2
import socketio

from bench.common import RECORDINGS, chunks_of, machine_notes, percentile, start_server
from ingest.landmarks import FaceTracker, TrackerSettings, models
from tests.media import decoded_frames

WEBCAMS = ["webcam_vp8_opus_250ms", "webcam_vp9_opus_250ms", "webcam_h264_250ms", "webcam_vp8_kf1s_250ms"]


def naive_fps(chunks: list[bytes], limit: int = 60) -> float:
    """The tutorial pipeline: OpenCV VideoCapture + HOG detection (upsample 1) + 68 points on
    every frame, over the first ``limit`` frames."""
    detector, predictor = models()
    with tempfile.NamedTemporaryFile(suffix=".webm") as f:
        f.write(b"".join(chunks))
        f.flush()
        capture = cv2.VideoCapture(f.name)
        start, done = time.perf_counter(), 0
        while done < limit:
            ok, bgr = capture.read()
            if not ok:
                break
            gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
            for box in detector(gray, 1):
                predictor(gray, box)
            done += 1
    return done / (time.perf_counter() - start)


def pipeline(limit_naive: int) -> dict:
    cv2.setNumThreads(1)
    results: dict[str, dict] = {}
    for name in WEBCAMS:
        chunks = chunks_of(name)
        start = time.perf_counter()
        n = sum(1 for _ in decoded_frames(chunks))
        decode = n / (time.perf_counter() - start)

        tracker = FaceTracker(TrackerSettings())
        start = time.perf_counter()
        for frame in decoded_frames(chunks):
            tracker.process(frame.gray())
        tracked = n / (time.perf_counter() - start)

        naive = naive_fps(chunks, limit_naive)
        results[name] = {"frames": n, "decode_fps": decode, "camingest_fps": tracked, "naive_fps": naive,
                         "detections": tracker.detections}  # fmt: skip
    return results


async def live_client(url: str, name: str, lags: list[float], counts: dict) -> None:
    chunks = chunks_of(name)
    times = json.loads((RECORDINGS / name / "meta.json").read_text())["times"]
    sio = socketio.AsyncClient(reconnection=False)
    t0 = 0.0

    @sio.on("landmarks")
    async def on_landmarks(data: dict) -> None:
        now = time.monotonic()
        for frame in data["frames"]:
            counts["skipped" if frame.get("skipped") else "analysed"] += 1
            lags.append((now - t0) * 1000 - frame["pts_ms"])

    await sio.connect(url, transports=["websocket"])
    ack = await sio.call("start", {"mime": "video/webm;codecs=vp8"})
    session = {"session_id": ack["session_id"], "token": ack["token"]}
    t0 = time.monotonic()  # the recording starts now; blob seq is due at times[seq][1] ms
    for seq, data in enumerate(chunks):
        await asyncio.sleep(max(0.0, t0 + times[seq][1] / 1000 - time.monotonic()))
        await sio.call("chunk", {**session, "seq": seq, "data": data}, timeout=60)
    await sio.call("stop", session)
    await asyncio.sleep(3)
    await sio.disconnect()


async def live(sessions: int, workers: int) -> dict:
    name = "webcam_vp8_opus_250ms"
    with tempfile.TemporaryDirectory() as data:
        proc, url = start_server(Path(data), "--workers", str(workers))
        await asyncio.sleep(3)  # workers load the predictor
        try:
            lags: list[float] = []
            counts = {"analysed": 0, "skipped": 0}
            await asyncio.gather(*(live_client(url, name, lags, counts) for _ in range(sessions)))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    expected = json.loads((RECORDINGS / name / "expected.json").read_text())["video_frames"] * sessions
    return {"sessions": sessions, "workers": workers, "frames": expected, **counts,
            "lag_p50_ms": percentile(lags, 50), "lag_p95_ms": percentile(lags, 95), "lag_max_ms": max(lags)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pipeline")
    p.add_argument("--naive-frames", type=int, default=60)
    lv = sub.add_parser("live")
    lv.add_argument("--sessions", type=int, nargs="+", default=[2, 4, 6, 8, 10])
    lv.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"# {machine_notes()}", flush=True)
    if args.what == "pipeline":
        print(json.dumps(pipeline(args.naive_frames)))
    else:
        for n in args.sessions:
            print(json.dumps(asyncio.run(live(n, args.workers))), flush=True)


if __name__ == "__main__":
    main()
