"""Who a face is: dlib's ResNet face descriptor (face-recognition-models'
``dlib_face_recognition_resnet_model_v1.dat``) compared with the gallery's (storage/gallery.py).

A descriptor costs ~3 ms per face with the default engine (onnxruntime running dlib's weights;
dlib's own network ~57 ms here: BENCHMARKS.md; it holds the GIL: never on the server's event
loop), so faces are identified per track (analysis/tracker.py): when a track starts, every
``identify_every`` frames, and again (from the descriptor it has, no new one) when the
gallery changes. Two descriptors of the same person lie within ~0.6 (dlib's threshold, 99.38%
on LFW): the nearest gallery photo within ``identity_threshold`` names the face.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ingest.analysis.engine.descriptor import Descriptor
from storage.gallery import Gallery, GalleryMatrix


@cache
def describer(engine: str = "onnxruntime") -> Descriptor:
    """The descriptor engine ``engine``, loaded once per process (engine/descriptor.py)."""
    return Descriptor(engine=engine)


def describe(
    rgb: np.ndarray, box: list[int] | tuple[int, ...], points: np.ndarray | list[list[int]], engine: str = "onnxruntime"
) -> np.ndarray:
    """The 128-d descriptor of the face at ``box`` (x, y, w, h) with its 68 ``points``: dlib's own
    vectors (within 1e-6), by ``engine`` (onnxruntime by default; ``dlib`` runs dlib's network)."""
    return describer(engine).compute(rgb, box, points)


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


def distances_by_name(matrix: GalleryMatrix, descriptor: np.ndarray) -> dict[str, float]:
    """Each gallery person's nearest photo's distance to ``descriptor`` (for enrolment checks)."""
    if not matrix.names:
        return {}
    distances = np.sqrt(((matrix.descriptors - descriptor) ** 2).sum(axis=1))
    best: dict[str, float] = {}
    for name, distance in zip(matrix.names, distances.tolist(), strict=True):
        best[name] = min(best.get(name, distance), distance)
    return {name: round(distance, 4) for name, distance in best.items()}


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
