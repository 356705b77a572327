"""reprocess on a real Dask cluster with the sessions in object storage (SeaweedFS) and the index
in PostgreSQL (issue 22, item 4): the jobs carry object keys and byte ranges, the workers fetch
the blocks themselves with their own credentials, and the client reads only each job's init
segment; a client that holds no stream has a worker plan it from the segments, and its results
reach object storage. Results equal the local reprocess's frame for frame; a job whose blocks
are not all durable goes with its bytes; a segment missing from the bucket fails its session
alone, by its key (in a job) or by its seq (at planning); workers without credentials say so."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest

from storage.errors import IndexWriteError
from storage.objects import SEGMENT_RE, SegmentMap, StoreLocation, segment_chain
from tests.client import Client, http_json, record, run
from tests.conftest import ROOT, SAME_SWEEPS, load_recording
from tests.engines import PostgresDatabase, S3Bucket
from tests.test_batch import read_landmarks

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")

# audio between the video blocks (opus), keyframes every second, H.264's extra blocks
NAMES = ["webcam_vp8_opus_250ms", "webcam_vp8_kf1s_250ms", "webcam_h264_250ms"]
SEGMENT_BYTES = 300_000  # several segments per session: jobs read across segment boundaries
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


# -- the mapping alone ---------------------------------------------------------------------------


def test_segment_map_maps_runs_to_ranges_across_segments():
    location = StoreLocation("b", "p/", "http://127.0.0.1:1")
    segments = SegmentMap(location, (("k0", 0, 100), ("k1", 100, 50), ("k2", 150, 10)))
    assert segments.durable_bytes == 160
    assert segments.ranges([(10, 20)]) == [("k0", 10, 30)]
    assert segments.ranges([(90, 70)]) == [("k0", 90, 100), ("k1", 0, 50), ("k2", 0, 10)]
    assert segments.ranges([(100, 50), (0, 0), (155, 5)]) == [("k1", 0, 50), ("k2", 5, 10)]
    assert segments.ranges([(0, 10), (150, 11)]) is None  # past the durable bytes: read them where they are
    assert SegmentMap(location, ()).ranges([(0, 1)]) is None


def test_segment_chain_takes_the_furthest_fitting_segment_and_names_a_gap():
    extents = {seq: (seq * 10, 10) for seq in range(8)}  # chunk seq at offset 10*seq, 10 bytes
    listed = [
        (0, 1, "s/00-01", 20), (0, 3, "s/00-03", 40),  # an interrupted upload left 0-1 beside 0-3
        (4, 7, "s/04-07", 40),  # past durable_seq 6: not part of the stream yet
        (4, 5, "s/04-05-stale", 25),  # not the size the index says: never served
        (4, 6, "s/04-06", 30),
    ]  # fmt: skip
    assert segment_chain("S", listed, extents, 6) == [("s/00-03", 0, 40), ("s/04-06", 40, 30)]
    assert segment_chain("S", listed, extents, -1) == []
    with pytest.raises(IndexWriteError) as gap:
        segment_chain("S", listed, extents, 5)
    assert gap.value.strerror == "object storage has no segment of S from seq 4"


def test_coalesce_merges_nearby_ranges_of_one_object():
    from ingest.batch.cluster import coalesce

    ranges = [("a", 0, 10), ("a", 10, 20), ("a", 120, 130), ("b", 0, 5), ("a", 130, 140)]
    assert coalesce(ranges, gap=100) == [("a", 0, 130), ("b", 0, 5), ("a", 130, 140)]
    assert coalesce(ranges, gap=0) == [("a", 0, 20), ("a", 120, 130), ("b", 0, 5), ("a", 130, 140)]


# -- on the engines --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(postgres_server, seaweedfs_server):
    """This module's database and bucket; the AWS credentials in this process's environment."""
    name = f"cluster_objects_{os.getpid()}"
    database = PostgresDatabase(postgres_server, name)
    bucket = S3Bucket(seaweedfs_server, name.replace("_", "-"))
    with pytest.MonkeyPatch.context() as patch:
        for key in CREDENTIALS:
            patch.setenv(key, seaweedfs_server.env[key])
        try:
            yield database, bucket
        finally:
            bucket.drop()
            database.drop()


def store_flags(engines) -> list[str]:
    database, bucket = engines
    return ["--index", database.dsn, "--store", bucket.store_url, "--s3-endpoint", bucket.endpoint]


def open_store(engines, data: Path):
    from ingest.config import Settings

    database, bucket = engines
    settings = Settings(data_dir=data, index=database.dsn, store=bucket.store_url, s3_endpoint=bucket.endpoint)
    store = settings.open_store()
    store.open(recover=False)
    return store


# every session of a fixture in one job whatever its id (its sweep offset): the jobs' reads are counted
SWEEP_EVERY = int(SAME_SWEEPS["CAMINGEST_SWEEP_EVERY"])


def cli(engines, *args: str, data: Path):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ingest.cli", *args, "--data", str(data), *store_flags(engines)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, **SAME_SWEEPS})  # fmt: skip


@pytest.fixture(scope="module")
def recorded(engines, tmp_path_factory):
    """The fixtures recorded by a server into PostgreSQL + SeaweedFS (several segments each, all
    durable at stop), and the local reprocess's landmarks as the reference."""
    from tests.conftest import ServerProcess

    data = tmp_path_factory.mktemp("objects") / "data"
    _, bucket = engines
    server = ServerProcess(data, "--no-analysis", *store_flags(engines),
                           env={**bucket.env, "CAMINGEST_SEGMENT_BYTES": str(SEGMENT_BYTES)}).start()  # fmt: skip

    async def store() -> list[str]:
        ids = []
        async with Client(server.url) as client:
            for name in NAMES:
                recording = load_recording(name)
                sid = (await record(server.url, recording, pace=0, client=client))["session_id"]
                _, summary = await http_json(f"{server.url}/api/sessions/{sid}")
                assert summary["durable_seq"] == len(recording.chunks) - 1, summary  # the tail went up at stop
                ids.append(sid)
        return ids

    try:
        ids = run(store())
    finally:
        server.stop()
    for sid in ids:
        assert len(bucket.keys(f"sessions/{sid}/segments/")) > 1
    local = cli(engines, "reprocess", "--all", "--workers", "2", data=data)
    assert local.returncode == 0, local.stderr
    reference = landmarks_of(data, ids)
    assert all(len(frames) == load_recording(n).expected["video_frames"] for n, frames in zip(NAMES, reference.values(), strict=True))
    return data, ids, reference


