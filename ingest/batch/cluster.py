"""Batch re-processing on a Dask distributed cluster (``camingest reprocess --cluster ADDRESS``).

The jobs are the local pool's (jobs.py: sweep-aligned frame ranges, results equal to
live), run by ``distributed`` instead of local processes:

- **No shared filesystem.** The client reads each job's compressed blocks (from the keyframe
  before its range to its end) from the store and sends them with the task; workers never see a
  path. The gallery travels in the job as well. A task holds its own input, so when a worker
  dies the scheduler runs it again elsewhere (``retries`` on top of that for errors).
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
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from ingest import version
from ingest.analysis.process import prepare_analysis_process
from ingest.analysis.tracker import TrackerSettings
from ingest.batch.jobs import Job, landmark_runs, read_runs
from ingest.batch.local import JobProgress, Reprocessor
from ingest.exceptions import IngestError
from storage.store import SessionStore

CONNECT_TIMEOUT_S = 10
RETRIES = 2  # a job that raises is run again this often (a worker's death is rescheduled anyway)
JOBS_PER_THREAD = 3  # submitted ahead per worker thread: enough to hide the client's reads


class ClusterError(IngestError):
    """The cluster cannot be used (unreachable, no workers, wrong version, lost mid-run)."""


def run_remote_job(job: Job, runs: list[tuple[int, bytes]], client_version: str) -> list[dict[str, Any]]:
    """On a Dask worker: the job's frames from the bytes it came with."""
    if version() != client_version:
        raise ClusterError(f"this worker runs camingest {version()}, the client {client_version}")
    return landmark_runs(job, runs)


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
        self, store: SessionStore, settings: TrackerSettings, address: str, no_workers_timeout_s: float = 30.0
    ) -> None:
        super().__init__(store, settings, workers=0)
        self.address = address
        self.no_workers_timeout_s = no_workers_timeout_s
        self.client: Any = None

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
            try:
                runs: Any = read_runs(job)  # on this machine: the workers get bytes, not paths
            except OSError as exc:
                pending.append(OSError(f"cannot read the stored stream: {exc.strerror or exc}"))
                return
            remote = dataclasses.replace(job, source=None)  # the bytes go with it
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

    def _wait(self, future: Any) -> list[dict[str, Any]]:
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
