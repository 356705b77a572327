"""Sessions that move between nodes at the worst moments (the failure of test_nodes'
cut-off node, 2026-12-01, made small): two `camingest serve` nodes on loopback over real
PostgreSQL, Redis and SeaweedFS, the clients pointed at one node or the other (no load balancer).

- A node frozen past its lease, with chunks of its client still in its socket and another
  node's hand-over request in its Redis channel, wakes up: it lost the lease, so it must change
  nothing of the session (no chunk committed, no ``failed`` state, no decoding of it), and the
  session goes on and ends whole on the node that took it.
- A stopped or failed session is answered by a node that never had its folder, even where the
  index acknowledged bytes that object storage never got (a node gone with them): ``resume``
  says ``session_closed`` / ``invalid_media`` as on any node, never ``internal``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ingest.client import INTERNAL_RETRIES, CamingestClient, CamingestError
from tests.client import Client, http_get, http_json, run, wait_until
from tests.conftest import ServerProcess, free_port, load_recording

pytestmark = pytest.mark.slow
RECORDING = "webcam_vp8_opus_250ms"


def start_node(tmp_path: Path, name: str, postgres: Any, s3: Any, redis: Any, **env: str) -> ServerProcess:
    return ServerProcess(
        tmp_path / f"data-{name}", "--redis", redis.url, "--index", postgres.dsn, "--store", s3.store_url,
        "--s3-endpoint", s3.endpoint, "--node-id", name, "--workers", "1", port=free_port(),
        env={**s3.env, "CAMINGEST_LEASE_S": "4", "CAMINGEST_SESSION_IDLE_S": "600", **env},
    ).start()  # fmt: skip


def history(postgres: Any, session_id: str) -> list[tuple[str, int, str]]:
    with psycopg.connect(postgres.dsn) as conn:
        rows = conn.execute("SELECT node, epoch, what FROM lease_history WHERE session_id = %s ORDER BY at, epoch",
                            (session_id,)).fetchall()  # fmt: skip
    return [(r[0], r[1], r[2]) for r in rows]


def index_row(postgres: Any, session_id: str) -> dict[str, Any]:
    with psycopg.connect(postgres.dsn) as conn:
        row = conn.execute("SELECT state, error, next_seq, bytes, durable_seq FROM sessions WHERE id = %s",
                           (session_id,)).fetchone()  # fmt: skip
    assert row is not None
    return dict(zip(("state", "error", "next_seq", "bytes", "durable_seq"), row, strict=True))


def test_a_connection_frozen_inside_a_transaction_blocks_nobody_for_long(postgres):
    """A node frozen between a statement and its COMMIT (CI froze one inside its lease renewal:
    the node taking its session over waited on the row lock until it woke, 25 s later): the
    index's connections end such a transaction after IDLE_IN_TRANSACTION_S, another writer goes
    on, and the frozen one's COMMIT fails as an unavailable index (nothing of it stored)."""
    from storage.database import PostgresDatabase
    from storage.errors import StoreUnavailableError

    with psycopg.connect(postgres.dsn, autocommit=True) as admin:
        admin.execute("DROP TABLE IF EXISTS frozen_lock")
        admin.execute("CREATE TABLE frozen_lock (id int PRIMARY KEY, holder text)")
        admin.execute("INSERT INTO frozen_lock VALUES (1, 'nobody')")
    frozen = PostgresDatabase(postgres.dsn).connect()
    frozen.execute("BEGIN")
    frozen.execute("UPDATE frozen_lock SET holder = 'node0' WHERE id = 1")  # the row locked, then no COMMIT
    with psycopg.connect(postgres.dsn, autocommit=True) as other:
        other.execute("SET statement_timeout = '30s'")  # fails loudly rather than hanging the suite
        assert other.execute("UPDATE frozen_lock SET holder = 'node1' WHERE id = 1").rowcount == 1
        assert other.execute("SELECT holder FROM frozen_lock").fetchone() == ("node1",)
        (ended,) = other.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'").fetchone()
    assert ended == 0  # the frozen transaction was ended by the server, not committed:
    with pytest.raises(StoreUnavailableError, match=r"^the index \(PostgreSQL\) is not available: "):
        frozen.execute("COMMIT")
    frozen.close()


