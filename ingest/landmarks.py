"""dlib 68-point face landmarks, fast enough for every frame of a live stream.

Detection (HOG, ~22 ms per 640x480 frame at upsample 0) dominates; fitting 68 points to a box is
~1-2 ms. So a ``FaceTracker`` runs full detection only when needed — the first frame, every
``detect_every`` frames (new faces), after a scene cut, when a face was lost — and in between fits
each face on a box carried over from the previous frame's landmarks. The box is kept in the
detector's own geometry (the predictor was trained on detector boxes): at detection time the
tracker records where the box sits relative to the landmarks' extent and re-applies that.

Models come from the face-recognition-models wheel: nothing is downloaded at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import cv2
import dlib
import face_recognition_models
import numpy as np

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
# iBUG-300W indices
JAW, RIGHT_EYE, LEFT_EYE = slice(0, 17), slice(36, 42), slice(42, 48)
OUTER_LIPS, INNER_LIPS = slice(48, 60), slice(60, 68)


@dataclass(frozen=True)
class TrackerSettings:
    detect_every: int = 30  # frames between full detections, at most
    upsample: int = 0  # HOG upsampling: 0 finds faces from ~80 px, 1 from ~40 px (4x slower)
    scene_cut: float = 28.0  # mean absolute difference (0-255) of 64x48 thumbnails that counts as a cut
    match_iou: float = 0.3  # a detection this close to a tracked face replaces it

    def describe(self) -> dict[str, Any]:
        return {
            "detector": "dlib.get_frontal_face_detector (HOG)",
            "predictor": PREDICTOR_FILE,
            "detect_every": self.detect_every,
            "upsample": self.upsample,
            "scene_cut": self.scene_cut,
        }


@cache
def models() -> tuple[Any, Any]:
    """(detector, shape predictor), loaded once per process (the predictor file is 95 MB)."""
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(
        face_recognition_models.pose_predictor_model_location()
    )


def face_dict(box: dlib.rectangle, points: np.ndarray) -> dict[str, Any]:
    return {
        "box": [box.left(), box.top(), box.width(), box.height()],
        "points": np.round(points, 1).tolist(),
    }


def shape_points(shape: dlib.full_object_detection) -> np.ndarray:
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def detect_faces(gray: np.ndarray, upsample: int = 1) -> list[dict[str, Any]]:
    """Full detection + 68 points for every face: the reference, and what snapshots get."""
    detector, predictor = models()
    image = np.ascontiguousarray(gray)
    return [face_dict(box, shape_points(predictor(image, box))) for box in detector(image, upsample)]


def iou(a: dlib.rectangle, b: dlib.rectangle) -> float:
    inter = a.intersect(b)
    if inter.is_empty():
        return 0.0
    union = a.area() + b.area() - inter.area()
    return inter.area() / union if union else 0.0


@dataclass
class _Track:
    box: dlib.rectangle
    # detector box relative to the landmarks' extent: (dx, dy) of its centre in units of the
    # extent's size, and its side over the extent's width
    offset: tuple[float, float, float]
    points: np.ndarray


def _extent(points: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def _offset(box: dlib.rectangle, points: np.ndarray) -> tuple[float, float, float]:
    x, y, w, h = _extent(points)
    cx, cy = (box.left() + box.right()) / 2, (box.top() + box.bottom()) / 2
    w, h = max(w, 1.0), max(h, 1.0)
    return ((cx - (x + w / 2)) / w, (cy - (y + h / 2)) / h, box.width() / w)


def _box_from(points: np.ndarray, offset: tuple[float, float, float]) -> dlib.rectangle:
    x, y, w, h = _extent(points)
    w, h = max(w, 1.0), max(h, 1.0)
    cx, cy = x + w / 2 + offset[0] * w, y + h / 2 + offset[1] * h
    half = offset[2] * w / 2
    return dlib.rectangle(round(cx - half), round(cy - half), round(cx + half), round(cy + half))


class FaceTracker:
    """Landmarks for consecutive frames of one stream (one instance per session)."""

    def __init__(self, settings: TrackerSettings | None = None) -> None:
        self.settings = settings or TrackerSettings()
        self._tracks: list[_Track] = []
        self._since_detect = 0
        self._thumb: np.ndarray | None = None
        self.detections = 0

    def reset(self) -> None:
        """Forget the faces: the next frame is not a continuation (frames were skipped)."""
        self._tracks = []
        self._thumb = None

    def _scene_cut(self, gray: np.ndarray) -> bool:
        thumb = cv2.resize(gray, (64, 48), interpolation=cv2.INTER_AREA).astype(np.int16)
        previous, self._thumb = self._thumb, thumb
        return previous is not None and float(np.abs(thumb - previous).mean()) > self.settings.scene_cut

    def process(self, gray: np.ndarray, index: int | None = None) -> list[dict[str, Any]]:
        """Faces of the next frame. With ``index`` (the frame's index in its stream) periodic
        detections fall on multiples of ``detect_every``: a tracker started on such a frame
        (batch re-processing, one job per range) then reproduces the live results exactly."""
        detector, predictor = models()
        image = np.ascontiguousarray(gray)
        height, width = image.shape
        cut = self._scene_cut(image)
        if index is None:
            periodic = self._since_detect >= self.settings.detect_every
        else:
            periodic = index % self.settings.detect_every == 0
        due = not self._tracks or cut or periodic
        if due:
            self._detect(image, detector, predictor)
            self._since_detect = 0
        else:
            self._since_detect += 1
            kept = []
            for track in self._tracks:
                box = _box_from(track.points, track.offset)
                points = shape_points(predictor(image, box))
                if self._plausible(points, track, width, height):
                    kept.append(_Track(box, track.offset, points))
            if len(kept) < len(self._tracks):  # lost one: look again now
                self._detect(image, detector, predictor)
                self._since_detect = 0
            else:
                self._tracks = kept
        return [face_dict(t.box, t.points) for t in self._tracks]

    def _detect(self, image: np.ndarray, detector: Any, predictor: Any) -> None:
        self.detections += 1
        tracks = []
        for box in detector(image, self.settings.upsample):
            points = shape_points(predictor(image, box))
            tracks.append(_Track(box, _offset(box, points), points))
        self._tracks = tracks

    @staticmethod
    def _plausible(points: np.ndarray, track: _Track, width: int, height: int) -> bool:
        """Did the fit stay on a face? Size must not jump, and the face must stay in frame."""
        _, _, w, h = _extent(points)
        _, _, w0, h0 = _extent(track.points)
        if not (0.7 < w / max(w0, 1.0) < 1.4 and 0.7 < h / max(h0, 1.0) < 1.4):
            return False
        cx, cy = points.mean(axis=0)
        return 0 <= cx < width and 0 <= cy < height


def inter_ocular(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[RIGHT_EYE].mean(axis=0) - points[LEFT_EYE].mean(axis=0)))
