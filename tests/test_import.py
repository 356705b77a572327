"""camingest import: an MP4 becomes a session whose frames and landmarks are complete."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, ffprobe_frames, load_recording


def test_import_mp4(tmp_path):
    source, mp4 = tmp_path / "in.webm", tmp_path / "clip.mp4"
    source.write_bytes(load_recording("webcam_vp8_kf1s_250ms").stream)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(source), "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-fps_mode", "passthrough", str(mp4)], check=True)  # fmt: skip
    expected = ffprobe_frames(mp4)
    data = tmp_path / "data"
    result = subprocess.run([sys.executable, "-m", "ingest.cli", "import", str(mp4), "--workers", "2", "--data",
                             str(data)], capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (session_dir,) = (data / "sessions").iterdir()
    frames = [json.loads(x) for x in (session_dir / "landmarks.jsonl").read_text().splitlines()]
    assert [f["index"] for f in frames] == list(range(expected))
    assert sum(1 for f in frames if f["faces"]) >= 0.95 * expected
    assert ffprobe_frames(session_dir / "recording.webm") == expected
    listing = subprocess.run([sys.executable, "-m", "ingest.cli", "sessions", "--data", str(data)],
                             capture_output=True, text=True, cwd=ROOT, check=True).stdout  # fmt: skip
    assert session_dir.name in listing and f" {expected} " in listing

    text = tmp_path / "notes.txt"
    text.write_text("not a video\n")
    bad = subprocess.run([sys.executable, "-m", "ingest.cli", "import", str(text), "--data", str(data)],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert bad.returncode == 1 and "cannot finalize notes.txt" in bad.stderr.splitlines()[-1]
