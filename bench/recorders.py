"""Browser-like recorders for the benchmarks, through the package's client (ingest/client.py).

``run_recorders`` spreads N real-time recorders (a 250 ms blob every 250 ms, a new session after
the fixture's last blob) over a few client processes, so that the clients' own event loop is not
what limits a benchmark of the servers: every process connects its clients, all start together,
and each sends back its ack latencies (emit to ack), how far ``durable_seq`` trailed each ack,
and the errors by code.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from bench.common import chunks_of
from bench.rig import cpu_seconds
from ingest.client import CamingestClient, CamingestError

FIXTURE = "webcam_vp8_opus_250ms"
MIME = "video/webm;codecs=vp8,opus"
PACE_S = 0.25


class Samples:
    def __init__(self) -> None:
        self.acks: list[float] = []  # ms, emit to ack
        self.durable_lag: list[int] = []  # chunks acked but not yet durable, at each ack
        self.errors: Counter[str] = Counter()
        self.sessions = 0
        self.late = 0  # blobs sent more than one pace late (the recorder fell behind)

    def as_dict(self) -> dict[str, Any]:
        return {"acks": self.acks, "durable_lag": self.durable_lag, "errors": dict(self.errors),
                "sessions": self.sessions, "late": self.late}  # fmt: skip


async def record_until(client: CamingestClient, chunks: list[bytes], deadline: float, samples: Samples) -> None:
    """Record sessions of the fixture at real-time pace until ``deadline`` (monotonic)."""
    await asyncio.sleep(random.random() * PACE_S)  # spread over the 250 ms slice
    while time.monotonic() < deadline:
        try:
            session = await client.start(MIME)
        except (CamingestError, TimeoutError) as exc:
            samples.errors[getattr(exc, "code", "timeout")] += 1
            await asyncio.sleep(1)
            continue
        samples.sessions += 1
        next_due = time.monotonic()
        for data in chunks:
            if time.monotonic() >= deadline:
                break
            next_due += PACE_S
            sent = time.perf_counter()
            try:
                ack = await session.send(data)
            except (CamingestError, TimeoutError) as exc:
                samples.errors[getattr(exc, "code", "timeout")] += 1
                break  # a chunk missing: this stream is over
            samples.acks.append((time.perf_counter() - sent) * 1000)
            samples.durable_lag.append(ack["seq"] - ack.get("durable_seq", ack["seq"]))
            delay = next_due - time.monotonic()
            if delay < -PACE_S:
                samples.late += 1
            await asyncio.sleep(max(0.0, delay))
        try:
            await session.stop()
        except (CamingestError, TimeoutError) as exc:
            samples.errors["stop:" + getattr(exc, "code", "timeout")] += 1


async def _child(url: str, count: int, seconds: float, conn: Any, seed: int) -> None:
    random.seed(seed)  # each process its own stream, the same from run to run
    chunks = chunks_of(FIXTURE)
    clients = [CamingestClient(url, reconnect=False, ack_timeout=60, retry_for=30) for _ in range(count)]
    connected = await asyncio.gather(*(c.connect() for c in clients), return_exceptions=True)
    ready = [c for c, r in zip(clients, connected, strict=True) if not isinstance(r, BaseException)]
    conn.send(("ready", count - len(ready)))
    go = await asyncio.to_thread(conn.recv)  # the wall-clock time every process starts at
    await asyncio.sleep(max(0.0, go - time.time()))
    samples = Samples()
    samples.errors["unreachable"] += count - len(ready)
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(record_until(c, chunks, deadline, samples) for c in ready))
    await asyncio.gather(*(c.close() for c in ready), return_exceptions=True)
    conn.send(("done", samples.as_dict()))


def _child_main(url: str, count: int, seconds: float, conn: Any, seed: int) -> None:
    asyncio.run(_child(url, count, seconds, conn, seed))


def run_recorders(
    url: str, clients: int, seconds: float, procs: int = 2,
    on_start: Callable[[], None] | None = None, on_end: Callable[[], None] | None = None, seed: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``clients`` real-time recorders against ``url`` for ``seconds``, over ``procs`` processes;
    ``on_start``/``on_end`` run when they all start and all end (CPU meters, counters); process
    ``i`` seeds its random spread with ``seed + i`` (default: drawn from this process's stream)."""
    if seed is None:
        seed = random.randrange(1 << 30)
    ctx = multiprocessing.get_context("spawn")
    procs = max(1, min(procs, clients))
    shares = [clients // procs + (i < clients % procs) for i in range(procs)]
    workers, pipes = [], []
    try:
        for i, share in enumerate(shares):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_child_main, args=(url, share, seconds, child, seed + i), daemon=True)
            proc.start()
            workers.append(proc)
            pipes.append(parent)
        unreachable = 0
        for pipe in pipes:
            if not pipe.poll(300):
                raise RuntimeError("recorder processes did not connect within 300 s")
            unreachable += pipe.recv()[1]
        go = time.time() + 0.5
        for pipe in pipes:
            pipe.send(go)
        time.sleep(max(0.0, go - time.time()))
        if on_start is not None:
            on_start()
        began = time.monotonic()
        pids = [proc.pid for proc in workers if proc.pid is not None]
        cpu_before = cpu_seconds(pids)
        time.sleep(seconds)  # the load's window: CPU meters and counters cover it, not the stops after
        clients_cpu = cpu_seconds(pids) - cpu_before
        if on_end is not None:
            on_end()
        merged: dict[str, Any] = {"acks": [], "durable_lag": [], "errors": Counter(), "sessions": 0, "late": 0}
        for pipe in pipes:
            if not pipe.poll(600):
                raise RuntimeError("recorder processes did not finish")
            part = pipe.recv()[1]
            for key in ("acks", "durable_lag", "sessions", "late"):
                merged[key] += part[key]
            merged["errors"].update(part["errors"])
        merged["wall_s"] = time.monotonic() - began
        merged["clients_cpu_pct_of_one_core"] = round(100 * clients_cpu / seconds, 1)  # all client processes
        merged["errors"] = dict(merged["errors"])
        return merged
    finally:
        for proc in workers:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()


