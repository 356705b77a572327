"""Identification costs (issue 12).

    python bench/identity_bench.py [--rounds 20]

- descriptor: dlib's ResNet descriptor (ingest/identity.describe) per face, for the 268-px face
  of the 640x480 webcam fixture and the ~230/55-px faces of the 720p two-person fixture, median
  over frames (the faces' points from the tracker, as live);
- nearest: the vectorized nearest-neighbour search over galleries of 10 to 10,000 photos;
- per frame: what identification adds to a tracked frame on average with identify_every = 90.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import machine_notes
from ingest.analysis.identity import describe, nearest
from ingest.analysis.tracker import FaceTracker
from storage.gallery import GalleryMatrix
from tests.conftest import load_recording
from tests.media import decoded_frames


def descriptor_costs(name: str, every: int) -> dict:
    tracker = FaceTracker()
    times: dict[str, list[float]] = {}
    for frame in decoded_frames(load_recording(name).chunks):
        faces = tracker.process(frame.gray(), frame.index)
        if frame.index % every:
            continue
        rgb = frame.rgb()
        for face in faces:
            size = "large" if face["box"][2] >= 160 else "small"
            start = time.perf_counter()
            describe(rgb, face["box"], face["points"])
            times.setdefault(size, []).append((time.perf_counter() - start) * 1000)
    return {f"{name}_{size}_ms": round(float(np.median(v)), 2) for size, v in times.items()} | {
        f"{name}_{size}_n": len(v) for size, v in times.items()
    }


def nearest_costs(rounds: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for n in (10, 1000, 10000):
        matrix = GalleryMatrix(tuple(f"p{i}" for i in range(n)), rng.normal(0, 0.1, (n, 128)))
        probe = rng.normal(0, 0.1, 128)
        start = time.perf_counter()
        for _ in range(rounds):
            nearest(matrix, probe, 0.6)
        out[f"nearest_{n}_us"] = round((time.perf_counter() - start) / rounds * 1e6, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    print(f"# {machine_notes()}", flush=True)
    result = descriptor_costs("webcam_vp8_kf1s_250ms", 5) | descriptor_costs("two_people_720p_vp8", 5)
    result |= nearest_costs(args.rounds)
    result["per_frame_ms_one_face_identify_every_90"] = round(result["webcam_vp8_kf1s_250ms_large_ms"] / 90, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
