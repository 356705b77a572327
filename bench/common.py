"""Helpers shared by the benchmarks: fixtures, a server subprocess, machine notes."""

from __future__ import annotations

import asyncio
import itertools
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"  # the recordings and images the tests use, in the repo
RECORDINGS = FIXTURES / "recordings"
IMAGES = FIXTURES / "images"


def chunks_of(name: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((RECORDINGS / name).glob("chunk_*.webm"))]


def machine_notes() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def start_server(
    data: Path, *extra: str, env: dict[str, str] | None = None, root: Path = ROOT
) -> tuple[subprocess.Popen[str], str]:
    """``camingest serve`` of the checkout at ``root`` (another one: before/after in one run)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest.cli", "serve", "--port", "0", "--data", str(data), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=root, env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"(http://\S+?)/ ", line)
        if match:
            return proc, match.group(1)
    raise RuntimeError("server did not start")


async def send_paced(session: Any, chunks: list[bytes], deadline: float, latencies: list[float],
                     errors: list[str]) -> None:  # fmt: skip
    """Send ``chunks`` as MediaRecorder does, one every 250 ms (until ``deadline``), recording each
    ack's latency in ms and each refusal's code; then stop the session."""
    from ingest.client import CamingestError

    next_due = time.monotonic()
    for data in chunks:
        if time.monotonic() >= deadline:
            break
        next_due += 0.25
        sent = time.perf_counter()
        try:
            await session.send(data)
        except CamingestError as exc:
            errors.append(exc.code)
        latencies.append((time.perf_counter() - sent) * 1000)
        await asyncio.sleep(max(0.0, next_due - time.monotonic()))
    await session.stop()


@dataclass
class LandmarkTally:
    """What live clients' ``landmarks`` events said, frame by frame (one tally may serve several
    clients): frames analysed and skipped, the analysed ones that were provisional, frames with a
    named face; the lag of each analysed frame (``lags``, ms from its capture to the event) and
    its capture time (``at``, s from the start), and the lag of each skipped one."""

    analysed: int = 0
    skipped: int = 0
    provisional: int = 0
    named: int = 0
    lags: list[float] = field(default_factory=list)
    at: list[float] = field(default_factory=list)
    skipped_lags: list[float] = field(default_factory=list)

    def listen(self, sio: Any, started: Callable[[], float]) -> None:
        """Count the ``landmarks`` events of ``sio`` (a python-socketio AsyncClient); ``started()``
        is the monotonic time at which the client's current recording started (its frames'
        ``pts_ms`` count from there)."""

        @sio.on("landmarks")
        async def on_landmarks(data: dict[str, Any]) -> None:
            now = time.monotonic()
            for frame in data["frames"]:
                lag = (now - started()) * 1000 - frame["pts_ms"]
                self.named += any((face.get("identity") or {}).get("name") for face in frame.get("faces") or [])
                if frame.get("skipped"):
                    self.skipped += 1
                    self.skipped_lags.append(lag)
                    continue
                self.analysed += 1
                self.provisional += bool(frame.get("provisional"))
                self.lags.append(lag)
                self.at.append(frame["pts_ms"] / 1000)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# -- a long session (issue 21): the fixtures are 6-8 s; the table is about 45 s ---------

LONG_SOURCES = ["webcam_vp8_opus_250ms", "webcam_vp8_kf1s_250ms", "webcam_vp9_opus_250ms", "webcam_h264_250ms"]
BLOB_MS = 250


def cache_dir() -> Path:
    base = os.environ.get("CAMINGEST_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "camingest"
    )
    path = Path(base) / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def long_recording(seconds: int = 45) -> Path:
    """A ``seconds`` long 640x480 30 fps VP8 WebM made from the 640x480 webcam fixtures played
    one after another (looped), re-encoded as Chrome does (libvpx realtime, a keyframe every 100
    frames, ~1.1 Mbit/s, one cluster per 250 ms blob). Made once with ffmpeg, then cached
    (never in the repo)."""
    out = cache_dir() / f"long_{seconds}s_640x480_vp8.webm"
    if out.exists():
        return out
    inputs: list[str] = []
    for name in LONG_SOURCES:  # each fixture as one file (its blobs joined)
        joined = cache_dir() / f"{name}.webm"
        joined.write_bytes(b"".join(chunks_of(name)))
        inputs += ["-i", str(joined)]
    # the four one after another (different codecs: the concat filter), nearly lossless, then
    # looped to the length wanted and encoded as Chrome's VP8
    sequence = cache_dir() / "long_sequence.mkv"
    streams = "".join(f"[{i}:v]fps=30,scale=640:480,setsar=1[v{i}];" for i in range(len(LONG_SOURCES)))
    joined_streams = "".join(f"[v{i}]" for i in range(len(LONG_SOURCES)))
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", *inputs, "-filter_complex",
         f"{streams}{joined_streams}concat=n={len(LONG_SOURCES)}:v=1:a=0[out]", "-map", "[out]",
         "-c:v", "libvpx", "-b:v", "8M", "-g", "30", str(sequence)],
        check=True,
    )  # fmt: skip
    tmp = out.with_suffix(".tmp.webm")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(sequence), "-t", str(seconds), "-an",
         "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1100k", "-g", "100",
         "-cluster_time_limit", str(BLOB_MS), "-f", "webm", str(tmp)],
        check=True,
    )  # fmt: skip
    tmp.replace(out)
    return out


def blobs_of(path: Path) -> tuple[list[bytes], list[int]]:
    """The file cut as MediaRecorder would send it with a 250 ms timeslice: blob k ends before
    the first frame at or after (k + 1) x 250 ms; returns the blobs and the time (ms from the
    start) at which each is due."""
    data = path.read_bytes()
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,pos", "-of", "csv=p=0",
         str(path)], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    packets = [(float(t), int(p)) for t, p in (line.split(",")[:2] for line in probe.split()) if p != "N/A"]
    cuts = [0]
    due = []
    k = 1
    for pts, pos in packets:
        while pts * 1000 >= k * BLOB_MS:
            # the block's element starts a few bytes before its payload (ID + size + header)
            cuts.append(max(cuts[-1], pos - 64))
            due.append(k * BLOB_MS)
            k += 1
    cuts.append(len(data))
    due.append(k * BLOB_MS)
    return [data[a:b] for a, b in itertools.pairwise(cuts)], due