def test_a_node_woken_after_losing_its_lease_changes_nothing_of_the_session(tmp_path, postgres, s3, redis):
    """node0 records a session (chunk 0 acked, not yet in object storage), is frozen; its client
    sends chunks 1-4 into the frozen node; the session is resumed on node1, which asks node0 for
    it (no answer), takes it once node0's lease expired and forgets chunk 0 (not durable: resent).
    node0 wakes with the hand-over request, the chunks and its lease renewal due at once: it
    finds the lease lost and drops the session. Whatever the order, it commits none of those
    chunks, never marks the session failed, never decodes it; the session ends on node1 (or
    wherever it is then) byte for byte as sent, one owner at a time."""
    recording = load_recording(RECORDING)
    chunks = recording.chunks
    # uploads only when hurried (a hand-over, a stop): chunk 0 is not durable when node0 freezes;
    # a hand-over waits up to 4 s for its tail (node0, its lease lost, cannot upload: it waits)
    env = {"CAMINGEST_SEGMENT_S": "600", "CAMINGEST_STOP_DURABLE_WAIT_S": "4"}
    node0 = start_node(tmp_path, "node0", postgres, s3, redis, **env)
    node1 = start_node(tmp_path, "node1", postgres, s3, redis, **env)

    async def scenario() -> None:
        async with Client(node0.url, ack_timeout=60) as a:
            session = await a.start(recording.meta["mime"])
            session_id = session["session_id"]
            assert (await a.chunk(session, 0, chunks[0]))["ok"]
            assert node0.proc is not None
            os.kill(node0.proc.pid, signal.SIGSTOP)
            stale: list[asyncio.Task[dict[str, Any]]] = []
            try:
                stale = [asyncio.create_task(a.chunk(session, seq, chunks[seq])) for seq in range(1, 5)]
                async with CamingestClient(node1.url, ack_timeout=30, retry_for=120) as b:
                    resumed = await b.resume(session_id, session["token"])
                    assert resumed.next_seq == 0  # chunk 0 never reached object storage: resent
                    assert [n for n, _, what in history(postgres, session_id) if what == "acquired"] == ["node0", "node1"]
                    os.kill(node0.proc.pid, signal.SIGCONT)
                    # node0 says it lost the session (at renewal, or at a refused commit)
                    await wait_until(lambda: f"{session_id}: this node lost its lease" in node0.log.read_text()
                                     or f"session {session_id}: chunk" in node0.log.read_text() or None,
                                     "node0 saying it lost the session", 30)  # fmt: skip
                    acks = await asyncio.wait_for(asyncio.gather(*stale), 60)  # every stale chunk answered
                    print("node0's answers to the chunks sent while it was frozen:", acks)
                    assert index_row(postgres, session_id)["state"] == "recording", index_row(postgres, session_id)
                    for data in chunks[resumed.next_seq:]:
                        await resumed.send(data)
                    summary = await resumed.stop()
            finally:
                os.kill(node0.proc.pid, signal.SIGCONT)
                for task in stale:
                    task.cancel()
        assert summary["state"] == "stopped", summary
        assert "error" not in summary
        status, raw, _ = await http_get(f"{node1.url}/api/sessions/{session_id}/raw.webm")
        assert (status, raw == recording.stream) == (200, True)
        log0 = node0.log.read_text()
        assert f"session {session_id} failed" not in log0
        assert "decoder failed" not in log0
        acquired = [epoch for _, epoch, what in history(postgres, session_id) if what == "acquired"]
        assert acquired == sorted(set(acquired)), history(postgres, session_id)

    try:
        run(scenario())
    finally:
        node0.stop()
        node1.stop()


def test_a_stopped_or_failed_session_is_answered_by_a_node_without_its_folder(tmp_path, postgres, s3, redis):
    """Two sessions recorded on node0: one stopped, one failed (a chunk that is not WebM). node0
    goes away; the index is made to say that their acknowledged chunks never reached object
    storage (``durable_seq`` -1: the node died before uploading them). node1, which never had
    their folders, answers their resumes with what they are (``session_closed``,
    ``invalid_media`` naming the failure), never ``internal``, and says nothing is wrong in its log."""
    recording = load_recording(RECORDING)
    node0 = start_node(tmp_path, "node0", postgres, s3, redis)
    node1 = start_node(tmp_path, "node1", postgres, s3, redis)

    async def scenario() -> None:
        async with Client(node0.url) as a:
            stopped = await a.start(recording.meta["mime"])
            await a.send_all(stopped, recording.chunks[:3])
            assert (await a.stop(stopped))["ok"]
            failed = await a.start(recording.meta["mime"])
            await a.send_all(failed, recording.chunks[:3])
            refused = await a.chunk(failed, 3, b"\x00not webm at all" * 8)
            assert refused["error"]["code"] == "invalid_media", refused
        node0.stop()
        with psycopg.connect(postgres.dsn) as conn:
            conn.execute("UPDATE sessions SET durable_seq = -1 WHERE id IN (%s, %s)",
                         (stopped["session_id"], failed["session_id"]))  # fmt: skip
        for sid in (stopped["session_id"], failed["session_id"]):
            assert index_row(postgres, sid)["bytes"] > 0
            assert not (tmp_path / "data-node1" / "sessions" / sid).exists()
        async with CamingestClient(node1.url, ack_timeout=30, retry_for=60) as b:
            with pytest.raises(CamingestError) as closed:
                await b.resume(stopped["session_id"], stopped["token"])
            assert (closed.value.code, closed.value.message) == (
                "session_closed", f"session {stopped['session_id']} is stopped")
            with pytest.raises(CamingestError) as broken:
                await b.resume(failed["session_id"], failed["token"])
            assert broken.value.code == "invalid_media", broken.value
            assert broken.value.message.startswith(f"session {failed['session_id']} failed: "), broken.value
        log1 = node1.log.read_text()
        assert "internal error" not in log1 and "Traceback" not in log1, log1[-3000:]

    try:
        run(scenario())
    finally:
        node1.stop()
        node0.stop()