def landmarks_of(data: Path, ids: list[str]) -> dict[str, list[dict]]:
    return {sid: read_landmarks(data / "sessions" / sid / "landmarks.jsonl") for sid in ids}


def test_object_ranges_fetch_exactly_each_jobs_blocks(engines, recorded):
    """Short jobs (several per session, from keyframes in the middle of the stream): the ranges a
    worker fetches are byte for byte the blocks the client would have read, and the whole stream
    through its ranges is what was sent."""
    from ingest.analysis.tracker import TrackerSettings
    from ingest.batch.cluster import SegmentStream, coalesce, fetch_ranges, runs_of
    from ingest.batch.jobs import plan_jobs, read_runs, scan_video_blocks
    from storage.objects import ObjectStore

    data, ids, _ = recorded
    base = TrackerSettings()
    settings = dataclasses.replace(base, detect_every=10, sweep_every=40)
    store = open_store(engines, data)
    across = 0  # jobs whose blocks lie in more than one segment
    try:
        for name, sid in zip(NAMES, ids, strict=True):
            segments = store.segment_map(sid)
            assert segments is not None
            objects = ObjectStore(segments.location)
            stream = b"".join(load_recording(name).chunks)
            assert b"".join(fetch_ranges(objects, segments.ranges([(0, len(stream))]) or [])) == stream
            sizes = (0, 1, 99_999, 400_000, -1, 10)  # across segment ends, the rest, then nothing
            with SegmentStream(objects, segments).open() as reader:  # what a worker plans from
                pieces = [reader.read(size) for size in sizes]
            assert b"".join(pieces) == stream
            left = len(stream)
            for size, piece in zip(sizes, pieces, strict=True):
                assert len(piece) == (left if size < 0 else min(size, left)), (sizes, [len(p) for p in pieces])
                left -= len(piece)
            assert scan_video_blocks(SegmentStream(objects, segments)) == scan_video_blocks(store.stream_source(sid))
            jobs = plan_jobs(store.stream_source(sid), settings, None, max_frames=settings.sweep_every)
            assert len(jobs) > 2
            for job in jobs:
                ranges = segments.ranges((offset, length) for _, offset, length in job.blocks)
                assert ranges is not None
                assert runs_of(job, b"".join(fetch_ranges(objects, ranges))) == read_runs(job)
                keys = {key for key, _, _ in ranges}
                assert len(coalesce(ranges)) == len(keys)  # one GET per segment
                across += len(keys) > 1
    finally:
        store.close()
    assert across


