"""Start-up of a process that analyses frames: a live worker, a batch pool worker, a Dask worker.

Each is one core's worth of work (OpenCV's thread pool would fight dlib for the core), and loads
the model and compiles (or loads) the kernel before its first frame, so no user's first frame
pays for either.
"""

from __future__ import annotations

import os

from ingest.analysis.engine.predictor import predictor
from ingest.analysis.identity import describer


def prepare_analysis_process(engine: str, descriptor_engine: str | None = None) -> None:
    """``descriptor_engine``: also load the face descriptor's network (live workers: a gallery
    may be enrolled at any moment; ~20 ms from its cache)."""
    import cv2

    cv2.setNumThreads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    predictor(engine)
    if descriptor_engine is not None:
        describer(descriptor_engine)
