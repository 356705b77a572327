"""The face tracker and the snapshot path, in process, on real decoded frames."""

from __future__ import annotations

import cv2
import numpy as np

from ingest.analysis.detect import detect_faces
from ingest.analysis.tracker import FaceTracker, TrackerSettings
from tests.conftest import IMAGES, load_recording
from tests.media import decoded_frames, match_faces


def test_several_faces_are_tracked_in_every_frame():
    """Two webcam streams side by side (1280x480): two faces in every frame, each accurate."""
    frames = [np.array(f.gray()) for f in decoded_frames(load_recording("webcam_vp8_kf1s_250ms").chunks)]
    tracker = FaceTracker(TrackerSettings(detect_every=30))
    errors: list[float | None] = []
    for index, gray in enumerate(frames[:120]):
        both = np.hstack([gray, cv2.flip(gray, 1)])
        faces = tracker.process(both)
        assert len(faces) == 2, f"frame {index}: {len(faces)} faces"
        if index % 10 == 0:
            errors += match_faces(detect_faces(both, 1), faces)
    assert all(e is not None for e in errors) and float(np.median(errors)) <= 0.05
    # tracking, not detecting, between detections: one sweep, then a half-size refresh per 30 frames
    assert tracker.sweeps == 1 and tracker.refreshes == 3  # frames 30, 60, 90


def test_scene_cut_triggers_detection():
    webcam = [np.array(f.gray()) for f in decoded_frames(load_recording("webcam_vp8_kf1s_250ms").chunks)][:40]
    tracker = FaceTracker(TrackerSettings(detect_every=1000, sweep_every=1000))
    for gray in webcam[:20]:
        tracker.process(gray)
    assert tracker.sweeps == 1
    blank = np.full_like(webcam[0], 30)
    assert tracker.process(blank) == []  # the cut is seen: a sweep runs and finds nobody
    assert tracker.sweeps == 2
    faces = tracker.process(webcam[20])  # cut back: found again at once
    assert len(faces) == 1 and tracker.sweeps == 3


def test_still_image_full_detection():
    gray = cv2.imread(str(IMAGES / "obama.jpg"), cv2.IMREAD_GRAYSCALE)
    (face,) = detect_faces(gray, 1)
    points = np.array(face["points"])
    assert points.shape == (68, 2)
    x, y, w, h = face["box"]
    # all 68 points near the box: landmarks belong to the detected face
    assert (points[:, 0] > x - 0.2 * w).all() and (points[:, 0] < x + 1.2 * w).all()
    assert (points[:, 1] > y - 0.2 * h).all() and (points[:, 1] < y + 1.2 * h).all()
    # iBUG order: the right eye (36-41) is left of the left eye (42-47) in the image
    assert points[36:42, 0].mean() < points[42:48, 0].mean()
