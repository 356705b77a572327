"""Finding faces: dlib's HOG detector over a frame or a crop around a face, and the 68 points
fitted to what it finds (``engine/``). What the tracker, snapshots and enrolment all use.

Models come from the face-recognition-models wheel: nothing is downloaded at run time.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import cv2
import dlib
import numpy as np

from ingest.analysis.engine.predictor import predictor

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
# iBUG-300W indices
JAW, RIGHT_EYE, LEFT_EYE = slice(0, 17), slice(36, 42), slice(42, 48)
OUTER_LIPS, INNER_LIPS = slice(48, 60), slice(60, 68)
WINDOW = 80  # dlib's frontal face detector finds faces from about its window's size
Box = tuple[int, int, int, int]  # left, top, right, bottom: dlib.rectangle, inclusive


@cache
def detector() -> Any:
    return dlib.get_frontal_face_detector()


def xywh(box: Box) -> list[int]:
    """A dlib rectangle (inclusive corners) as PROTOCOL.md's [x, y, w, h]."""
    left, top, right, bottom = box
    return [left, top, right - left + 1, bottom - top + 1]


def face_dict(box: Box, points: np.ndarray) -> dict[str, Any]:
    return {"box": xywh(box), "points": points.tolist()}


def detect_boxes(gray: np.ndarray, upsample: int) -> list[Box]:
    return [(r.left(), r.top(), r.right(), r.bottom()) for r in detector()(gray, upsample)]


def detect_faces(gray: np.ndarray, upsample: int = 1, engine: str = "numba") -> list[dict[str, Any]]:
    """Full detection + 68 points for every face: the reference, and what snapshots get."""
    image = np.ascontiguousarray(gray)
    boxes = detect_boxes(image, upsample)
    points = predictor(engine).fit(image, np.array(boxes, dtype=np.int64).reshape(-1, 4))
    return [face_dict(box, p) for box, p in zip(boxes, points, strict=True)]



def iou(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if w <= 0 or h <= 0:
        return 0.0
    area = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return w * h / (area - w * h)


def detect_near(gray: np.ndarray, box: Box, target: int = 100, reach: float = 1.0) -> Box | None:
    """The detection closest to ``box`` in a crop around it (``reach`` x its size on each side of
    its centre), scaled so that the face is ~``target`` px wide (dlib's window is 80): ~2 ms
    whatever the face's size."""
    height, width = gray.shape
    side = max(box[2] - box[0] + 1, 1)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x0, y0 = max(int(cx - reach * side), 0), max(int(cy - reach * side), 0)
    x1, y1 = min(int(cx + reach * side) + 1, width), min(int(cy + reach * side) + 1, height)
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    scale = target / side
    crop = cv2.resize(gray[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    found = [
        (round(b[0] / scale) + x0, round(b[1] / scale) + y0, round(b[2] / scale) + x0, round(b[3] / scale) + y0)
        for b in detect_boxes(crop, 0)
    ]
    best = max(found, key=lambda b: iou(b, box), default=None)
    return best if best is not None and iou(best, box) > 0 else None



def inter_ocular(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[RIGHT_EYE].mean(axis=0) - points[LEFT_EYE].mean(axis=0)))

