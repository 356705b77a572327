"""Shared test fixtures: the real recordings in tests/fixtures, and a real server process."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from tests.blocking_server import reports_in

# real PostgreSQL, Redis, SeaweedFS and nginx as fixtures (tests/engines.py); the time each test
# file takes, printed at the end (tests/file_times.py)
pytest_plugins = ["tests.engines", "tests.file_times"]

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"  # what each holds and how it was made: tests/fixtures/README.md
RECORDINGS = FIXTURES / "recordings"
IMAGES = FIXTURES / "images"
TOOLS = FIXTURES / "tools"  # the fixture recorder (record.sh) and the fake cameras it records


@dataclass(frozen=True)
class Recording:
    name: str
    path: Path
    chunks: list[bytes]
    expected: dict
    meta: dict

    @property
    def stream(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def snapshots(self) -> list[Path]:
        folder = self.path / "snapshots"
        return sorted(folder.iterdir()) if folder.exists() else []


def load_recording(name: str) -> Recording:
    path = RECORDINGS / name
    chunks = [p.read_bytes() for p in sorted(path.glob("chunk_*.webm"))]
    return Recording(
        name,
        path,
        chunks,
        json.loads((path / "expected.json").read_text()),
        json.loads((path / "meta.json").read_text()),
    )


# the webcam-like set every `recording`-parametrized test runs on (one per codec, plus the hard
# scene); two_people_720p_vp8 and webcam_av1_250ms serve their own tests (tests/fixtures/README.md)
RECORDING_NAMES = [
    "scene_vp8_opus_250ms", "webcam_h264_250ms", "webcam_vp8_kf1s_250ms", "webcam_vp8_opus_250ms",
    "webcam_vp9_opus_250ms",
]  # fmt: skip
assert all((RECORDINGS / n / "expected.json").exists() for n in RECORDING_NAMES), f"fixture recordings missing in {RECORDINGS}"


@pytest.fixture(scope="session", autouse=True)
def landmark_kernel_compiled() -> None:
    """Compile the numba kernel once, before any test or server process needs it: every later
    process loads it from the cache (on a fresh machine the compile is paid here, once)."""
    from ingest.analysis.engine.predictor import prepare_engine

    prepare_engine("numba")


@pytest.fixture(params=RECORDING_NAMES)
def recording(request: pytest.FixtureRequest) -> Recording:
    return load_recording(request.param)


class ServerProcess:
    """``camingest serve`` in a subprocess on a free loopback port, with BlockBuster watching its
    event loop (tests/blocking_server.py): a test whose server blocked its loop fails at teardown."""

    logs: ClassVar[dict[Path, int]] = {}  # every server log of the session: bytes already checked

    def __init__(self, data: Path, *extra: str, env: dict[str, str] | None = None, port: int = 0) -> None:
        self.data = data
        self.port = port
        self.extra = extra
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log = data.parent / f"{data.name}-server.log"
        # The store of record is this machine's disk unless --store names object storage: then an
        # ack's durable_seq may trail its seq until the segment is uploaded (PROTOCOL v1.2).
        self.durable_on_ack = not any(flag == "--store" and value.startswith("s3://")
                                      for flag, value in itertools.pairwise(extra))  # fmt: skip

    def start(self) -> ServerProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        ServerProcess.logs.setdefault(self.log, self.log.stat().st_size if self.log.exists() else 0)
        logfile = open(self.log, "a")  # noqa: SIM115 -- owned by the child process for its lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.blocking_server", "serve", "--port", str(self.port), "--data", str(self.data),
             *self.extra],
            stdout=subprocess.PIPE, stderr=logfile, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, ""):  # until it says where it listens, or exits
            match = re.search(r"(https?://\S+?)/ ", line)
            if match:
                self.url = match.group(1)
                return self
        raise RuntimeError(f"server did not start; log:\n{self.log.read_text()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def new_blocking_calls() -> list[str]:
    """What the servers' logs gained since the last look: BlockingError reports of
    tests/blocking_server.py (each with the call and the stack that made it on the loop)."""
    reports = []
    for log, checked in list(ServerProcess.logs.items()):
        if not log.exists():
            continue
        with open(log, "rb") as f:
            f.seek(checked)
            data = f.read()
        data = data[: data.rfind(b"\n") + 1]  # whole lines only: a running server may be writing
        ServerProcess.logs[log] = checked + len(data)
        text = data.decode(errors="replace")
        reports += [f"{log.name}: {report}" for report in reports_in(text)]
    return reports


def fail_on_blocking_calls() -> None:
    if reports := new_blocking_calls():
        pytest.fail(f"the server blocked its event loop {len(reports)} time(s):\n" + "\n".join(reports), pytrace=False)


@pytest.fixture(autouse=True)
def server_loop_never_blocked() -> Iterator[None]:
    """Every test that used a server fails if the server blocked its event loop meanwhile
    (checked after the test's own servers stopped, so shutdown counts too; a module-scoped
    server's start-up counts for its module's first test)."""
    yield
    fail_on_blocking_calls()


# Sessions sweep on frames of their own (a stable offset from their id, within half a period of
# sweep_every): with a period of 600 every session's first periodic sweep falls after frame 300,
# so a recording shorter than that sweeps on frame 0 only and its landmarks do not depend on the
# session id. Tests comparing two sessions' landmarks frame for frame run their servers so.
SAME_SWEEPS = {"CAMINGEST_SWEEP_EVERY": "600"}


BACKENDS = ("embedded", "engines")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``backends`` run twice: on the embedded store (a data folder + SQLite) and on
    the real engines (the index in PostgreSQL 15, the sessions in SeaweedFS over S3)."""
    if metafunc.definition.get_closest_marker("backends") and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Where the servers of this test keep sessions: "embedded" unless the test is marked ``backends``."""
    return getattr(request, "param", "embedded")


@pytest.fixture
def backend_args(backend: str, request: pytest.FixtureRequest) -> tuple[tuple[str, ...], dict[str, str]]:
    """The command-line flags and environment a server (or a CLI command) needs for ``backend``."""
    if backend == "embedded":
        return (), {}
    postgres, s3 = request.getfixturevalue("postgres"), request.getfixturevalue("s3")
    return ("--index", postgres.dsn, "--store", s3.store_url, "--s3-endpoint", s3.endpoint), dict(s3.env)


@pytest.fixture
def server_factory(tmp_path: Path, backend_args: tuple[tuple[str, ...], dict[str, str]]) -> Iterator:
    started: list[ServerProcess] = []
    flags, backend_env = backend_args

    def start(*extra: str, data: Path | None = None, env: dict[str, str] | None = None, port: int = 0) -> ServerProcess:
        server = ServerProcess(data or tmp_path / "data", *flags, *extra, env={**backend_env, **(env or {})},
                               port=port).start()  # fmt: skip
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def ingest_server(server_factory) -> ServerProcess:
    """A server that stores and serves only (no analysis workers)."""
    return server_factory("--no-analysis")


@pytest.fixture(scope="module")
def analysis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with live analysis whose queues never skip (accuracy tests), shared by a module."""
    data = tmp_path_factory.mktemp("analysis") / "data"
    server = ServerProcess(data, env={"CAMINGEST_LIVE_QUEUE_UNITS": "100000"}).start()
    yield server
    server.stop()
    fail_on_blocking_calls()  # its shutdown, after the module's last test


