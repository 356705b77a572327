"""The descriptor engines give dlib's own face descriptors (ingest/analysis/engine/descriptor.py):
every face the HOG detector (upsample 1) and the 68-point predictor find in the fixture photo and in
~10 frames of each fixture recording is described by dlib's ``compute_face_descriptor`` and by each
engine; they agree within 1e-4.

    python3 -m pytest -s tests/test_descriptor.py   # -s prints the max difference per fixture
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import dlib
import face_recognition_models
import numpy as np
import pytest

from ingest.analysis.engine import descriptor as de
from tests.conftest import IMAGES, RECORDING_NAMES
from tests.conftest import RECORDINGS as FIXTURE_RECORDINGS

TOLERANCE = 1e-4
FRAMES_PER_RECORDING = 10
PHOTO = IMAGES / "obama.jpg"
RECORDINGS = [FIXTURE_RECORDINGS / name for name in [*RECORDING_NAMES, "two_people_720p_vp8"]]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private cache: the test parses the .dat file itself and never touches ~/.cache."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("CAMINGEST_CACHE_DIR")
    os.environ["CAMINGEST_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CAMINGEST_CACHE_DIR", None)
    else:
        os.environ["CAMINGEST_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def dlib_models() -> tuple[Any, Any, Any]:
    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(face_recognition_models.pose_predictor_model_location()),
        dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location()),
    )


@pytest.fixture(scope="module")
def engines(cache_dir: Path) -> dict[str, de.Descriptor]:
    cv2.setNumThreads(1)
    return {name: de.Descriptor(engine=name) for name in ("onnxruntime", "opencv", "numpy")}


def frames_of(directory: Path) -> list[np.ndarray]:
    """~10 RGB frames spread over a recording (its chunks concatenated are one WebM file)."""
    av = pytest.importorskip("av")
    data = b"".join(p.read_bytes() for p in sorted(directory.glob("chunk_*.webm")))
    if not data:
        pytest.skip(f"no chunks in {directory}")
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        total = stream.frames or 180
        step = max(1, total // FRAMES_PER_RECORDING)
        frames = [
            frame.to_ndarray(format="rgb24")
            for i, frame in enumerate(container.decode(stream))
            if i % step == step // 2
        ]
    return frames[:FRAMES_PER_RECORDING]


def faces_in(rgb: np.ndarray, models: tuple[Any, Any, Any]) -> list[tuple[list[int], np.ndarray, Any]]:
    """(box_xywh, points (68, 2), dlib shape) of every face in ``rgb``."""
    detector, predictor, _ = models
    faces = []
    for rect in detector(rgb, 1):
        shape = predictor(rgb, rect)
        box = [rect.left(), rect.top(), rect.width(), rect.height()]
        points = np.array([(p.x, p.y) for p in shape.parts()])
        faces.append((box, points, shape))
    return faces


def compare(
    images: list[np.ndarray], models: tuple[Any, Any, Any], engines: dict[str, de.Descriptor], label: str
) -> int:
    """Every face of ``images``: each engine's descriptor against dlib's. Returns the face count."""
    model = models[2]
    worst = dict.fromkeys(engines, 0.0)
    count = 0
    for rgb in images:
        faces = faces_in(rgb, models)
        for box, points, shape in faces:
            ref = np.array(model.compute_face_descriptor(rgb, shape))
            assert np.isfinite(ref).all() and ref.shape == (128,)
            for name, engine in engines.items():
                got = engine.compute(rgb, box, points)
                assert got.shape == (128,) and got.dtype == np.float64
                diff = float(np.abs(got - ref).max())
                worst[name] = max(worst[name], diff)
                assert diff <= TOLERANCE, f"{label}: {name} differs from dlib by {diff:.2e} on face {box}"
        count += len(faces)
        if len(faces) > 1:
            # a batch (one forward pass) gives each face's own descriptor
            many = engines["onnxruntime"].compute_many(rgb, [(box, points) for box, points, _ in faces])
            single = np.stack([engines["onnxruntime"].compute(rgb, box, points) for box, points, _ in faces])
            assert np.abs(many - single).max() <= 1e-5
    print(f"\n{label}: {count} faces, max |diff| vs dlib: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    return count


def test_photo(dlib_models: tuple[Any, Any, Any], engines: dict[str, de.Descriptor]) -> None:
    rgb = np.ascontiguousarray(cv2.imread(str(PHOTO))[:, :, ::-1])
    assert compare([rgb], dlib_models, engines, PHOTO.name) == 1


@pytest.mark.parametrize("recording", RECORDINGS, ids=lambda p: p.name)
def test_recording(recording: Path, dlib_models: tuple[Any, Any, Any], engines: dict[str, de.Descriptor]) -> None:
    frames = frames_of(recording)
    assert len(frames) >= 5
    assert compare(frames, dlib_models, engines, recording.name) > 0


def test_small_face(dlib_models: tuple[Any, Any, Any], engines: dict[str, de.Descriptor]) -> None:
    """The ~55 px face of the two-person recording: its chip is upsampled ~3x by dlib."""
    frames = frames_of(FIXTURE_RECORDINGS / "two_people_720p_vp8")[:3]
    small = [(rgb, f) for rgb in frames for f in faces_in(rgb, dlib_models) if f[0][2] < 80]
    assert small, "the small face was not detected"
    for rgb, (box, points, shape) in small:
        ref = np.array(dlib_models[2].compute_face_descriptor(rgb, shape))
        assert np.abs(engines["onnxruntime"].compute(rgb, box, points) - ref).max() <= TOLERANCE


def test_chip_is_dlibs(dlib_models: tuple[Any, Any, Any]) -> None:
    """The chip (dlib.get_face_chip) is compute_face_descriptor's: dlib's own network on it gives
    the same vector bit for bit."""
    rgb = np.ascontiguousarray(cv2.imread(str(PHOTO))[:, :, ::-1])
    ((_, _, shape),) = faces_in(rgb, dlib_models)
    model = dlib_models[2]
    chip = de.chips(rgb, [shape])
    assert chip.shape == (1, 150, 150, 3) and chip.dtype == np.uint8
    assert np.array_equal(
        np.array(model.compute_face_descriptor(chip[0])), np.array(model.compute_face_descriptor(rgb, shape))
    )


def test_dlib_switch(dlib_models: tuple[Any, Any, Any], cache_dir: Path) -> None:
    """engine="dlib" is dlib's own network; dlib_descriptor the reference function."""
    rgb = np.ascontiguousarray(cv2.imread(str(PHOTO))[:, :, ::-1])
    ((box, points, shape),) = faces_in(rgb, dlib_models)
    ref = np.array(dlib_models[2].compute_face_descriptor(rgb, shape))
    d = de.Descriptor(engine="dlib")
    assert np.array_equal(d.compute(rgb, box, points), ref)
    assert np.array_equal(d.compute_many(rgb, [(box, points)] * 2), np.stack([ref, ref]))
    assert np.array_equal(de.dlib_descriptor(rgb, box, points), ref)
    assert d.compute_many(rgb, []).shape == (0, 128)
    with pytest.raises(ValueError, match="engine must be one of"):
        de.Descriptor(engine="tensorflow")


