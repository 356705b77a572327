"""Small faces found at the default detection settings: recall against per-frame full detection
at upsample 1 (the expensive reference) on the scene fixture (cuts, faces from 36 px) and on a
720p recording of two people at different distances (faces of ~230 and ~55 px)."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.analysis.detect import detect_faces
from ingest.analysis.tracker import FaceTracker, TrackerSettings
from tests.conftest import load_recording
from tests.media import decoded_frames, match_faces


@pytest.mark.parametrize(("name", "every"), [("scene_vp8_opus_250ms", 1), ("two_people_720p_vp8", 3)])
def test_recall_at_default_settings(name, every):
    tracker = FaceTracker(TrackerSettings())
    errors: list[float | None] = []
    reference_faces = 0
    for frame in decoded_frames(load_recording(name).chunks):
        gray = np.ascontiguousarray(frame.gray())
        found = tracker.process(gray, frame.index)
        if frame.index % every == 0:
            reference = detect_faces(gray, 1)
            reference_faces += len(reference)
            errors += match_faces(reference, found)
    hits = [e for e in errors if e is not None]
    assert reference_faces >= 60
    assert len(hits) / len(errors) >= 0.95, f"recall {len(hits)}/{len(errors)}"
    assert float(np.median(hits)) <= 0.05
    # cheap: full-frame sweeps only on the first frame, every 300 frames and at the scene cuts
    assert tracker.sweeps <= 6


def test_both_people_are_found_in_the_720p_recording():
    tracker = FaceTracker(TrackerSettings())
    sizes = []
    for frame in decoded_frames(load_recording("two_people_720p_vp8").chunks):
        faces = tracker.process(np.ascontiguousarray(frame.gray()), frame.index)
        sizes.append(sorted(f["box"][2] for f in faces))
    assert len(sizes) == load_recording("two_people_720p_vp8").expected["video_frames"] == 180
    two = [s for s in sizes if len(s) == 2]
    assert len(two) >= 0.95 * len(sizes)
    # one far (small) and one near (large) face
    assert all(s[0] < 80 and s[1] > 180 for s in two)