ARTIFACTS = ROOT / "test-artifacts"


def ffprobe_frames(path: Path) -> int:
    """Video frames of a file as FFmpeg's own ffprobe counts them (independent of PyAV)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
         "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return int(out.strip().strip(","))


@pytest.fixture(scope="session")
def face_camera(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A y4m fake camera made from the face photo with the fixture recorder's own tool."""
    out = tmp_path_factory.mktemp("camera") / "face.y4m"
    tool = TOOLS / "make_camera.py"
    subprocess.run([sys.executable, str(tool), str(IMAGES / "obama.jpg"), str(out), "640", "480", "4"], check=True)
    return out


def free_port() -> int:
    """A free loopback port outside the ephemeral range (see tests/engines.py): a server
    restarted by a test on its port finds it still free."""
    from tests.engines import free_port as engine_port

    return engine_port()


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    """An H.264 MP4 made from a webcam fixture (not WebM: the import must remux it)."""
    folder = tmp_path_factory.mktemp("clip")
    source, mp4 = folder / "in.webm", folder / "clip.mp4"
    source.write_bytes(load_recording("webcam_vp8_kf1s_250ms").stream)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(source), "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-fps_mode", "passthrough", str(mp4)], check=True)  # fmt: skip
    return mp4


CHROMIUM = Path("/usr/bin/chromium")  # Debian's, driven by Playwright


def chromium_args(camera: Path) -> list[str]:
    return [
        "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required",
    ]  # fmt: skip


@pytest.fixture
def browser(face_camera):
    """Headless Chromium whose fake camera shows a face (the page tests)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(face_camera))
        yield browser
        browser.close()
