"""Batch re-processing on a Dask distributed cluster (``camingest reprocess --cluster ADDRESS``).

The jobs are the local pool's (jobs.py: sweep-aligned frame ranges, results equal to
live), run by ``distributed`` instead of local processes:

- **No shared filesystem.** With the data folder as the store, the client reads each job's
  compressed blocks (from the keyframe before its range to its end) and sends them with the
  task; workers never see a path. With object storage, a job whose blocks are all durable
  carries instead where they lie: the object ranges of the session's segments
  (``SessionStore.segment_map``), the init segment and the store's bucket and endpoint; the
  worker fetches the ranges itself (ranged GETs, nearby ranges of one object in one, bounded
  retries) with its own credentials (AWS's standard chain: never in the task), so the client
  reads no block. Where the client does not hold a stream at all (a machine of its own), a
  worker also scans it from the segments to plan its jobs: the client reads none of it. The gallery travels in the job as well. A task holds its own input, so when a
  worker dies the scheduler runs it again elsewhere (``retries`` on top of that for errors).
- **Bounded.** At most ``window`` jobs are submitted at once (a few per worker thread), so the
  client never reads a whole archive into the cluster's memory; results are consumed in job
  order and written as today (atomic replace per session).
- **Model once per worker.** A worker plugin loads the landmark model (and compiles or loads
  the kernel) when the worker starts or joins, and checks that the worker runs this camingest
  version.
- **Faults end cleanly.** No scheduler, no workers for ``no_workers_timeout_s``, or a lost
  scheduler: one-line ``ClusterError``; the sessions not yet committed keep their landmarks.
  Ctrl-C cancels the submitted futures.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ingest import version
from ingest.analysis.process import prepare_analysis_process
from ingest.analysis.tracker import TrackerSettings
from ingest.batch.jobs import Job, Runs, VideoBlock, jobs_of_blocks, landmark_runs, read_runs, scan_video_blocks
from ingest.batch.local import JobProgress, Reprocessor
from ingest.exceptions import IngestError
from storage.errors import StoreUnavailableError
from storage.objects import ObjectStore, Range, SegmentMap, StoreLocation
from storage.store import SessionStore

CONNECT_TIMEOUT_S = 10
RETRIES = 2  # a job that raises is run again this often (a worker's death is rescheduled anyway)
JOBS_PER_THREAD = 3  # submitted ahead per worker thread: enough to hide the client's reads
FETCH_ATTEMPTS = 3  # a worker's tries of one ranged GET while object storage refuses or is away
FETCH_BACKOFF_S = 0.5  # before the second try; doubled before each next one
# ranges of one object this close are fetched in one GET (what lies between the video blocks of a
# job is mostly audio: reading it costs less than a request per block)
RANGE_GAP_BYTES = 256 * 1024


class ClusterError(IngestError):
    """The cluster cannot be used (unreachable, no workers, wrong version, lost mid-run)."""


class JobInputError(IngestError):
    """A Dask worker cannot read a job's input from object storage (an object missing, the store
    unreachable or refusing from there): that job's session fails, the others go on."""


@dataclasses.dataclass(frozen=True)
class ObjectInput:
    """Where a job's blocks lie in object storage: ``ranges`` fetched and concatenated are the
    bytes of its blocks, in order. No credentials: the worker has its own."""

    location: StoreLocation
    ranges: tuple[Range, ...]


@dataclasses.dataclass
class ClientReads:
    """Bytes of session data this client read to send each job (the task carries them): the init
    segment and the blocks for a job sent with its bytes, the init segment alone for one sent as
    object ranges (the workers read the blocks)."""

    with_bytes: list[int] = dataclasses.field(default_factory=list)
    with_ranges: list[int] = dataclasses.field(default_factory=list)
    # and to plan each session: its stream read here (0: a worker scanned it in object storage)
    planned: list[int] = dataclasses.field(default_factory=list)


def run_remote_job(job: Job, runs: list[tuple[int, bytes]], client_version: str) -> list[dict[str, Any]]:
    """On a Dask worker: the job's frames from the bytes it came with."""
    _check_version(client_version)
    return landmark_runs(job, runs)


def run_object_job(job: Job, source: ObjectInput, client_version: str) -> list[dict[str, Any]]:
    """On a Dask worker: the job's frames from its blocks, fetched from object storage here."""
    _check_version(client_version)
    pieces = fetch_ranges(worker_object_store(source.location), source.ranges)
    return landmark_runs(job, runs_of(job, b"".join(pieces)))