class TimedClient(CamingestClient):
    """The package's client, noting when each ack came (by session) and each (re)connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acked: list[tuple[float, str, str]] = []  # (monotonic, event, session_id)
        self.connects: list[float] = []

    async def call(self, event: str, payload: Any, timeout: float | None = None) -> dict[str, Any]:
        ack = await super().call(event, payload, timeout)
        if ack.get("ok"):
            session_id = payload.get("session_id") or (payload.get("resume") or {}).get("session_id") or ack.get(
                "session_id", "")
            self.acked.append((time.monotonic(), event, session_id))
        return ack

    async def _on_connect(self) -> None:
        self.connects.append(time.monotonic())
        await super()._on_connect()


async def record_forever(url: str, clients: list[TimedClient], stop: asyncio.Event, errors: Counter[str]) -> None:
    """Sessions of the fixture at real-time pace, one after another until ``stop`` is set, each
    over a new connection (as a page opened again: the load balancer spreads them, a replaced
    node gets its share); the client resumes by itself across a node's death. Every client made
    is appended to ``clients``."""
    chunks = chunks_of(FIXTURE)
    await asyncio.sleep(random.random() * 2)
    while not stop.is_set():
        client = TimedClient(url, retry_for=120, ack_timeout=30)
        clients.append(client)
        try:
            await client.connect()
            session = await client.start(MIME)
            for data in chunks:
                await session.send(data)
                await asyncio.sleep(PACE_S)
                if stop.is_set():
                    break
            await session.stop()
        except (CamingestError, TimeoutError) as exc:
            errors[getattr(exc, "code", "timeout")] += 1
            await asyncio.sleep(0.5)
        finally:
            await client.close()