def test_a_session_a_node_cannot_load_is_refused_a_few_times_not_for_ever(tmp_path, postgres, s3, redis):
    """A recording session whose index says chunks 0-2 are durable, while object storage holds
    none of them (its node killed before it uploaded a byte; the index made to say so). The node
    that takes it over cannot make its copy whole: every resume is refused with ``internal``
    naming the session (one line in the operator log, no traceback), and the client tries it
    again 3 times (INTERNAL_RETRIES) after the first, not for its whole ``retry_for``."""
    recording = load_recording(RECORDING)
    env = {"CAMINGEST_SEGMENT_S": "600"}  # nothing uploaded before the kill
    node0 = start_node(tmp_path, "node0", postgres, s3, redis, **env)

    async def scenario() -> None:
        async with CamingestClient(node0.url, ack_timeout=30, retry_for=300) as client:
            session = await client.start(recording.meta["mime"])
            for data in recording.chunks[:3]:
                await session.send(data)
            node0.kill()
            with psycopg.connect(postgres.dsn) as conn:
                conn.execute("UPDATE sessions SET durable_seq = 2 WHERE id = %s", (session.session_id,))
            # the same address, another node: the client reconnects to it and resumes there
            node1 = ServerProcess(
                tmp_path / "data-node1", "--redis", redis.url, "--index", postgres.dsn, "--store", s3.store_url,
                "--s3-endpoint", s3.endpoint, "--node-id", "node1", "--workers", "1", port=node0.port,
                env={**s3.env, "CAMINGEST_LEASE_S": "4", "CAMINGEST_SESSION_IDLE_S": "600", **env},
            ).start()  # fmt: skip
            try:
                with pytest.raises(CamingestError) as refused:
                    await session.send(recording.chunks[3])
            finally:
                node1.stop()
        assert refused.value.code == "internal", refused.value
        assert refused.value.message == (f"session {session.session_id} cannot be read on this node (its stored "
                                         "stream is not whole here); the operator log says why")  # fmt: skip
        log1 = node1.log.read_text()
        assert log1.count(f"session {session.session_id} cannot be loaded on this node") == 1 + INTERNAL_RETRIES
        assert "Traceback" not in log1, log1[-3000:]

    try:
        run(scenario())
    finally:
        node0.stop()


def test_health_answers_while_redis_is_away_and_lists_the_peers_again_after(tmp_path, postgres, s3, redis):
    """CI, 2026-12-02: right after Redis came back, /api/health answered 500 (a pooled connection
    from before the restart raised ``ConnectionError`` out of the peer scan). Health is what an
    operator reads in exactly that moment: it answers 200 all along, says the registry is
    unreachable while Redis is away, and lists the peers again once it is back."""
    node = start_node(tmp_path, "node0", postgres, s3, redis)
    answers: list[tuple[int, Any]] = []

    async def listed() -> bool:
        answers.append(await http_json(node.url + "/api/health"))
        status, health = answers[-1]
        return bool(status == 200 and health.get("peers") == ["node0"] and health.get("registry") == "ok")

    async def scenario() -> None:
        await wait_until(listed, "node0 in its own registry", seen=lambda: answers[-1])
        await asyncio.to_thread(redis.stop)
        status, away = await http_json(node.url + "/api/health")
        assert (status, away["ok"], away["peers"], away["registry"]) == (200, True, None, "unreachable"), away
        await asyncio.to_thread(redis.start)
        answers.clear()
        await wait_until(listed, "node0 listed again after Redis came back", seen=lambda: answers[-1])
        # every answer after the restart was 200 (the one that failed in CI came first)
        assert {status for status, _ in answers} == {200}, answers
        assert "internal error" not in node.log.read_text()

    try:
        run(scenario())
    finally:
        node.stop()
