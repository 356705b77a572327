"""Landmark benchmarks (issue 3), all measured in one run.

    python bench/landmarks_bench.py engine        # ms per face: numba kernel vs dlib, A/B
    python bench/landmarks_bench.py pipeline      # frames/s on one core: decode-only, tracker, naive
    python bench/landmarks_bench.py live --sessions 10 20 --engine numba dlib

``pipeline`` times, side by side on the 640x480 fixtures: decoding alone; decoding + the live
tracker (camingest); and the naive pipeline (OpenCV VideoCapture + HOG detection at upsample 1
+ 68 points on every frame). ``live`` starts a server with analysis and N clients that replay a
640x480 fixture at the pace it was recorded (blob times from meta.json), and reports skipped
frames and the lag from capture (pts_ms) to landmarks at the client. ``engine`` fits the
same faces with the numba kernel and dlib's shape_predictor, interleaved (A, B, A, B ...): in a
tight loop on one image, and between decodes (each frame decoded, then fitted: cold caches).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2
import numpy as np
import socketio

from bench.common import IMAGES, RECORDINGS, LandmarkTally, chunks_of, machine_notes, percentile, start_server
from ingest.analysis.detect import detect_boxes, detector
from ingest.analysis.engine.predictor import predictor
from ingest.analysis.tracker import FaceTracker, TrackerSettings
from tests.media import decoded_frames

WEBCAMS = ["webcam_vp8_opus_250ms", "webcam_vp9_opus_250ms", "webcam_h264_250ms", "webcam_vp8_kf1s_250ms"]


def naive_fps(chunks: list[bytes], limit: int = 60) -> float:
    """The tutorial pipeline: OpenCV VideoCapture + HOG detection (upsample 1) + 68 points on
    every frame, over the first ``limit`` frames."""
    detect, fit = detector(), predictor("dlib")
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
            boxes = [(b.left(), b.top(), b.right(), b.bottom()) for b in detect(gray, 1)]
            fit.fit(gray, np.array(boxes, dtype=np.int64).reshape(-1, 4))
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
                         "sweeps": tracker.sweeps, "refreshes": tracker.refreshes,
                         "searches": tracker.searches}  # fmt: skip
    return results


def engine(rounds: int) -> dict:
    """ms per face, numba vs dlib, interleaved in one run: tight loop, and between decodes."""
    engines = [predictor("numba"), predictor("dlib")]
    frames = [np.ascontiguousarray(f.gray()) for f in decoded_frames(chunks_of("webcam_vp8_opus_250ms"))]
    boxes = np.array(detect_boxes(frames[0], 0), dtype=np.int64)
    tight = {e.name: [] for e in engines}
    for _ in range(rounds):
        for e in engines:
            start = time.perf_counter()
            for _ in range(100):
                e.fit(frames[0], boxes)
            tight[e.name].append((time.perf_counter() - start) / 100 / len(boxes) * 1000)
    between = {e.name: [] for e in engines}
    for _ in range(rounds // 4 or 1):
        for e in engines:
            for frame in decoded_frames(chunks_of("webcam_vp8_opus_250ms")):  # decoding evicts the caches
                gray = np.ascontiguousarray(frame.gray())
                start = time.perf_counter()
                e.fit(gray, boxes)
                between[e.name].append((time.perf_counter() - start) * 1000 / len(boxes))
    out = {f"{k}_tight_ms": float(np.median(v)) for k, v in tight.items()}
    out |= {f"{k}_between_decodes_ms": float(np.median(v)) for k, v in between.items()}
    out["speedup_tight"] = out["dlib_tight_ms"] / out["numba_tight_ms"]
    out["speedup_between_decodes"] = out["dlib_between_decodes_ms"] / out["numba_between_decodes_ms"]
    return out


async def live_client(url: str, name: str, tally: LandmarkTally) -> None:
    chunks = chunks_of(name)
    times = json.loads((RECORDINGS / name / "meta.json").read_text())["times"]
    sio = socketio.AsyncClient(reconnection=False)
    t0 = 0.0
    tally.listen(sio, lambda: t0)

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


async def live(sessions: int, workers: int, engine: str = "numba", identify: bool = False) -> dict:
    name = "webcam_vp8_opus_250ms"
    with tempfile.TemporaryDirectory() as data:
        if identify:  # one person enrolled: every face gets descriptors (an empty gallery costs nothing)
            subprocess.run([sys.executable, "-m", "ingest.cli", "gallery", "add", "Obama", str(IMAGES / "obama.jpg"),
                            "--data", data], check=True, capture_output=True)  # fmt: skip
        proc, url = start_server(Path(data), "--workers", str(workers), env={"CAMINGEST_LANDMARK_ENGINE": engine})
        await asyncio.sleep(3)  # workers load the predictor
        try:
            tally = LandmarkTally()
            await asyncio.gather(*(live_client(url, name, tally) for _ in range(sessions)))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    expected = json.loads((RECORDINGS / name / "expected.json").read_text())["video_frames"] * sessions
    lags = tally.lags + tally.skipped_lags  # every frame's, skipped ones too
    return {"sessions": sessions, "workers": workers, "engine": engine, "identify": identify, "frames": expected,
            "analysed": tally.analysed, "skipped": tally.skipped, "named": tally.named,
            "lag_p50_ms": percentile(lags, 50), "lag_p95_ms": percentile(lags, 95), "lag_max_ms": max(lags)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pipeline")
    p.add_argument("--naive-frames", type=int, default=60)
    lv = sub.add_parser("live")
    lv.add_argument("--sessions", type=int, nargs="+", default=[2, 4, 6, 8, 10])
    lv.add_argument("--workers", type=int, default=2)
    lv.add_argument("--engine", nargs="+", default=["numba"], choices=["numba", "dlib"])
    lv.add_argument("--identify", nargs="+", default=["off"], choices=["off", "on"], help="a gallery of one person, or none")
    en = sub.add_parser("engine")
    en.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(f"# {machine_notes()}", flush=True)
    if args.what == "pipeline":
        print(json.dumps(pipeline(args.naive_frames)))
    elif args.what == "engine":
        print(json.dumps(engine(args.rounds)))
    else:
        for n in args.sessions:
            for name in args.engine:  # side by side, one session count at a time
                for identify in args.identify:
                    print(json.dumps(asyncio.run(live(n, args.workers, name, identify == "on"))), flush=True)


if __name__ == "__main__":
    main()