@pytest.fixture(scope="module")
def objects_cluster(tmp_path_factory, seaweedfs_server):
    """2 Dask workers whose environment has the credentials only (AWS's standard chain): the
    endpoint and the bucket come with the jobs."""
    from tests.test_cluster import dask_processes

    env = {key: seaweedfs_server.env[key] for key in CREDENTIALS}
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # no instance to ask when the credentials are taken away
    assert "AWS_ENDPOINT_URL_S3" not in os.environ and "AWS_ENDPOINT_URL" not in os.environ
    with dask_processes(tmp_path_factory.mktemp("dask-objects"), env) as cluster:
        yield cluster


def wipe(data: Path, ids: list[str]) -> None:
    for sid in ids:
        (data / "sessions" / sid / "landmarks.jsonl").write_text("")


def what(job) -> tuple:
    """What a job is, where it was planned aside."""
    return job.init, job.blocks, job.first_index, job.start, job.end, job.settings


def test_cluster_jobs_carry_ranges_and_the_client_reads_only_init_segments(engines, recorded, objects_cluster, tmp_path):
    """A client on a machine of its own (an empty data folder): a worker plans each session from
    object storage (the jobs are the ones planned from the stream where it is whole), every job
    goes as object ranges, the client's bytes per job are exactly its init segment and it never
    holds a stream; the landmarks equal the local reprocess's frame for frame."""
    from ingest.analysis.tracker import TrackerSettings
    from ingest.batch.cluster import ClientReads, ClusterReprocessor
    from ingest.batch.jobs import session_jobs
    from ingest.config import Settings

    _, address = objects_cluster
    data, ids, reference = recorded
    settings = TrackerSettings.from_settings(Settings(data_dir=data, sweep_every=SWEEP_EVERY))
    server_store = open_store(engines, data)  # where the streams are whole
    try:
        planned_there = {sid: [what(job) for job in session_jobs(server_store, sid, settings)] for sid in ids}
    finally:
        server_store.close()
    client_data = tmp_path / "client"
    store = open_store(engines, client_data)
    try:
        with ClusterReprocessor(store, settings, address) as rp:
            plan = [(sid, rp.jobs(sid)) for sid in ids]
            assert {sid: [what(job) for job in jobs_of_session] for sid, jobs_of_session in plan} == planned_there
            assert all(job.source is None for _, jobs_of_session in plan for job in jobs_of_session)
            jobs = [job for _, jobs_of_session in plan for job in jobs_of_session]
            inits = [store.init_segment(sid) for sid, jobs_of_session in plan for _ in jobs_of_session]
            assert [job.init for job in jobs] == inits  # the init segment planned is the index's
            assert all(rp.object_input(job) is not None for job in jobs)
            results = dict(rp.run_many(plan))
            assert rp.reads == ClientReads(with_bytes=[], with_ranges=[len(init or b"") for init in inits],
                                           planned=[0] * len(ids))  # fmt: skip
            with_bytes = [len(job.init) + sum(length for _, _, length in job.blocks) for job in jobs]
    finally:
        store.close()
    print(f"client bytes per job: {with_bytes} sent with their bytes, {rp.reads.with_ranges} with object ranges")
    assert all("error" not in result for result in results.values()), results
    assert landmarks_of(client_data, ids) == reference
    assert sorted(p.name for p in client_data.rglob("*") if p.is_file() and "sessions" in p.parts) == sorted(
        name for _ in ids for name in ("landmarks.jsonl", "landmarks.meta.json")
    )  # no stream, no recording: only what it wrote
    # written back through the store: object storage holds what this client wrote
    _, bucket = engines
    client = bucket.client()
    for sid in ids:
        for name in ("landmarks.jsonl", "landmarks.meta.json"):
            stored = client.get_object(Bucket=bucket.bucket, Key=f"sessions/{sid}/{name}")["Body"].read()
            assert stored == (client_data / "sessions" / sid / name).read_bytes(), (sid, name)
        assert json.loads((client_data / "sessions" / sid / "landmarks.meta.json").read_text())["cluster"] == address


