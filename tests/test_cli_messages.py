"""What a new user of the command line is told (issue 18, items 2, 8 and 9): one failed session
does not stop `reprocess --all`, each error is one line saying what to do, usage errors exit 2,
nothing but results goes into pipes, and the bars move per frame."""

from __future__ import annotations

import fcntl
import os
import pty
import socket
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tests.client import Client, run
from tests.conftest import ROOT, ServerProcess, load_recording

try:
    from tests.test_cluster import dask_cluster  # the cluster of the Dask tests (a module fixture)
except pytest.skip.Exception:  # no distributed here
    dask_cluster = None

RECORDING = load_recording("webcam_vp8_kf1s_250ms")


def camingest(*args: str, stdout: int | None = subprocess.PIPE, stderr: int | None = subprocess.PIPE,
              timeout: float = 600) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run([sys.executable, "-m", "ingest.cli", *args], stdout=stdout, stderr=stderr, text=True,
                          cwd=ROOT, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def clip_mp4(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mp4")
    source, mp4 = folder / "in.webm", folder / "clip.mp4"
    source.write_bytes(RECORDING.stream)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(source), "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    str(mp4)], check=True)  # fmt: skip
    return mp4


@pytest.fixture(scope="module")
def one_good_one_failed(tmp_path_factory, clip_mp4) -> tuple[Path, str, str]:
    """A data folder holding a recorded session and a failed one (an MP4 sent as chunks, as
    the new user did); the server that stored them is stopped."""
    data = tmp_path_factory.mktemp("failed") / "data"
    server = ServerProcess(data, "--no-analysis").start()

    async def record() -> tuple[str, str]:
        async with Client(server.url) as client:
            good = await client.start(RECORDING.meta["mime"])
            await client.send_all(good, RECORDING.chunks)
            assert (await client.stop(good))["ok"]
            bad = await client.start("video/webm;codecs=vp8")
            ack = await client.chunk(bad, 0, clip_mp4.read_bytes()[:60_000])
            assert ack["error"]["code"] == "unsupported", ack
            await client.stop(bad)
        return good["session_id"], bad["session_id"]

    try:
        good, bad = run(record())
    finally:
        server.stop()
    return data, good, bad


MP4_REASON = "this is an MP4/QuickTime stream (ftyp); only WebM/Matroska is supported"


def test_reprocess_all_skips_a_failed_session_names_it_and_does_the_rest(one_good_one_failed):
    data, good, bad = one_good_one_failed
    result = camingest("reprocess", "--all", "--workers", "1", "--data", str(data))
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [
        f"{bad}: skipped: it failed while recording ({MP4_REASON}) and has no frames",
        f"camingest reprocess: 1 of 2 sessions failed ({bad}); 1 reprocessed",
    ]
    frames = RECORDING.expected["video_frames"]
    assert result.stdout.splitlines() == [f"{good}: {frames} frames, faces in {frames}"]
    meta = (data / "sessions" / good / "landmarks.meta.json").read_text()
    assert '"mode": "batch"' in meta or '"mode":"batch"' in meta


@pytest.mark.skipif(dask_cluster is None, reason="needs camingest[cluster] (distributed)")
def test_reprocess_on_a_cluster_skips_the_failed_session_too(one_good_one_failed, dask_cluster):
    data, good, bad = one_good_one_failed
    _, address = dask_cluster
    result = camingest("reprocess", "--all", "--cluster", address, "--data", str(data))
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [
        f"{bad}: skipped: it failed while recording ({MP4_REASON}) and has no frames",
        f"camingest reprocess: 1 of 2 sessions failed ({bad}); 1 reprocessed",
    ]
    frames = RECORDING.expected["video_frames"]
    assert result.stdout.splitlines() == [f"{good}: {frames} frames, faces in {frames}"]


def test_export_of_a_failed_session_says_why(one_good_one_failed, tmp_path):
    data, _, bad = one_good_one_failed
    result = camingest("export", bad, "--out", str(tmp_path / "x.mp4"), "--data", str(data))
    assert result.returncode == 1
    assert result.stderr == f"camingest export: session {bad} cannot be exported: it failed while recording: {MP4_REASON}\n"
    assert not list(tmp_path.iterdir())


def test_port_in_use_is_one_line_that_suggests_port_and_creates_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = camingest("serve", "--port", str(port), "--data", str(tmp_path / "data"))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        f"camingest serve: cannot listen on 127.0.0.1:{port}: port {port} is in use (another camingest serve, "
        "or another program); choose another with --port (--port 0 picks a free one)\n"
    )
    assert not (tmp_path / "data").exists()


def test_the_data_folder_lock_names_the_server_holding_it(server_factory, tmp_path):
    data = tmp_path / "data"
    server = server_factory("--no-analysis", data=data)
    assert server.proc is not None
    holder = f"camingest serve, pid {server.proc.pid}, {server.url}/"
    second = camingest("serve", "--port", "0", "--no-analysis", "--data", str(data))
    assert second.returncode == 1 and second.stdout == ""
    assert second.stderr == f"camingest serve: another camingest process ({holder}) is using {data}\n"
    close = camingest("close", "20261201-000000-00000000", "--data", str(data))
    assert close.stderr == (
        f"camingest close: a camingest server ({holder}) is running on {data}; it ends sessions whose client is "
        "gone after session_idle_s (120 s) itself, or stop it first\n"
    )


def test_gallery_list_in_a_folder_without_data_says_so(tmp_path):
    result = camingest("gallery", "list", "--data", str(tmp_path / "typo"))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        f"camingest gallery: no camingest data folder at {tmp_path / 'typo'}; give the folder camingest serve "
        "uses with --data DIR\n"
    )
    assert not (tmp_path / "typo").exists()


