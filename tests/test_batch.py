"""Batch re-processing, finalize and export, on sessions recorded through a real server."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path

import av
import numpy as np
import pytest

from ingest.analysis.tracker import TrackerSettings
from ingest.media.webm import _read_header
from tests.client import http_get, record, run, wait_for_summary
from tests.conftest import ROOT, ffprobe_frames, load_recording

NO_SKIP = {"CAMINGEST_LIVE_QUEUE_UNITS": "100000"}


def cli(*args: str, data: Path, backend: tuple[tuple[str, ...], dict[str, str]] = ((), {})) -> subprocess.CompletedProcess[str]:
    """``camingest ARGS --data DATA`` with the test's backend flags (conftest ``backend_args``)."""
    flags, env = backend
    return subprocess.run([sys.executable, "-m", "ingest.cli", *args, "--data", str(data), *flags],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, **env})  # fmt: skip


def record_live(server, recording) -> str:
    """Record a fixture through the server and wait until every frame has live landmarks."""

    async def scenario() -> str:
        session = await record(server.url, recording)
        await wait_for_summary(f"{server.url}/api/sessions/{session['session_id']}",
                               lambda d: d["analysed_frames"] == recording.expected["video_frames"] and d["finalized"],
                               "live analysis and finalize")  # fmt: skip
        return session["session_id"]

    return run(scenario())


def read_landmarks(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    "name", ["webcam_vp8_opus_250ms", "webcam_vp8_kf1s_250ms", "webcam_h264_250ms", "scene_vp8_opus_250ms"]
)
@pytest.mark.backends  # also on PostgreSQL + SeaweedFS (README, "Testing")
def test_reprocess_equals_live_and_covers_every_frame(server_factory, tmp_path, name, backend, backend_args):
    if backend == "engines" and name != "webcam_vp8_kf1s_250ms":
        pytest.skip("one recording is enough on the engines: the others add no route")
    recording = load_recording(name)
    data = tmp_path / "data"
    server = server_factory(data=data, env=NO_SKIP)
    session_id = record_live(server, recording)
    server.stop()
    landmarks = data / "sessions" / session_id / "landmarks.jsonl"
    live = read_landmarks(landmarks)

    result = cli("reprocess", session_id, "--workers", "2", data=data, backend=backend_args)
    assert result.returncode == 0, result.stderr
    assert f"{recording.expected['video_frames']} frames" in result.stdout
    batch = read_landmarks(landmarks)
    assert [f["index"] for f in batch] == list(range(recording.expected["video_frames"]))
    assert all("faces" in f for f in batch)  # none skipped
    # same frames, same settings: the same landmarks (ranges start on frames where live detects)
    assert batch == live
    meta = json.loads((data / "sessions" / session_id / "landmarks.meta.json").read_text())
    assert meta["mode"] == "batch" and meta["workers"] == 2 and meta["detect_every"] == 30
    assert meta["engine"] == "numba" and meta["sweep_every"] == 300 and meta["upsample"] == 1
    # the session's own sweeps, the ones live analysis used (its meta said so before)
    assert meta["sweep_offset"] == TrackerSettings().for_session(session_id).sweep_offset
    # running it twice does no harm
    assert cli("reprocess", "--all", "--workers", "2", data=data, backend=backend_args).returncode == 0
    assert read_landmarks(landmarks) == batch


def test_interrupted_reprocess_keeps_previous_landmarks(server_factory, tmp_path):
    recording = load_recording("scene_vp8_opus_250ms")
    data = tmp_path / "data"
    server = server_factory(data=data, env=NO_SKIP)
    session_id = record_live(server, recording)
    server.stop()
    landmarks = data / "sessions" / session_id / "landmarks.jsonl"
    before = landmarks.read_bytes()
    # on a terminal, as a person runs it: the bar is drawn only there (issue 18)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "ingest.cli", "reprocess", session_id, "--workers", "1",
                             "--data", str(data)], cwd=ROOT, stderr=follower, stdout=subprocess.PIPE)  # fmt: skip
    os.close(follower)
    seen = b""
    try:
        while b"frame/s" not in seen:  # the frames bar is up: jobs are running
            piece = os.read(leader, 100)
            assert piece, f"reprocess ended before its bar: {seen!r}"
            seen += piece
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        err = seen
        with contextlib.suppress(OSError):  # EIO once the terminal's other side is closed and read
            while piece := os.read(leader, 4096):
                err += piece
    finally:
        os.close(leader)
    assert proc.returncode == 130
    assert b"previous landmarks are kept" in err
    assert landmarks.read_bytes() == before
    assert not list(landmarks.parent.glob("*.tmp"))


def cues_and_duration(data: bytes) -> tuple[bool, bool]:
    """Whether the Segment has a Cues element and Info carries a Duration (walks top level)."""
    pos, end = 0, len(data)
    element, size, header = _read_header(data, pos, end)
    pos += header + size  # EBML header
    element, size, header = _read_header(data, pos, end)
    assert element == 0x18538067
    pos += header
    found_cues = found_duration = False
    while pos < end:
        element, size, header = _read_header(data, pos, end)
        if element == 0x1C53BB6B:
            found_cues = True
        if element == 0x1549A966:
            found_duration = b"\x44\x89" in data[pos + header : pos + header + size]
        pos += header + (size or 0)  # unknown-size Clusters (the raw stream): walk into them
    return found_cues, found_duration