def plan_object_stream(segments: SegmentMap, client_version: str) -> tuple[bytes, list[VideoBlock], str]:
    """On a Dask worker: ``scan_video_blocks`` of a session's stream read from its segments in
    object storage (one at a time: a segment is at most ``segment_bytes``), so that a client
    that does not hold the stream plans its jobs without reading it."""
    _check_version(client_version)
    return scan_video_blocks(SegmentStream(worker_object_store(segments.location), segments))


@dataclasses.dataclass(frozen=True)
class SegmentStream:
    """A session's durable stream as its segments in object storage (a ``StreamSource``)."""

    objects: ObjectStore
    segments: SegmentMap

    @property
    def length(self) -> int:
        return self.segments.durable_bytes

    def open(self) -> SegmentReader:
        return SegmentReader(self)


class SegmentReader:
    """Reads a ``SegmentStream`` front to back, fetching one segment at a time."""

    def __init__(self, stream: SegmentStream) -> None:
        self._objects = stream.objects
        self._left = list(stream.segments.segments)
        self._buffer = memoryview(b"")

    def __enter__(self) -> SegmentReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._left.clear()
        self._buffer = memoryview(b"")

    def read(self, size: int = -1, /) -> bytes:
        out = bytearray()
        while size < 0 or len(out) < size:
            if not self._buffer:
                if not self._left:
                    break
                key, _, length = self._left.pop(0)
                self._buffer = memoryview(_get(self._objects, key, 0, length) if length else b"")
                continue
            take = len(self._buffer) if size < 0 else min(size - len(out), len(self._buffer))
            out += self._buffer[:take]
            self._buffer = self._buffer[take:]
        return bytes(out)


def _check_version(client_version: str) -> None:
    if version() != client_version:
        raise ClusterError(f"this worker runs camingest {version()}, the client {client_version}")


def runs_of(job: Job, data: bytes) -> Runs:
    """The job's blocks, cut from ``data`` (their bytes concatenated), grouped by cluster as
    ``read_runs`` groups them."""
    runs: Runs = []
    position = 0
    for timecode, _, length in job.blocks:
        block = data[position : position + length]
        position += length
        if runs and runs[-1][0] == timecode:
            runs[-1] = (timecode, runs[-1][1] + block)
        else:
            runs.append((timecode, block))
    if position != len(data):
        raise JobInputError(f"the job's ranges gave {len(data)} bytes, its blocks are {position}")
    return runs


_object_stores: dict[StoreLocation, ObjectStore] = {}  # one boto3 client per store, per worker process
_object_stores_lock = threading.Lock()  # (a worker's threads share it; boto3 clients are thread-safe)


def worker_object_store(location: StoreLocation) -> ObjectStore:
    with _object_stores_lock:
        store = _object_stores.get(location)
        if store is None:
            store = _object_stores[location] = ObjectStore(location)
        return store


def forget_object_stores() -> None:
    """Drop this process's clients (credentials are read again by the next one)."""
    with _object_stores_lock:
        _object_stores.clear()


def coalesce(ranges: Sequence[Range], gap: int = RANGE_GAP_BYTES) -> list[Range]:
    """The GETs that fetch ``ranges``: consecutive ranges of one object at most ``gap`` bytes
    apart (and adjacent ones) read by one."""
    requests: list[Range] = []
    for key, start, end in ranges:
        if requests:
            last_key, last_start, last_end = requests[-1]
            if key == last_key and last_start <= start <= last_end + gap:
                requests[-1] = (key, last_start, max(last_end, end))
                continue
        requests.append((key, start, end))
    return requests


def fetch_ranges(objects: ObjectStore, ranges: Sequence[Range], gap: int = RANGE_GAP_BYTES) -> list[bytes]:
    """The bytes of each of ``ranges``, fetched with the GETs of ``coalesce`` (in order: each
    range lies in the GET that follows the previous range's, or in that one)."""
    requests = coalesce(ranges, gap)
    fetched = [_get(objects, *request) for request in requests]
    out = []
    at = 0
    for key, start, end in ranges:
        while not (requests[at][0] == key and requests[at][1] <= start and end <= requests[at][2]):
            at += 1
        out.append(fetched[at][start - requests[at][1] : end - requests[at][1]])
    return out


def _get(objects: ObjectStore, key: str, start: int, end: int) -> bytes:
    """Bytes ``start``..``end - 1`` of an object, tried ``FETCH_ATTEMPTS`` times while the store
    cannot be reached or refuses; a missing object or a short one is said at once, by its key."""
    where = objects.location.describe()
    for attempt in range(FETCH_ATTEMPTS):
        try:
            data = objects.get(key, start, end - 1)
        except FileNotFoundError:
            raise JobInputError(f"object storage ({where}) has no object {key}: the session's stored stream is incomplete") from None
        except StoreUnavailableError as exc:
            if attempt + 1 < FETCH_ATTEMPTS:
                time.sleep(FETCH_BACKOFF_S * 2**attempt)
                continue
            raise JobInputError(f"{_worker_name()}cannot read {key} from object storage ({where}) "
                                f"after {FETCH_ATTEMPTS} attempts: {exc.message}") from None  # fmt: skip
        if len(data) != end - start:
            raise JobInputError(f"object {key} in {where} is shorter than the index says "
                                f"(bytes {start}-{end - 1} asked, {len(data)} received)")  # fmt: skip
        return data
    raise AssertionError("unreachable")


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return f"the Dask worker {get_worker().address} "
    except (ImportError, ValueError):
        return ""


