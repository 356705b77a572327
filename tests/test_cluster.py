"""reprocess on a real Dask cluster (issue 13): a scheduler and two single-threaded workers on
loopback, started here as `dask scheduler` / `dask worker` processes. Results equal the local
path's frame for frame, through a worker killed mid-run; an unreachable scheduler or an
unreadable stream end as documented, with the previous landmarks kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client import Client, record, run, wait_until
from tests.conftest import IMAGES, ROOT, free_port, load_recording
from tests.test_batch import cli, read_landmarks

distributed = pytest.importorskip("distributed")
# work cancelled late (by the garbage collector, after the client closed) shows up as this
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
DASK = shutil.which("dask") or str(Path(sys.executable).parent / "dask")
NAMES = ["webcam_vp8_opus_250ms", "webcam_vp8_kf1s_250ms", "webcam_h264_250ms", "two_people_720p_vp8"]


@contextlib.contextmanager
def dask_processes(folder: Path, env: dict[str, str] | None = None) -> Iterator[tuple[distributed.Client, str]]:
    """A scheduler and 2 workers (1 process, 1 thread each, under a nanny that restarts them),
    with ``env`` added to their environment; a client of it and its address."""
    scheduler_file = folder / "scheduler.json"
    log = open(folder / "dask.log", "w")  # noqa: SIM115 -- closed at teardown
    # the workers import this tree's camingest, whatever is installed
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    common = {"cwd": ROOT, "stdout": log, "stderr": subprocess.STDOUT, "env": env}
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(scheduler_file)], **common)]  # fmt: skip
    client = None
    try:
        wait_for_file(scheduler_file, folder / "dask.log")
        client = distributed.Client(scheduler_file=str(scheduler_file), timeout=60)
        for _ in range(2):
            procs.append(subprocess.Popen([DASK, "worker", "--scheduler-file", str(scheduler_file), "--nworkers", "1",
                                           "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"], **common))  # fmt: skip
        client.wait_for_workers(2, timeout=120)
        yield client, json.loads(scheduler_file.read_text())["address"]
    finally:
        if client is not None:
            client.close()
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A scheduler and 2 workers (1 process, 1 thread each, under a nanny that restarts them)."""
    with dask_processes(tmp_path_factory.mktemp("dask")) as cluster:
        yield cluster


def wait_for_file(path: Path, log: Path, timeout: float = 60) -> None:
    """Until the scheduler has written ``path`` (it does once it listens); else fail with its log."""
    run(wait_until(path.exists, f"the scheduler to write {path.name}", timeout, seen=log.read_text))


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The fixture sessions stored by a server without analysis, a gallery of one person, and
    the local reprocess's landmarks as the reference."""
    from tests.conftest import ServerProcess

    data = tmp_path_factory.mktemp("cluster") / "data"
    server = ServerProcess(data, "--no-analysis").start()

    async def store() -> list[str]:
        async with Client(server.url) as client:
            return [(await record(server.url, load_recording(name), pace=0, client=client))["session_id"]
                    for name in NAMES]  # fmt: skip

    try:
        ids = run(store())
    finally:
        server.stop()
    assert cli("gallery", "add", "Obama", str(IMAGES / "obama.jpg"), data=data).returncode == 0
    local = cli("reprocess", "--all", "--workers", "2", data=data)
    assert local.returncode == 0, local.stderr
    reference = {sid: read_landmarks(data / "sessions" / sid / "landmarks.jsonl") for sid in ids}
    return data, ids, reference


def landmarks_of(data: Path, ids: list[str]) -> dict[str, list[dict]]:
    return {sid: read_landmarks(data / "sessions" / sid / "landmarks.jsonl") for sid in ids}


def wipe(data: Path, ids: list[str]) -> None:
    for sid in ids:
        (data / "sessions" / sid / "landmarks.jsonl").write_text("")