@pytest.mark.backends  # also on PostgreSQL + SeaweedFS (README, "Testing")
def test_finalized_recording_is_seekable(server_factory, tmp_path, backend):
    recording = load_recording("webcam_vp8_opus_250ms")
    server = server_factory(env=NO_SKIP)
    session_id = record_live(server, recording)

    async def fetch() -> tuple[bytes, bytes]:
        base = f"{server.url}/api/sessions/{session_id}"
        return (await http_get(base + "/recording.webm"))[1], (await http_get(base + "/raw.webm"))[1]

    finalized, raw = run(fetch())
    assert raw == recording.stream  # raw stays byte-identical
    assert cues_and_duration(finalized) == (True, True)
    assert cues_and_duration(raw) == (False, False)
    path = tmp_path / "recording.webm"
    path.write_bytes(finalized)
    assert ffprobe_frames(path) == recording.expected["video_frames"]
    duration = float(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                                     str(path)], capture_output=True, text=True, check=True).stdout)  # fmt: skip
    assert abs(duration - 8.0) < 0.2
    with av.open(io.BytesIO(finalized)) as container:
        video = container.streams.video[0]
        container.seek(int(4.0 / video.time_base), stream=video)  # to the middle
        frame = next(container.decode(video))
        assert 2.0 < float(frame.pts * video.time_base) <= 4.1  # the keyframe at or before 4 s


@pytest.mark.backends  # also on PostgreSQL + SeaweedFS (README, "Testing")
def test_export_draws_overlay_only_near_landmarks(server_factory, tmp_path, backend_args):
    recording = load_recording("webcam_vp8_kf1s_250ms")
    data = tmp_path / "data"
    server = server_factory(data=data, env=NO_SKIP)
    session_id = record_live(server, recording)
    server.stop()
    outputs = {}
    for overlay, suffix in (("landmarks", ".mp4"), ("none", ".mp4"), ("lips", ".webm")):
        out = tmp_path / f"{overlay}{suffix}"
        result = cli("export", session_id, "--out", str(out), "--overlay", overlay, data=data, backend=backend_args)
        assert result.returncode == 0, result.stderr
        assert ffprobe_frames(out) == recording.expected["video_frames"]
        outputs[overlay] = out
    frames = read_landmarks(data / "sessions" / session_id / "landmarks.jsonl")
    with av.open(str(outputs["landmarks"])) as a, av.open(str(outputs["none"])) as b:
        pairs = zip(a.decode(video=0), b.decode(video=0), strict=True)
        for index, (drawn, plain) in enumerate(pairs):
            if index % 40:
                continue
            diff = np.abs(drawn.to_ndarray(format="gray").astype(int) - plain.to_ndarray(format="gray").astype(int))
            near = np.zeros(diff.shape, bool)
            points = np.array(frames[index]["faces"][0]["points"])
            x0, y0 = (points.min(axis=0) - 12).astype(int)
            x1, y1 = (points.max(axis=0) + 12).astype(int)
            near[max(y0, 0) : y1, max(x0, 0) : x1] = True
            assert diff[near].max() > 60, f"frame {index}: no overlay drawn near the landmarks"
            assert np.percentile(diff[~near], 99) < 12, f"frame {index}: pixels changed away from the face"
    bad = cli("export", session_id, "--out", str(tmp_path / "x.avi"), data=data, backend=backend_args)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and ".mp4 or .webm" in bad.stderr
    unknown = cli("export", "20990101-000000-deadbeef", "--out", str(tmp_path / "x.mp4"), data=data, backend=backend_args)
    assert unknown.returncode == 1 and "unknown session" in unknown.stderr


def test_av1_recording_finalizes_and_reprocesses(server_factory, tmp_path):
    """AV1 (Chromium's av01): finalize remuxes it with Duration and Cues although no AV1 encoder
    exists (libdav1d decodes only), the result decodes to ffprobe's frame count, reprocess exits 0."""
    recording = load_recording("webcam_av1_250ms")
    data = tmp_path / "data"
    server = server_factory("--no-analysis", data=data)

    async def scenario() -> str:
        session = await record(server.url, recording, pace=0)
        await wait_for_summary(f"{server.url}/api/sessions/{session['session_id']}", lambda s: s["finalized"],
                               "the AV1 recording finalized")  # fmt: skip
        return session["session_id"]

    session_id = run(scenario())
    server.stop()
    path = data / "sessions" / session_id / "recording.webm"
    assert cues_and_duration(path.read_bytes()) == (True, True)
    assert ffprobe_frames(path) == recording.expected["video_frames"] == 120
    result = cli("reprocess", session_id, "--workers", "2", data=data)
    assert result.returncode == 0, result.stderr
    assert f"{session_id}: 120 frames" in result.stdout
