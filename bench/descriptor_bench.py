"""ms per face: dlib's compute_face_descriptor vs this module's engines, one thread, side by side
in one process (median of --calls calls), and model load times.

    python3 bench/descriptor_bench.py [--calls 50] [--engines onnxruntime,opencv,numpy]
"""

from __future__ import annotations

import os

# one thread everywhere, before numpy (OpenBLAS reads these at import)
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import dlib  # noqa: E402
import face_recognition_models  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ingest.analysis.engine import descriptor as de  # noqa: E402
from tests.conftest import IMAGES  # noqa: E402

IMAGE = str(IMAGES / "obama.jpg")


def median_ms(fn, calls: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--engines", default="onnxruntime,opencv,numpy")
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    cv2.setNumThreads(1)

    rgb = np.ascontiguousarray(cv2.imread(IMAGE)[:, :, ::-1])
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    shape = predictor(rgb, detector(rgb, 1)[0])
    path = de.default_model_path()

    # load times
    t = time.perf_counter()
    model = dlib.face_recognition_model_v1(path)
    print(f"load dlib face_recognition_model_v1: {1000 * (time.perf_counter() - t):.0f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CAMINGEST_CACHE_DIR"] = tmp
        t = time.perf_counter()
        de.parse_dlib_model(path)
        print(f"parse the .dat alone: {1000 * (time.perf_counter() - t):.0f} ms")
        t = time.perf_counter()
        de.Descriptor(path, engine="onnxruntime")
        print(
            f"Descriptor() cold (empty cache: import onnx, parse, build the graph, write .npz + .onnx, "
            f"session): {1000 * (time.perf_counter() - t):.0f} ms"
        )
        t = time.perf_counter()
        de.load_weights(path)
        print(f"weights from the .npz cache: {1000 * (time.perf_counter() - t):.0f} ms")
        engines = {}
        for name in args.engines.split(","):
            t = time.perf_counter()
            engines[name] = de.Descriptor(path, engine=name)
            print(f"Descriptor(engine={name!r}) from the cache: {1000 * (time.perf_counter() - t):.0f} ms")

    ref = np.array(model.compute_face_descriptor(rgb, shape))
    results = {"dlib": median_ms(lambda: model.compute_face_descriptor(rgb, shape), args.calls)}
    chip = de.chips(rgb, [shape])
    print(f"chip extraction (dlib.get_face_chip): {median_ms(lambda: de.chips(rgb, [shape]), args.calls):.2f} ms")
    for name, d in engines.items():
        diff = np.abs(d.compute_shapes(rgb, [shape])[0] - ref).max()
        results[name] = median_ms(lambda d=d: d.compute_shapes(rgb, [shape]), args.calls)
        net = median_ms(lambda d=d: d.compute_chips(chip), args.calls)
        batch = [shape] * args.batch
        per_face = median_ms(lambda d=d, batch=batch: d.compute_shapes(rgb, batch), max(5, args.calls // args.batch))
        print(
            f"{name}: max |diff| vs dlib {diff:.2e}; network alone {net:.2f} ms; batch of {args.batch}: {per_face / args.batch:.2f} ms/face"
        )
    base = results["dlib"]
    for name, ms in results.items():
        print(f"{name:12s} {ms:7.2f} ms/face  ({base / ms:.1f}x dlib)")


if __name__ == "__main__":
    main()