def test_cluster_reprocess_equals_local(dask_cluster, stored):
    _, address = dask_cluster
    data, ids, reference = stored
    assert any(face.get("identity") for f in reference[ids[0]] for face in f["faces"])  # names travel too
    wipe(data, ids)
    result = cli("reprocess", *ids, "--cluster", address, data=data)
    assert result.returncode == 0, result.stderr
    assert landmarks_of(data, ids) == reference
    meta = json.loads((data / "sessions" / ids[0] / "landmarks.meta.json").read_text())
    assert meta["mode"] == "batch" and meta["cluster"] == address and meta["workers"] == 2
    # CAMINGEST_CLUSTER does the same as the flag
    wipe(data, ids[:1])
    env = dict(os.environ, CAMINGEST_CLUSTER=address)
    again = subprocess.run([sys.executable, "-m", "ingest.cli", "reprocess", ids[0], "--data", str(data)],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert landmarks_of(data, ids[:1]) == {ids[0]: reference[ids[0]]}


def test_a_worker_killed_mid_run_changes_nothing(dask_cluster, stored):
    """SIGKILL of a worker that holds a job: the scheduler runs it elsewhere; identical results."""
    from ingest.analysis.tracker import TrackerSettings
    from ingest.batch.cluster import ClusterReprocessor
    from ingest.config import Settings
    from storage.store import SessionStore

    client, address = dask_cluster
    data, ids, reference = stored
    wipe(data, ids)
    killed: list[int] = []

    def kill_a_busy_worker(frames: int) -> None:
        if killed:
            return
        busy = [worker for worker, keys in client.processing().items() if keys]
        assert busy, "no job in flight to interrupt"
        pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    store = SessionStore(data)
    store.open(recover=False)
    try:
        settings = TrackerSettings.from_settings(Settings(data_dir=data))
        with ClusterReprocessor(store, settings, address) as reprocessor:
            plan = [(sid, reprocessor.jobs(sid)) for sid in ids]
            results = dict(reprocessor.run_many(plan, kill_a_busy_worker))
    finally:
        store.close()
    assert killed and all("error" not in r for r in results.values())
    assert landmarks_of(data, ids) == reference
    client.wait_for_workers(2, timeout=120)  # the nanny restarted it, for the next tests


def test_unreachable_scheduler_is_one_line_and_keeps_landmarks(stored):
    data, ids, _ = stored
    before = {sid: (data / "sessions" / sid / "landmarks.jsonl").read_bytes() for sid in ids}
    address = f"tcp://127.0.0.1:{free_port()}"
    result = cli("reprocess", *ids, "--cluster", address, data=data)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"camingest reprocess: cannot reach the Dask scheduler at {address} (")
    assert line.endswith("); is `dask scheduler` running there?")
    assert {sid: (data / "sessions" / sid / "landmarks.jsonl").read_bytes() for sid in ids} == before


def test_a_stream_that_cannot_be_planned_fails_that_session_only(dask_cluster, stored):
    """A directory where a session's stream should be: planning (which scans the stream, in the
    CLI) fails for that session before any job is sent; the cluster runs the others."""
    _, address = dask_cluster
    data, ids, reference = stored
    broken, rest = ids[0], ids[1:]
    stream = data / "sessions" / broken / "stream.webm"
    kept = stream.with_name("stream.webm.kept")
    stream.rename(kept)
    stream.mkdir()  # a directory where the stream should be: not readable as a file
    before = (data / "sessions" / broken / "landmarks.jsonl").read_bytes()
    wipe(data, rest)
    try:
        result = cli("reprocess", *ids, "--cluster", address, data=data)
    finally:
        stream.rmdir()
        kept.rename(stream)
    assert result.returncode == 1
    assert f"{broken}: skipped: its stored stream cannot be read (Is a directory)" in result.stderr  # at planning
    assert result.stderr.strip().splitlines()[-1] == (
        f"camingest reprocess: 1 of {len(ids)} sessions failed ({broken}); {len(ids) - 1} reprocessed"
    )
    assert (data / "sessions" / broken / "landmarks.jsonl").read_bytes() == before
    assert landmarks_of(data, rest) == {sid: reference[sid] for sid in rest}


