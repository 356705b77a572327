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

from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import numpy as np

from ingest.analysis.engine.descriptor import Descriptor
from storage.gallery import GalleryMatrix


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


class PushedGallery:
    """The gallery as the server last sent it to this worker process (``SetGallery``): the
    server watches the index's gallery generation and sends every change to its workers, so live
    trackers see enrolments on any node within a fraction of a second, without a restart."""

    def __init__(self) -> None:
        self._generation: object = None
        self._matrix = GalleryMatrix.empty()

    def update(self, generation: object, matrix: GalleryMatrix) -> None:
        self._generation, self._matrix = generation, matrix

    def current(self) -> tuple[object, GalleryMatrix]:
        return self._generation, self._matrix
