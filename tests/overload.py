"""What the overload tests (tests/test_overload.py) share: the resident memory of a server and
its worker processes sampled while an attack runs, longer streams made from the fixtures, and
an honest recorder measured beside each attack."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.client import Client, live_frames, wait_until
from tests.conftest import Recording, ServerProcess

MB = 1024 * 1024


def rss_mb(server: ServerProcess) -> tuple[float, float]:
    """(the server process's RSS, the sum of its children's: the analysis workers, the enrolment
    process) in MiB."""
    assert server.proc is not None
    process = psutil.Process(server.proc.pid)
    workers = 0.0
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            workers += child.memory_info().rss
    return process.memory_info().rss / MB, workers / MB


@dataclass
class Memory:
    """RSS of a server and its workers: before, the peak during, and after an attack."""

    before: tuple[float, float] = (0.0, 0.0)
    peak: tuple[float, float] = (0.0, 0.0)
    after: tuple[float, float] = (0.0, 0.0)
    samples: int = 0

    def __str__(self) -> str:
        (sb, wb), (sp, wp), (sa, wa) = self.before, self.peak, self.after
        return (f"server {sb:.0f} -> peak {sp:.0f} -> {sa:.0f} MiB, workers {wb:.0f} -> peak {wp:.0f} -> {wa:.0f} MiB "
                f"({self.samples} samples)")  # fmt: skip

    @property
    def server_growth(self) -> float:
        return self.peak[0] - self.before[0]

    @property
    def workers_growth(self) -> float:
        return self.peak[1] - self.before[1]


@contextlib.asynccontextmanager
async def sampled(server: ServerProcess, every: float = 0.2) -> AsyncIterator[Memory]:
    """Sample the server's and its workers' RSS every ``every`` s while the block runs (``after``
    is taken by the caller's ``settle``)."""
    memory = Memory(before=rss_mb(server))
    memory.peak = memory.before

    async def sample() -> None:
        while True:
            server_mb, workers_mb = await asyncio.to_thread(rss_mb, server)
            memory.peak = (max(memory.peak[0], server_mb), max(memory.peak[1], workers_mb))
            memory.samples += 1
            await asyncio.sleep(every)

    task = asyncio.create_task(sample())
    try:
        yield memory
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    memory.after = rss_mb(server)


def looped_stream(recording: Recording, loops: int, folder: Path, piece: int) -> list[bytes]:
    """The recording played ``loops`` times over as one stream (FFmpeg's -stream_loop, no
    re-encoding: timestamps run on), cut into ``piece``-byte chunks (the reader takes any cut)."""
    source, looped = folder / f"{recording.name}.webm", folder / f"{recording.name}-x{loops}.webm"
    source.write_bytes(recording.stream)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i", str(source), "-c", "copy",
                    "-f", "webm", str(looped)], check=True)  # fmt: skip
    data = looped.read_bytes()
    return [data[i : i + piece] for i in range(0, len(data), piece)]


def ffprobe_stream_frames(chunks: list[bytes], folder: Path) -> int:
    from tests.conftest import ffprobe_frames

    path = folder / "probe.webm"
    path.write_bytes(b"".join(chunks))
    return ffprobe_frames(path)


@dataclass
class Honest:
    """A recorder at its real pace beside an attack: what it measured."""

    session: dict[str, Any] = field(default_factory=dict)
    acks: list[dict[str, Any]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] if ordered else float("nan")


async def honest_recorder(url: str, recording: Recording, out: Honest, pace: float = 0.25,
                          client: Client | None = None, live: bool = True, token: str | None = None) -> None:  # fmt: skip
    """Send ``recording`` chunk by chunk ``pace`` s apart (a browser's 250 ms slices), each
    acknowledged, then stop; ``out`` gets its acks, their latencies and its live frames (once
    every frame has one, unless not ``live``: a server without analysis); ``token``: the
    server's access token."""
    own = client is None
    client = client or Client(url, token=token)
    if own:
        await client.connect()
    try:
        out.session = await client.start(recording.meta["mime"])
        for seq, data in enumerate(recording.chunks):
            started = time.perf_counter()
            ack = await client.chunk(out.session, seq, data)
            out.latencies.append(time.perf_counter() - started)
            out.acks.append(ack)
            await asyncio.sleep(pace)
        stopped = await client.stop(out.session)
        assert stopped["ok"], stopped
        count = recording.expected["video_frames"] if live else 0  # live results of every frame (skipped or not)
        await wait_until(lambda: len(live_frames(client)) >= count, f"live results of {count} frames",
                         seen=lambda: len(live_frames(client)))  # fmt: skip
        out.frames = live_frames(client)
    finally:
        if own:
            await client.close()
