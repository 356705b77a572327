"""The 68-point landmark engines: ``numba`` (default; dlib's model, same points, ~4x faster) and
``dlib`` (dlib's own ``shape_predictor``, kept one setting away and used as the tests' reference).

Both take a gray image and detector boxes and give integer points, so the tracker, snapshots,
batch and export do not know which one runs.
"""

from __future__ import annotations

import logging
import time
from functools import cache
from pathlib import Path
from typing import Protocol

import face_recognition_models
import numpy as np

from ingest.exceptions import BadRequestError

log = logging.getLogger(__name__)
ENGINES = ("numba", "dlib")
COMPILED_S = 2.0  # a kernel ready after this long was compiled, not loaded from numba's cache


def model_path() -> Path:
    """dlib's 68-point model as the face-recognition-models wheel ships it (nothing downloaded)."""
    return Path(face_recognition_models.pose_predictor_model_location())


class Predictor(Protocol):
    name: str

    def fit(self, gray: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(n, 68, 2) int32 points for ``boxes`` (n, 4) = left, top, right, bottom (inclusive)."""
        ...


class NumbaPredictor:
    name = "numba"

    def __init__(self, path: Path | None = None) -> None:
        from ingest.analysis.engine import kernel as shape_kernel
        from ingest.analysis.engine.model import load_model

        model = load_model(path or model_path())
        self._kernel = shape_kernel.fit_boxes
        idx = model.split_idx
        self._arrays = (
            np.ascontiguousarray(model.initial_shape),
            np.ascontiguousarray(model.anchor_idx),
            np.ascontiguousarray(model.deltas),
            np.ascontiguousarray(idx[..., 0] | (idx[..., 1] << 16), dtype=np.int32),
            np.ascontiguousarray(model.split_thresh),
            shape_kernel.aligned_rows(model.leaves),
        )
        self.points = model.points

    def fit(self, gray: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        boxes = np.ascontiguousarray(boxes, dtype=np.int64).reshape(-1, 4)
        out = np.empty((boxes.shape[0], self.points, 2), np.int32)
        if boxes.shape[0]:
            self._kernel(np.ascontiguousarray(gray, dtype=np.uint8), boxes, *self._arrays, out)
        return out


class DlibPredictor:
    name = "dlib"

    def __init__(self, path: Path | None = None) -> None:
        import dlib

        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(path or model_path()))

    def fit(self, gray: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        image = np.ascontiguousarray(gray, dtype=np.uint8)
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        out = np.empty((boxes.shape[0], 68, 2), np.int32)
        for i, (left, top, right, bottom) in enumerate(boxes.tolist()):
            shape = self._predictor(image, self._dlib.rectangle(left, top, right, bottom))
            out[i] = [(p.x, p.y) for p in shape.parts()]
        return out


def check_engine(name: str) -> str:
    if name not in ENGINES:
        raise BadRequestError(f"landmark_engine {name!r} is not one of {', '.join(ENGINES)}")
    return name


def prepare_engine(name: str) -> None:
    """Check that the engine can run here and compile the numba kernel once, in this process,
    before worker processes start (so they load it from the cache instead of each compiling it:
    10-30 s once per installation, then well under a second). No model is loaded here."""
    check_engine(name)
    if name == "numba":
        from ingest.analysis.engine import kernel as shape_kernel

        started = time.perf_counter()
        shape_kernel.compile_kernels()
        took = time.perf_counter() - started
        # worth a line only when it was compiled (once per installation), not loaded from the cache
        log.log(logging.INFO if took >= COMPILED_S else logging.DEBUG, "numba landmark kernel ready in %.1f s (cache: %s)",
                took, shape_kernel.numba.config.CACHE_DIR)  # fmt: skip


@cache
def predictor(name: str = "numba") -> Predictor:
    """The engine ``name``, loaded once per process and warmed up: the numba kernel is compiled
    (or loaded from its cache) here, on a dummy face, never on a user's first frame."""
    check_engine(name)
    started = time.perf_counter()
    engine: Predictor = NumbaPredictor() if name == "numba" else DlibPredictor()
    engine.fit(np.zeros((64, 64), np.uint8), np.array([[8, 8, 55, 55]]))
    log.info("landmark engine %s ready in %.1f s", name, time.perf_counter() - started)
    return engine