def test_usage_errors_exit_2_with_the_usage(tmp_path):
    workers = camingest("reprocess", "--all", "--workers", "-3", "--data", str(tmp_path))
    assert workers.returncode == 2 and workers.stderr.startswith("usage: camingest reprocess")
    assert workers.stderr.splitlines()[-1] == (
        "camingest reprocess: error: argument --workers: '-3' is not a number of processes; give 1 or more "
        "(0 = one per core)"
    )
    neither = camingest("reprocess", "--data", str(tmp_path))
    assert neither.returncode == 2 and neither.stderr.startswith("usage: camingest reprocess")
    assert neither.stderr.splitlines()[-1] == "camingest reprocess: error: name SESSION_IDs or --all, not both or neither"
    env_workers = subprocess.run([sys.executable, "-m", "ingest.cli", "sessions", "--data", str(tmp_path)],
                                 capture_output=True, text=True, cwd=ROOT,
                                 env=dict(os.environ, CAMINGEST_WORKERS="-3"))  # fmt: skip
    assert env_workers.stderr == (
        "camingest sessions: workers is -3; allowed: 1 or more processes, or 0 for one per core\n"
    )


def test_a_closed_pipe_ends_quietly(one_good_one_failed):
    """`camingest sessions | head`: the reader is gone before anything is written."""
    data, _, _ = one_good_one_failed
    read, write = os.pipe()
    os.close(read)
    try:
        result = camingest("sessions", "--data", str(data), stdout=write)
    finally:
        os.close(write)
    assert result.stderr == "" and result.returncode == 141


def test_pipes_get_results_only_and_a_terminal_gets_the_bars(one_good_one_failed):
    data, good, _ = one_good_one_failed
    frames = RECORDING.expected["video_frames"]
    piped = camingest("reprocess", good, "--workers", "1", "--data", str(data))
    assert piped.returncode == 0
    assert piped.stdout == f"{good}: {frames} frames, faces in {frames}\n"
    assert piped.stderr == ""  # no INFO line about the kernel, no bar
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    try:
        on_terminal = camingest("reprocess", good, "--workers", "1", "--data", str(data), stderr=follower)
        os.close(follower)
        drawn = b""
        while True:
            try:
                piece = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed and everything was read
                break
            if not piece:
                break
            drawn += piece
    finally:
        os.close(leader)
    assert on_terminal.returncode == 0
    text = drawn.decode(errors="replace")
    assert "reading the streams: 100%" in text and "reprocess: 100%" in text and f"{frames}/{frames}" in text


def test_missing_tls_file_is_named(tmp_path):
    from tests.test_access import make_certificate

    cert, _ = make_certificate(tmp_path)
    result = camingest("serve", "--port", "0", "--tls-cert", cert, "--tls-key", str(tmp_path / "nope.key"),
                       "--data", str(tmp_path / "data"))  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == f"camingest serve: --tls-key {tmp_path / 'nope.key'}: no such file\n"
    assert not (tmp_path / "data").exists()


def test_reprocess_progress_moves_per_frame_and_planning_has_its_own(one_good_one_failed):
    """The bars' callbacks: planning hears the stream's bytes as they are read, the run hears
    frames in steps of at most REPORT_EVERY while workers landmark them (not one job at a time)."""
    from ingest.analysis.tracker import TrackerSettings
    from ingest.batch.jobs import REPORT_EVERY
    from ingest.batch.local import Reprocessor
    from ingest.config import Settings
    from storage.store import SessionStore

    data, good, _ = one_good_one_failed
    store = SessionStore(data)
    store.open(recover=False)
    try:
        read: list[int] = []
        steps: list[int] = []
        with Reprocessor(store, TrackerSettings.from_settings(Settings(data_dir=data)), 1) as reprocessor:
            jobs = reprocessor.jobs(good, read.append)
            ((_, result),) = list(reprocessor.run_many([(good, jobs)], steps.append))
        assert sum(read) == store.get_row(good)["bytes"] and len(read) >= 1
        frames = RECORDING.expected["video_frames"]
        assert result["frames"] == frames == sum(steps)
        assert max(steps) <= REPORT_EVERY and len(steps) >= frames // REPORT_EVERY, steps
    finally:
        store.close()
