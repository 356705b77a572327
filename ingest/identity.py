"""Who a face is: dlib's ResNet face descriptor (face-recognition-models'
``dlib_face_recognition_resnet_model_v1.dat``) compared with the gallery's (storage/gallery.py).

A descriptor costs ~75 ms per face on this project's 2-core machine (BENCHMARKS.md; it holds the
GIL: never on the server's event loop), so faces are identified per track (ingest/landmarks.py): when a track starts,
every ``identify_every`` frames, and again (from the descriptor it has, no new one) when the
gallery changes. Two descriptors of the same person lie within ~0.6 (dlib's threshold, 99.38%
on LFW): the nearest gallery photo within ``identity_threshold`` names the face.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import cv2
import dlib
import numpy as np

from ingest.exceptions import InvalidMediaError, TooLargeError
from ingest.images import EXTENSIONS, image_type, probe_image
from storage.gallery import Enrolment, Gallery, GalleryMatrix

# the enrolment photo is analysed at most this large (width x height), as snapshots are
ENROL_MAX_PIXELS = 4_000_000


@cache
def _model() -> Any:
    import face_recognition_models

    return dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())


def describe(rgb: np.ndarray, box: list[int] | tuple[int, ...], points: np.ndarray | list[list[int]]) -> np.ndarray:
    """The 128-d descriptor of the face at ``box`` (x, y, w, h) with its 68 ``points``."""
    x, y, w, h = (int(v) for v in box)
    shape = dlib.full_object_detection(
        dlib.rectangle(x, y, x + w - 1, y + h - 1), [dlib.point(int(px), int(py)) for px, py in points]
    )
    return np.array(_model().compute_face_descriptor(np.ascontiguousarray(rgb), shape))


def nearest(matrix: GalleryMatrix, descriptor: np.ndarray, threshold: float) -> dict[str, Any] | None:
    """``{"name", "distance"}`` of the nearest gallery photo within ``threshold``, else None.
    One vectorized pass: thousands of people cost microseconds."""
    if not matrix.names:
        return None
    distances = np.sqrt(((matrix.descriptors - descriptor) ** 2).sum(axis=1))
    best = int(np.argmin(distances))
    if distances[best] > threshold:
        return None
    return {"name": matrix.names[best], "distance": round(float(distances[best]), 4)}


class GallerySource(Protocol):
    """Where a tracker reads the gallery: ``current()`` -> (a token that changes with it, matrix)."""

    def current(self) -> tuple[object, GalleryMatrix]: ...


@dataclass(frozen=True)
class FixedGallery:
    """The gallery as it was when a batch job was planned: travels with the job (no files)."""

    matrix: GalleryMatrix

    def current(self) -> tuple[object, GalleryMatrix]:
        return 0, self.matrix


class LiveGallery:
    """The data folder's gallery, reloaded in this process when it changes (checked with one
    ``stat`` at most every ``check_every_s``): live workers see enrolments without a restart."""

    def __init__(self, data_dir: str | Path, check_every_s: float = 0.25) -> None:
        self.gallery = Gallery(Path(data_dir))
        self.check_every_s = check_every_s
        self._checked = -1e9
        self._generation: object = None
        self._matrix = GalleryMatrix.empty()

    def current(self) -> tuple[object, GalleryMatrix]:
        now = time.monotonic()
        if now - self._checked >= self.check_every_s:
            self._checked = now
            generation = self.gallery.generation()
            if generation != self._generation:
                self._matrix = self.gallery.matrix()
                self._generation = generation
        return self._generation, self._matrix


class DescriptorBudget:
    """How much of a live worker's time descriptors may take: a token bucket of CPU seconds
    filled at ``share`` of wall time, holding at most ``burst_s``. A descriptor is computed
    while the bucket is not empty; otherwise the track keeps the identity it has (a new track:
    none yet) and is identified on a later frame. Twenty sessions starting together then delay
    names by a few seconds instead of delaying everyone's landmarks. Batch jobs have no budget."""

    def __init__(self, share: float, burst_s: float = 0.5) -> None:
        self.share = share
        self.burst_s = burst_s
        self._tokens = burst_s
        self._last = time.monotonic()

    def available(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst_s, self._tokens + (now - self._last) * self.share)
        self._last = now
        return self._tokens > 0

    def spend(self, seconds: float) -> None:
        self._tokens -= seconds


@cache
def live_budget(share: float) -> DescriptorBudget:
    """One per worker process: its sessions share it."""
    return DescriptorBudget(share)


@cache
def live_gallery(data_dir: str) -> LiveGallery:
    """One per process and data folder (the trackers of all sessions of a worker share it)."""
    return LiveGallery(data_dir)


def enrolment(
    data: bytes, source: str, upsample: int = 1, engine: str = "numba", max_pixels: int = 40_000_000
) -> Enrolment:
    """The face of one enrolment photo. Refuses (``InvalidMediaError`` naming ``source``) what
    is not a JPEG/PNG/WebP image, a photo without a face, and one with several faces (saying
    which one would be taken: a cropped photo makes it certain); ``TooLargeError`` for a header
    that declares more than ``max_pixels`` (checked before decoding, as for snapshots)."""
    from ingest.landmarks import detect_faces

    mime = image_type(data)
    if mime is None:
        raise InvalidMediaError(f"{source} is not a photo; send a JPEG, PNG or WebP image of the person's face")
    try:
        info = probe_image(data)
    except InvalidMediaError as exc:
        raise InvalidMediaError(f"{source}: {exc.message}") from None
    if info.pixels > max_pixels:
        raise TooLargeError(
            f"{source} declares {info.width}x{info.height} = {info.pixels} pixels, more than max_snapshot_pixels={max_pixels}"
        )
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InvalidMediaError(f"{source} does not decode as an image; it may be damaged")
    scale = 1.0
    if bgr.shape[0] * bgr.shape[1] > ENROL_MAX_PIXELS:
        scale = (ENROL_MAX_PIXELS / (bgr.shape[0] * bgr.shape[1])) ** 0.5
        bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    faces = detect_faces(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), upsample, engine)
    if not faces:
        raise InvalidMediaError(f"{source}: no face found; use a photo where the face is clearly visible, from the front")
    largest = max(faces, key=lambda f: f["box"][2] * f["box"][3])
    if len(faces) > 1:
        x, y, w, h = (round(v / scale) for v in largest["box"])
        raise InvalidMediaError(
            f"{source}: {len(faces)} faces found; the largest ({w}x{h} px at x={x}, y={y}) would be taken. "
            "Crop the photo to the one person and send it again"
        )
    descriptor = describe(rgb, largest["box"], largest["points"])
    box = tuple(round(v / scale) for v in largest["box"])
    return Enrolment(data, source, f".{EXTENSIONS[mime]}", box, descriptor)  # type: ignore[arg-type]