def set_durable_seq(dsn: str, session_id: str, seq: int) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE sessions SET durable_seq = %s WHERE id = %s", (seq, session_id))


def test_a_lost_segment_fails_its_session_by_key_and_a_job_not_all_durable_goes_with_bytes(
    engines, recorded, objects_cluster
):  # fmt: skip
    """Session A's first segment is deleted after planning: A fails with the worker's message
    naming the key and keeps its landmarks. Session B's last chunks are not durable (its index
    says so): its job goes with its bytes, read here. Both B and C are committed as local made them."""
    from ingest.analysis.tracker import TrackerSettings
    from ingest.batch.cluster import ClientReads, ClusterReprocessor
    from ingest.batch.jobs import read_runs
    from ingest.config import Settings

    _, address = objects_cluster
    database, bucket = engines
    data, ids, reference = recorded
    lost, short, whole = ids
    before = (data / "sessions" / lost / "landmarks.jsonl").read_bytes()
    wipe(data, [short, whole])
    durable = len(load_recording(NAMES[1]).chunks) - 1
    # as if its last segment were still being uploaded: durable_seq where the one before ends
    firsts = [int(SEGMENT_RE.findall(key)[0][0]) for key in bucket.keys(f"sessions/{short}/segments/")]
    set_durable_seq(database.dsn, short, max(firsts) - 1)
    client = bucket.client()
    store = open_store(engines, data)  # the server's folder: every stream is whole here
    saved: tuple[str, bytes] | None = None
    try:
        with ClusterReprocessor(store, TrackerSettings.from_settings(Settings(data_dir=data, sweep_every=SWEEP_EVERY)), address) as rp:
            plan = [(sid, rp.jobs(sid)) for sid in ids]
            jobs = dict(plan)
            assert [rp.object_input(job) is None for job in jobs[short]] == [True]
            source = rp.object_input(jobs[lost][0])
            assert source is not None
            key = source.ranges[0][0]
            saved = key, client.get_object(Bucket=bucket.bucket, Key=key)["Body"].read()
            client.delete_object(Bucket=bucket.bucket, Key=key)
            results = dict(rp.run_many(plan))
            expected_reads = ClientReads(
                with_bytes=[len(job.init) + sum(len(block) for _, block in read_runs(job)) for job in jobs[short]],
                with_ranges=[len(job.init) for sid in (lost, whole) for job in jobs[sid]],
                planned=[sum(map(len, load_recording(name).chunks)) for name in NAMES],  # the streams are here
            )
            assert rp.reads == expected_reads
    finally:
        store.close()
        if saved is not None:
            client.put_object(Bucket=bucket.bucket, Key=saved[0], Body=saved[1])
        set_durable_seq(database.dsn, short, durable)
    where = StoreLocation.parse(bucket.store_url, bucket.endpoint).describe()
    assert results[lost] == {"error": f"object storage ({where}) has no object {key}: the session's stored stream is incomplete"}
    assert (data / "sessions" / lost / "landmarks.jsonl").read_bytes() == before
    assert landmarks_of(data, [short, whole]) == {sid: reference[sid] for sid in (short, whole)}
    for sid in (short, whole):
        assert results[sid] == {"frames": len(reference[sid]), "frames_with_faces": sum(1 for f in reference[sid] if f["faces"])}


