"""The numba landmark engine against dlib's own shape_predictor, point for point, and its model
reader: round trip of the cache, and the errors for files that are not a model."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from ingest.analysis.detect import detect_boxes
from ingest.analysis.engine.model import ShapeModel, load_model, parse_model
from ingest.analysis.engine.predictor import DlibPredictor, model_path, predictor
from ingest.analysis.tracker import FaceTracker, TrackerSettings
from ingest.exceptions import ModelError
from tests.conftest import IMAGES, RECORDING_NAMES, ROOT, load_recording
from tests.media import decoded_frames


@pytest.fixture(scope="module")
def dlib_engine() -> DlibPredictor:
    return DlibPredictor()


def probe_boxes(gray: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Detector boxes, the same shifted and scaled by ±10%, and moved across every image border."""
    height, width = gray.shape
    out = []
    for left, top, right, bottom in boxes:
        side = right - left
        d = max(side // 10, 1)
        out += [
            (left, top, right, bottom),
            (left + d, top - d, right + d, bottom - d),  # shifted
            (left - d, top - d, right + d, bottom + d),  # 20% larger
            (left + d, top + d, right - d, bottom - d),  # 20% smaller
            (-side // 2, top, side - side // 2, bottom),  # across the left border
            (width - side // 2, top, width + side - side // 2, bottom),  # the right one
            (left, -side // 2, right, side - side // 2),  # the top one
            (left, height - side // 2, right, height + side - side // 2),  # the bottom one
        ]
    return np.array(out, dtype=np.int64).reshape(-1, 4)


@pytest.mark.parametrize("name", RECORDING_NAMES)
def test_kernel_equals_dlib_on_every_frame(name, dlib_engine):
    numba_engine = predictor("numba")
    # faces of the webcam fixtures are ~270 px: upsample 0 finds them; the scene needs 1
    upsample = 1 if name.startswith("scene") else 0
    faces = differences = 0
    for frame in decoded_frames(load_recording(name).chunks):
        gray = np.ascontiguousarray(frame.gray())
        boxes = probe_boxes(gray, detect_boxes(gray, upsample))
        if not len(boxes):
            continue
        ours, theirs = numba_engine.fit(gray, boxes), dlib_engine.fit(gray, boxes)
        faces += len(boxes)
        differences += int((ours != theirs).any(axis=2).sum())
    assert faces >= 500
    assert differences == 0, f"{differences} of {faces * 68} points differ from dlib's"


def test_kernel_equals_dlib_on_the_photo(dlib_engine):
    gray = cv2.imread(str(IMAGES / "obama.jpg"), cv2.IMREAD_GRAYSCALE)
    boxes = probe_boxes(gray, detect_boxes(gray, 1))
    assert len(boxes) == 8
    np.testing.assert_array_equal(predictor("numba").fit(gray, boxes), dlib_engine.fit(gray, boxes))


def test_several_faces_in_one_call_equal_one_at_a_time():
    gray = cv2.imread(str(IMAGES / "obama.jpg"), cv2.IMREAD_GRAYSCALE)
    boxes = probe_boxes(gray, detect_boxes(gray, 1))
    engine = predictor("numba")
    together = engine.fit(gray, boxes)
    for i, box in enumerate(boxes):
        np.testing.assert_array_equal(engine.fit(gray, box[None]), together[i : i + 1])
    assert engine.fit(gray, np.zeros((0, 4), np.int64)).shape == (0, 68, 2)


def test_tracker_gives_the_same_faces_with_either_engine():
    frames = [np.ascontiguousarray(f.gray()) for f in decoded_frames(load_recording("scene_vp8_opus_250ms").chunks)]
    a = FaceTracker(TrackerSettings(engine="numba"))
    b = FaceTracker(TrackerSettings(engine="dlib"))
    results = [(a.process(g, i), b.process(g, i)) for i, g in enumerate(frames[100:160], start=100)]
    assert sum(len(x) for x, _ in results) > 40
    assert all(x == y for x, y in results)


# -- the model reader ----------------------------------------------------------------------------


def test_model_cache_round_trip(tmp_path):
    cache = tmp_path / "cache"
    parsed = load_model(model_path(), cache=cache)  # parses the file and writes the cache
    (written,) = cache.iterdir()
    assert written.suffix == ".npz" and str(os.stat(model_path()).st_size) in written.name
    cached = load_model(model_path(), cache=cache)  # loads the arrays back
    for field in ShapeModel.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(parsed, field), getattr(cached, field), err_msg=field)
        assert getattr(parsed, field).dtype == getattr(cached, field).dtype
    assert cached.describe() == {"points": 68, "cascades": 15, "trees": 500, "depth": 4, "features": 500}


def test_model_cache_follows_the_file_and_may_be_unwritable(tmp_path):
    model = tmp_path / "model.dat"
    model.write_bytes(model_path().read_bytes())
    cache = tmp_path / "cache"
    load_model(model, cache=cache)
    os.utime(model, ns=(1, 1))  # "changed": a new key, a new cache file
    load_model(model, cache=cache)
    assert len(list(cache.iterdir())) == 2
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("x")
    assert load_model(model, cache=blocked).points == 68  # a cache that cannot be written is no error


def test_truncated_model_fails_with_the_documented_error(tmp_path):
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(model_path().read_bytes()[:50_000_001])
    with pytest.raises(ModelError) as caught:
        parse_model(truncated)
    assert str(caught.value).startswith(f"{truncated} is not a usable dlib shape predictor model: the file is truncated")


def test_random_file_fails_with_the_documented_error(tmp_path):
    junk = tmp_path / "junk.dat"
    junk.write_bytes(np.random.default_rng(1).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError) as caught:
        parse_model(junk)
    assert str(caught.value).startswith(f"{junk} is not a usable dlib shape predictor model: ")
    text = tmp_path / "text.dat"
    text.write_text("not a model\n")
    with pytest.raises(ModelError, match="is not a usable dlib shape predictor model"):
        parse_model(text)
    with pytest.raises(ModelError, match=r"cannot read the landmark model .*missing\.dat"):
        load_model(tmp_path / "missing.dat", cache=tmp_path / "c")


def test_missing_numba_is_one_clear_line(tmp_path):
    """The CLI checks the engine before it starts anything: no traceback, exit status 1."""
    code = "import sys; sys.modules['numba'] = None; from ingest.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", code, "reprocess", "--all", "--data", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "camingest reprocess: the numba landmark engine needs numba (numba is not installed: pip install numba); "
        "or set landmark_engine=dlib"
    )
    assert "Traceback" not in result.stderr


def test_unknown_engine_is_refused_by_name(tmp_path):
    env = dict(os.environ, CAMINGEST_LANDMARK_ENGINE="opencv")
    result = subprocess.run([sys.executable, "-m", "ingest.cli", "sessions", "--data", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == "camingest sessions: landmark_engine is 'opencv'; allowed: numba, dlib"


def test_the_model_both_engines_share_exists_and_is_dlibs_68_point_predictor():
    """model_path() is the one model file of both engines: it must be there (the wheel's file,
    nothing downloaded) and be a 68-point shape predictor that dlib itself loads."""
    import dlib

    path = model_path()
    assert path.is_file(), f"{path} is not a file"
    assert path.name == "shape_predictor_68_face_landmarks.dat"
    shape = dlib.shape_predictor(str(path))(np.zeros((64, 64), np.uint8), dlib.rectangle(8, 8, 55, 55))
    assert shape.num_parts == 68
