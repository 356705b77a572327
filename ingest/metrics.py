"""Prometheus metrics at ``GET /metrics``: what an operator of a recording server watches.

One ``CollectorRegistry`` per application (never prometheus-client's global one): counters are
incremented where things happen (chunk path, live pipeline, worker restarts); gauges that are
cheap to read are computed when scraped (sessions recording, event-loop lag, queue depths, busy
workers, free disk). An increment costs about a microsecond: nothing shows in the ack benchmark.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# seconds: the ack path is ~1-30 ms (fsync + group commit), landmarks lag 0.2-3 s
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.chunks = Counter("camingest_chunks", "Chunks stored and acknowledged", registry=r)
        self.chunk_bytes = Counter("camingest_chunk_bytes", "Bytes of chunks stored and acknowledged", registry=r)
        self.chunk_ack = Histogram(
            "camingest_chunk_ack_seconds", "From a chunk's receipt to its ack (stored, committed)",
            buckets=ACK_BUCKETS, registry=r,
        )  # fmt: skip
        self.frames_analysed = Counter("camingest_frames_analysed", "Frames landmarked live", registry=r)
        self.frames_skipped = Counter("camingest_frames_skipped", "Frames live analysis had no time for", registry=r)
        self.landmark_lag = Histogram(
            "camingest_landmark_lag_seconds", "From a chunk's ack to its frames' landmarks sent to the page",
            buckets=LAG_BUCKETS, registry=r,
        )  # fmt: skip
        self.worker_restarts = Counter("camingest_worker_restarts", "Analysis workers that died and were replaced", registry=r)
        # the lipstick try-on pages (`image` data URLs, ingest/server/classic_images.py)
        self.classic_frames = Counter("camingest_classic_frames", "Try-on images answered with response_back", registry=r)
        self.classic_frames_dropped = Counter(
            "camingest_classic_frames_dropped",
            "Try-on images replaced by a newer one of the same connection before a worker took them (latest wins)",
            registry=r,
        )  # fmt: skip
        self.classic_refused = Counter(
            "camingest_classic_images_refused", "Try-on images refused (session_error), by code", ["code"], registry=r
        )
        self.classic_response = Histogram(
            "camingest_classic_response_seconds", "From a try-on image's receipt to its response_back",
            buckets=ACK_BUCKETS, registry=r,
        )  # fmt: skip
        self.sessions_ended = Counter(
            "camingest_sessions_ended", "Sessions ended, by what ended them", ["ended_by"], registry=r
        )

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge computed when scraped."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def disk_gauge(self, data_dir: Path) -> None:
        self.gauge("camingest_disk_free_bytes", "Free bytes on the data folder's filesystem",
                   lambda: float(shutil.disk_usage(data_dir).free))  # fmt: skip

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