def test_from_an_empty_folder_a_session_missing_a_segment_is_skipped_alone(engines, recorded, objects_cluster, tmp_path):
    """The command on a machine of its own (an empty --data): one session's last segment is gone
    from the bucket, so it is skipped at planning, named with the seq; the workers plan and run
    the others, whose new landmarks reach object storage; exit 1 with the run's summary line."""
    _, address = objects_cluster
    _, bucket = engines
    _, ids, reference = recorded
    lost, rest = ids[0], ids[1:]
    client = bucket.client()
    segments = sorted(bucket.keys(f"sessions/{lost}/segments/"))
    key = segments[-1]
    first = int(SEGMENT_RE.findall(key)[0][0])
    saved = client.get_object(Bucket=bucket.bucket, Key=key)["Body"].read()
    landmarks_key = f"sessions/{lost}/landmarks.jsonl"
    kept = client.get_object(Bucket=bucket.bucket, Key=landmarks_key)["Body"].read()
    for sid in rest:  # emptied in the store: what comes back is what this run wrote
        client.put_object(Bucket=bucket.bucket, Key=f"sessions/{sid}/landmarks.jsonl", Body=b"")
    client.delete_object(Bucket=bucket.bucket, Key=key)
    try:
        result = cli(engines, "reprocess", "--all", "--cluster", address, data=tmp_path / "client")
    finally:
        client.put_object(Bucket=bucket.bucket, Key=key, Body=saved)
    assert result.returncode == 1, result.stderr
    assert f"{lost}: skipped: its stored stream cannot be read (object storage has no segment of {lost} from seq {first})" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"camingest reprocess: 1 of {len(ids)} sessions failed ({lost}); {len(rest)} reprocessed"
    )
    assert client.get_object(Bucket=bucket.bucket, Key=landmarks_key)["Body"].read() == kept
    for sid in rest:
        stored = client.get_object(Bucket=bucket.bucket, Key=f"sessions/{sid}/landmarks.jsonl")["Body"].read()
        assert [json.loads(line) for line in stored.splitlines()] == reference[sid]
    assert not list((tmp_path / "client").rglob("stream.webm"))


def _take_credentials() -> dict[str, str]:
    """On a worker: its environment loses the AWS credentials (its cached clients with them)."""
    from ingest.batch.cluster import forget_object_stores

    taken = {key: os.environ.pop(key) for key in CREDENTIALS if key in os.environ}
    forget_object_stores()
    return taken


def _give_credentials(values: dict[str, str]) -> None:
    from ingest.batch.cluster import forget_object_stores

    os.environ.update(values)
    forget_object_stores()


def test_workers_without_credentials_say_so(engines, recorded, objects_cluster):
    """The credentials are the workers' own, never in the task: workers without any fail the
    session (through the CLI) with the store's reason, after their bounded retries."""
    client, address = objects_cluster
    data, ids, _ = recorded
    sid = ids[2]
    before = (data / "sessions" / sid / "landmarks.jsonl").read_bytes()
    taken: dict[str, Any] = client.run(_take_credentials)
    try:
        result = cli(engines, "reprocess", sid, "--cluster", address, data=data)
    finally:
        for worker, values in taken.items():
            client.run(_give_credentials, values, workers=[worker])
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith(f"{sid}: failed")]
    prefix = f"{sid}: failed, its landmarks are kept: the Dask worker tcp://127.0.0.1:"
    assert line.startswith(prefix), line
    assert line.endswith(
        " after 3 attempts: no credentials to read " + line.split("cannot read ", 1)[1].split(" ", 1)[0]
        + " in object storage: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or another source of AWS's"
        " standard credential chain) on this machine"
    ), line  # fmt: skip
    assert f"cannot read sessions/{sid}/segments/" in line
    assert (data / "sessions" / sid / "landmarks.jsonl").read_bytes() == before