def test_weights_and_cache(cache_dir: Path) -> None:
    path = de.default_model_path()
    parsed = de.parse_dlib_model(path)
    # 29 convolutions, each followed by an affine; the stem and dlib's stored padding conventions
    assert len(parsed["conv_geom"]) == 29
    assert parsed["conv0_w"].shape == (32, 3, 7, 7) and tuple(parsed["conv_geom"][0]) == (2, 2, 0, 0)
    assert tuple(parsed["conv_geom"][1]) == (1, 1, 1, 1)  # stride 1: "same" padding (filter/2)
    assert all(tuple(g[2:]) == (0, 0) for g in parsed["conv_geom"] if g[0] == 2)  # stride 2: none
    assert parsed["fc_w"].shape == (256, 128)
    assert np.allclose(parsed["avg_rgb"], [122.782, 117.001, 104.298])
    # the cache: written once (by the engines fixture or here), keyed by size+mtime, equal to a parse
    cached = de.load_weights(path)
    entry = de.cache_path(path)
    assert entry.exists() and entry.parent == cache_dir / "models"
    assert str(os.stat(path).st_size) in entry.name and str(os.stat(path).st_mtime_ns) in entry.name
    assert sorted(cached) == sorted(parsed)
    assert all(np.array_equal(cached[k], parsed[k]) for k in parsed)
    assert de.cache_path(path, ".onnx").exists()
    assert not list(entry.parent.glob("*.tmp"))  # nothing half-written left behind
    # a damaged entry is replaced, not trusted
    entry.write_bytes(b"not an npz")
    assert all(np.array_equal(de.load_weights(path)[k], parsed[k]) for k in parsed)
    assert np.load(entry)["fc_w"].shape == (256, 128)
    graph = de.cache_path(path, ".onnx")
    graph.write_bytes(b"not an onnx graph")
    rgb = np.zeros((150, 150, 3), np.uint8)
    assert de.Descriptor(engine="onnxruntime").compute_chips(rgb[None]).shape == (1, 128)
    assert graph.stat().st_size > 20_000_000  # rebuilt and rewritten


def test_rejects_other_files(tmp_path: Path) -> None:
    data = Path(de.default_model_path()).read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(de.ModelFormatError):
        de.parse_dlib_model(truncated)
    other = tmp_path / "shape_predictor.dat"
    other.write_bytes(Path(face_recognition_models.pose_predictor_five_point_model_location()).read_bytes()[:4096])
    with pytest.raises(de.ModelFormatError):
        de.parse_dlib_model(other)
