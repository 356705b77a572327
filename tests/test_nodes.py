"""Many nodes, one service (issue 23): three `camingest serve` nodes on loopback behind nginx (round
robin, WebSocket), over Redis, PostgreSQL 15 and SeaweedFS, all real and started by fixtures."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ingest.client import CamingestClient
from tests.client import http_get, http_json, run, wait_until
from tests.conftest import ServerProcess, free_port, load_recording

pytestmark = pytest.mark.slow
NAMES = ["webcam_vp8_opus_250ms", "webcam_vp9_opus_250ms", "webcam_h264_250ms", "webcam_vp8_kf1s_250ms"]


class Cluster:
    """Three nodes, their engines and the load balancer in front of them."""

    def __init__(self, tmp_path: Path, postgres: Any, s3: Any, redis: Any, nginx: Any, nodes: int = 3,
                 extra: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.tmp_path, self.postgres, self.s3, self.redis = tmp_path, postgres, s3, redis
        self.ports = [free_port() for _ in range(nodes)]
        self.extra = extra
        self.nodes: dict[str, ServerProcess] = {}
        for i, port in enumerate(self.ports):
            self.start(f"node{i}", port)
        self.lb = nginx(self.ports)

    def start(self, name: str, port: int) -> ServerProcess:
        node = ServerProcess(
            self.tmp_path / f"data-{name}", "--redis", self.redis.url, "--index", self.postgres.dsn,
            "--store", self.s3.store_url, "--s3-endpoint", self.s3.endpoint, "--node-id", name, "--workers", "1",
            *self.extra, port=port,
            env={**self.s3.env, "CAMINGEST_SEGMENT_S": "1", "CAMINGEST_LEASE_S": "4", "CAMINGEST_SESSION_IDLE_S": "600"},
        ).start()  # fmt: skip
        self.nodes[name] = node
        return node

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

    def owner(self, session_id: str) -> str | None:
        with psycopg.connect(self.postgres.dsn) as conn:
            row = conn.execute(
                "SELECT node FROM leases WHERE session_id = %s AND expires_at > EXTRACT(EPOCH FROM clock_timestamp())",
                (session_id,),
            ).fetchone()
        return None if row is None else row[0]

    def history(self, session_id: str) -> list[tuple[str, int, str, float]]:
        with psycopg.connect(self.postgres.dsn) as conn:
            rows = conn.execute(
                "SELECT node, epoch, what, at FROM lease_history WHERE session_id = %s ORDER BY at, epoch", (session_id,)
            ).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]


def no_overlap(history: list[tuple[str, int, str, float]]) -> bool:
    """Owners follow each other: each acquisition after the previous owner's release, or with a
    higher epoch (a taken-over, expired lease)."""
    epochs = [epoch for _, epoch, what, _ in history if what == "acquired"]
    return epochs == sorted(set(epochs))


async def record(url: str, name: str, pace: float, pause: asyncio.Event | None = None) -> tuple[str, bytes, dict]:
    """Record a fixture through ``url`` with the package's client (it reconnects, resumes and
    resends by itself); returns the session id, the bytes sent and the stop's summary."""
    recording = load_recording(name)
    async with CamingestClient(url, retry_for=120) as client:
        session = await client.start(recording.meta["mime"])
        for i, chunk in enumerate(recording.chunks):
            await session.send(chunk)
            if pause is not None and i == 3:
                await pause.wait()
            await asyncio.sleep(pace)
        summary = await session.stop()
    return session.session_id, recording.stream, summary


def test_sessions_on_every_node_and_a_killed_node_loses_nothing(tmp_path, postgres, s3, redis, nginx):
    """12 clients record through nginx; one node is killed (-9) while it records sessions: they
    continue on the others, every acked chunk is kept (stored raw == sent), each session had one
    owner at a time, and every node lists every session."""
    cluster = Cluster(tmp_path, postgres, s3, redis, nginx)
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)

    async def scenario() -> None:
        gate = asyncio.Event()
        tasks = [asyncio.create_task(record(cluster.lb.url, rng.choice(NAMES), 0.25, gate)) for _ in range(12)]

        async def recording_everywhere() -> dict[str, int] | None:
            counts = {}
            for name, node in cluster.nodes.items():
                _, health = await http_json(node.url + "/api/health")
                counts[name] = health["sessions_recording"]
            return counts if sum(counts.values()) == 12 else None

        counts = await wait_until(recording_everywhere, "12 sessions recording across the nodes")
        victim = max(counts, key=lambda n: counts[n])
        assert counts[victim] > 0
        cluster.nodes[victim].kill()
        gate.set()
        results = await asyncio.gather(*tasks)
        for session_id, sent, summary in results:
            assert summary["chunks"] == len(load_recording_of(sent)), summary
            status, raw, _ = await http_get(f"{cluster.lb.url}/api/sessions/{session_id}/raw.webm")
            assert (status, raw) == (200, sent)
            assert no_overlap(cluster.history(session_id)), cluster.history(session_id)
        ids = {session_id for session_id, _, _ in results}
        for name, node in cluster.nodes.items():
            if name == victim:
                continue
            _, listing = await http_json(node.url + "/api/sessions")
            assert ids <= {s["id"] for s in listing["sessions"]}, name
        moved = [sid for sid in ids if any(node == victim for node, _, _, _ in cluster.history(sid))]
        assert moved, "no session was recorded by the killed node"
        for sid in moved:
            nodes = [node for node, _, what, _ in cluster.history(sid) if what == "acquired"]
            assert nodes[0] == victim and nodes[-1] != victim, cluster.history(sid)

    try:
        run(scenario())
    finally:
        cluster.stop()


def load_recording_of(stream: bytes) -> list[bytes]:
    for name in NAMES:
        recording = load_recording(name)
        if recording.stream == stream:
            return recording.chunks
    raise AssertionError("not a fixture")


def test_sigterm_hands_sessions_over(tmp_path, postgres, s3, redis, nginx):
    """SIGTERM on a node: its sessions are handed over (tail uploaded, lease released) and it exits
    within 5 s; its clients reconnect once (through nginx) and go on elsewhere, nothing lost."""
    cluster = Cluster(tmp_path, postgres, s3, redis, nginx)

    async def scenario() -> None:
        gate = asyncio.Event()
        tasks = [asyncio.create_task(record(cluster.lb.url, NAMES[i % 4], 0.25, gate)) for i in range(6)]

        async def placed() -> dict[str, int] | None:
            counts = {}
            for name, node in cluster.nodes.items():
                _, health = await http_json(node.url + "/api/health")
                counts[name] = health["sessions_recording"]
            return counts if sum(counts.values()) == 6 else None

        counts = await wait_until(placed, "6 sessions recording")
        name = max(counts, key=lambda n: counts[n])
        node = cluster.nodes[name]
        proc = node.proc
        assert proc is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
        elapsed = loop.time() - started
        gate.set()
        results = await asyncio.gather(*tasks)
        assert elapsed < 5, f"{name} took {elapsed:.1f} s to hand over and exit"
        assert f"{counts[name]} recording sessions handed over" in node.log.read_text()
        for session_id, sent, summary in results:
            status, raw, _ = await http_get(f"{cluster.lb.url}/api/sessions/{session_id}/raw.webm")
            assert (status, raw, summary["state"]) == (200, sent, "stopped")

    try:
        run(scenario())
    finally:
        cluster.stop()