def _worker_plugin(engine: str) -> Any:
    from distributed import WorkerPlugin

    class CamingestPlugin(WorkerPlugin):
        """Loads the landmark model and the compiled kernel once per worker process."""

        name = "camingest"

        def __init__(self, engine: str) -> None:
            self.engine = engine

        def setup(self, worker: Any) -> None:
            prepare_analysis_process(self.engine)

    return CamingestPlugin(engine)


class ClusterReprocessor(Reprocessor):
    """``Reprocessor`` whose jobs run on the Dask cluster at ``address``."""

    def __init__(
        self, store: SessionStore, settings: TrackerSettings, address: str, no_workers_timeout_s: float = 30.0,
        object_ranges: bool = True,
    ) -> None:  # fmt: skip
        """``object_ranges``: with object storage, send durable jobs as object ranges (False: as
        bytes, as with the data folder; for comparisons)."""
        super().__init__(store, settings, workers=0)
        self.address = address
        self.no_workers_timeout_s = no_workers_timeout_s
        self.object_ranges = object_ranges
        self.client: Any = None
        self.reads = ClientReads()
        self._inputs: dict[int, tuple[Job, ObjectInput]] = {}  # id(job) -> the job and its ranges

    def __enter__(self) -> ClusterReprocessor:
        try:
            from distributed import Client
        except ImportError:
            raise ClusterError(
                "--cluster needs Dask's distributed package: pip install 'camingest[cluster]'"
            ) from None
        try:
            self.client = Client(self.address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {self.address} ({_reason(exc)}); is `dask scheduler` running there?"
            ) from None
        try:
            self.client.wait_for_workers(1, timeout=self.no_workers_timeout_s)
        except TimeoutError:
            self.client.close()
            raise ClusterError(
                f"the Dask scheduler at {self.address} has no workers (waited {self.no_workers_timeout_s:g} s); "
                "start some with: dask worker " + self.address
            ) from None
        self._check_versions()
        self.client.register_plugin(_worker_plugin(self.settings.engine), name="camingest")
        self.workers = self._threads()
        return self

    def _check_versions(self) -> None:
        try:
            versions = self.client.run(version)
        except Exception as exc:  # a worker without camingest cannot even run the check
            raise ClusterError(
                f"the Dask workers cannot run camingest ({_reason(exc)}); install camingest {version()} on them"
            ) from None
        wrong = {worker: v for worker, v in versions.items() if v != version()}
        if wrong:
            listed = ", ".join(f"{worker} has {v}" for worker, v in sorted(wrong.items()))
            raise ClusterError(f"the Dask workers need camingest {version()}: {listed}")

    def _threads(self) -> int:
        return sum(w["nthreads"] for w in self.client.scheduler_info(n_workers=-1)["workers"].values())

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()

    def describe(self) -> dict[str, Any]:
        return {"cluster": self.address, "workers": self.workers}

    def jobs(self, session_id: str, progress: Callable[[int], None] | None = None) -> list[Job]:
        """As the local pool's; with object storage, each job whose blocks are all durable is
        also mapped to the object ranges its worker fetches (one listing of the session's
        segments), and a session wholly durable whose stream this machine does not hold is
        scanned by a worker (``plan_object_stream``) instead of fetched here. A durable segment
        missing from the listing fails the session here; one a worker cannot read, there."""
        row = self.store.get_row(session_id)
        segments = self.store.segment_map(session_id) if self.object_ranges and row["state"] != "recording" else None
        if (
            segments is not None and 0 < row["bytes"] == segments.durable_bytes
            and not self.store.has_local_stream(session_id, row["bytes"])
        ):  # fmt: skip
            jobs = self._plan_on_a_worker(session_id, segments)  # this machine does not hold the stream: not read here
            self.reads.planned.append(0)
        else:
            read = [0]

            def heard(n: int) -> None:
                read[0] += n
                if progress is not None:
                    progress(n)

            jobs = super().jobs(session_id, heard)
            self.reads.planned.append(read[0])
        if segments is not None:
            for job in jobs:
                ranges = segments.ranges((offset, length) for _, offset, length in job.blocks)
                if ranges is not None:  # else (not all durable yet): its bytes are sent
                    self._inputs[id(job)] = (job, ObjectInput(segments.location, tuple(ranges)))
        return jobs

    def _plan_on_a_worker(self, session_id: str, segments: SegmentMap) -> list[Job]:
        """The session's jobs, its stream scanned by a worker from object storage (each job then
        goes as object ranges: every block is durable); its own sweep offset, as session_jobs'."""
        from distributed import CancelledError

        gallery = self.store.gallery.matrix() if self.settings.identify else None
        future = self.client.submit(plan_object_stream, segments, version(), retries=RETRIES, pure=False)
        try:
            init, blocks, codec = self._wait(future)
        except CancelledError:
            raise ClusterError(f"the Dask scheduler at {self.address} cancelled the work (was it restarted?)") from None
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"lost the Dask scheduler at {self.address} ({_reason(exc)})") from None
        finally:
            future.release()
        return jobs_of_blocks(None, init, blocks, codec, self.settings.for_session(session_id), gallery)

    def object_input(self, job: Job) -> ObjectInput | None:
        """The object ranges ``job`` is sent as (None: it is sent with its bytes)."""
        known = self._inputs.get(id(job))
        return known[1] if known is not None and known[0] is job else None

    def _results(self, jobs: list[Job], partial: JobProgress) -> Iterator[list[dict[str, Any]] | BaseException]:
        """As the local pool's; Dask reports a job when it is done (``partial`` is not called)."""
        from distributed import CancelledError

        client = self.client
        window = max(2, JOBS_PER_THREAD * max(self.workers, 1))
        pending: deque[Any] = deque()  # futures, or the error of a job whose input could not be read
        queue = iter(jobs)
        this_version = version()

        def submit_next() -> None:
            job = next(queue, None)
            if job is None:
                return
            remote = dataclasses.replace(job, source=None)  # the bytes, or where they are, go with it
            source = self.object_input(job)
            if source is not None:  # the worker fetches the blocks itself
                self.reads.with_ranges.append(len(job.init))
                future = client.submit(run_object_job, remote, source, this_version, retries=RETRIES, pure=False)
                pending.append(future)
                return
            try:
                runs: Any = read_runs(job)  # on this machine: the workers get bytes, not paths
            except OSError as exc:
                pending.append(OSError(f"cannot read the stored stream: {exc.strerror or exc}"))
                return
            self.reads.with_bytes.append(len(job.init) + sum(len(data) for _, data in runs))
            future = client.submit(run_remote_job, remote, runs, this_version, retries=RETRIES, pure=False)
            pending.append(future)

        try:
            for _ in range(window):
                submit_next()
            while pending:
                future = pending.popleft()
                if isinstance(future, BaseException):
                    submit_next()
                    yield future
                    continue
                try:
                    result: list[dict[str, Any]] | BaseException = self._wait(future)
                except ClusterError:
                    raise
                except IngestError as exc:  # the job's own error (its stream): that session fails
                    result = exc
                except CancelledError:
                    raise ClusterError(f"the Dask scheduler at {self.address} cancelled the work (was it restarted?)") from None
                except (OSError, TimeoutError) as exc:
                    raise ClusterError(f"lost the Dask scheduler at {self.address} ({_reason(exc)})") from None
                submit_next()
                yield result
        finally:  # done, failed or Ctrl-C: nothing of ours keeps running on the cluster
            futures = [f for f in pending if not isinstance(f, BaseException)]
            if futures:
                client.cancel(futures, force=True)

    def _wait(self, future: Any) -> Any:
        """The future's result; a cluster left without workers (or without its scheduler) for
        ``no_workers_timeout_s`` ends the run instead of waiting for ever."""
        from distributed import TimeoutError as DaskTimeoutError

        without_workers_since: float | None = None
        while True:
            try:
                return future.result(timeout=1.0)
            except (TimeoutError, DaskTimeoutError):
                pass
            if self.client.status in ("closed", "closing"):
                raise ClusterError(f"lost the Dask scheduler at {self.address}")
            try:  # while the client reconnects to a lost scheduler, count no workers either
                workers = self._threads() if self.client.status == "running" else 0
            except (OSError, TimeoutError):
                workers = 0
            if workers:
                without_workers_since = None
                self.workers = max(self.workers, workers)
            elif without_workers_since is None:
                without_workers_since = time.monotonic()
            elif time.monotonic() - without_workers_since > self.no_workers_timeout_s:
                raise ClusterError(
                    f"the Dask cluster at {self.address} has had no workers (or no scheduler) for "
                    f"{self.no_workers_timeout_s:g} s"
                )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