def test_a_stream_unreadable_when_its_job_is_sent_fails_that_session_only(dask_cluster, stored):
    """The cluster path's own failure branch: the stream is planned fine, then cut short before
    the client reads a job's bytes to send them (the workers get bytes, not paths). That session
    fails with the reader's message and keeps its landmarks; the others are committed as the
    local path made them."""
    from ingest.analysis.tracker import TrackerSettings
    from ingest.batch.cluster import ClusterReprocessor
    from ingest.config import Settings
    from storage.store import SessionStore

    _, address = dask_cluster
    data, ids, reference = stored
    broken, rest = ids[0], ids[1:]
    stream = data / "sessions" / broken / "stream.webm"
    whole = stream.read_bytes()
    cut = len(whole) // 2
    before = (data / "sessions" / broken / "landmarks.jsonl").read_bytes()
    wipe(data, rest)
    store = SessionStore(data)
    store.open(recover=False)
    try:
        with ClusterReprocessor(store, TrackerSettings.from_settings(Settings(data_dir=data)), address) as reprocessor:
            plan = [(sid, reprocessor.jobs(sid)) for sid in ids]  # every stream whole: planned
            os.truncate(stream, cut)
            results = dict(reprocessor.run_many(plan))
    finally:
        store.close()
        stream.write_bytes(whole)
    # the first block of the session's first job that reaches past the cut is the one reported
    jobs = dict(plan)[broken]
    offset, length = next((o, n) for job in jobs for _, o, n in job.blocks if o + n > cut)
    assert results[broken] == {
        "error": f"cannot read the stored stream: the stored stream is shorter than its index ({offset}+{length})"
    }
    assert (data / "sessions" / broken / "landmarks.jsonl").read_bytes() == before
    assert landmarks_of(data, rest) == {sid: reference[sid] for sid in rest}
    for sid in rest:
        frames = reference[sid]
        assert results[sid] == {"frames": len(frames), "frames_with_faces": sum(1 for f in frames if f["faces"])}


def reprocess_in_process(data: Path, ids: list[str], address: str, progress, **options):
    from ingest.analysis.tracker import TrackerSettings
    from ingest.batch.cluster import ClusterReprocessor
    from ingest.config import Settings
    from storage.store import SessionStore

    store = SessionStore(data)
    store.open(recover=False)
    try:
        with ClusterReprocessor(store, TrackerSettings.from_settings(Settings(data_dir=data)), address, **options) as reprocessor:
            plan = [(sid, reprocessor.jobs(sid)) for sid in ids]
            return dict(reprocessor.run_many(plan, progress))
    finally:
        store.close()


def test_ctrl_c_cancels_the_clusters_work(dask_cluster, stored):
    client, address = dask_cluster
    data, ids, _ = stored
    before = landmarks_of(data, ids)

    def interrupt(frames: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reprocess_in_process(data, ids, address, interrupt)

    def tasks(dask_scheduler) -> int:
        return len(dask_scheduler.tasks)

    async def idle() -> bool:
        return await asyncio.to_thread(client.run_on_scheduler, tasks) == 0

    run(wait_until(idle, "the scheduler forgot the cancelled jobs", timeout=30))
    assert landmarks_of(data, ids) == before  # nothing committed after the first session's results


def test_losing_every_worker_ends_in_one_error_with_landmarks_kept(tmp_path, stored):
    """A cluster whose only worker dies (no nanny to restart it): the run ends after the
    no-workers timeout with a ClusterError; sessions not yet committed keep their landmarks."""
    from ingest.batch.cluster import ClusterError

    data, ids, _ = stored
    scheduler_file = tmp_path / "scheduler.json"
    log = open(tmp_path / "dask.log", "w")  # noqa: SIM115 -- closed below
    # the workers import this tree's camingest, whatever is installed
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    common = {"cwd": ROOT, "stdout": log, "stderr": subprocess.STDOUT, "env": env}
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(scheduler_file)], **common)]  # fmt: skip
    try:
        wait_for_file(scheduler_file, tmp_path / "dask.log")
        procs.append(subprocess.Popen([DASK, "worker", "--scheduler-file", str(scheduler_file), "--no-nanny",
                                       "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"], **common))  # fmt: skip
        address = json.loads(scheduler_file.read_text())["address"]
        before = landmarks_of(data, ids)

        def kill_the_worker(frames: int) -> None:
            if procs[1].poll() is None:
                procs[1].send_signal(signal.SIGKILL)

        with pytest.raises(ClusterError) as lost:
            reprocess_in_process(data, ids, address, kill_the_worker, no_workers_timeout_s=5)
        assert str(lost.value) == (
            f"the Dask cluster at {address} has had no workers (or no scheduler) for 5 s")
        after = landmarks_of(data, ids)
        assert after[ids[-1]] == before[ids[-1]]  # the last session was never committed
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(30)
        log.close()
