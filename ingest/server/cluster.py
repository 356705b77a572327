"""This node's place among several (``--redis``): who owns which session, and how it moves.

- **Registry.** Each node writes ``camingest:nodes:<id>`` (its address, sessions, workers, load)
  to Redis every ``HEARTBEAT_S`` with a short expiry: the nodes alive are the keys present
  (``camingest nodes``, ``/api/health``).
- **Ownership** (``Ownership``: ingest/recording/ownership.py). A recording session is owned by
  the holder of its lease in the index (storage/leases.py), renewed every ``lease_s / 3``. A
  ``start`` is owned where it lands. A ``resume`` on another node asks the owner over Redis to hand
  the session over: it uploads its tail, releases the lease and drops the session; this node takes
  the lease and reads the session back from object storage. If the owner is dead, the lease is
  taken once it expires and what the dead node never made durable is forgotten (``next_seq`` =
  ``durable_seq + 1``): the client resends it. A node that finds at renewal that it lost a lease
  (it was cut off) drops the session; its commits were refused by the lease check anyway.
- **Work after stop.** The node that ended a session keeps its lease while it fills and finalizes
  it, then releases it; every ``lease_s`` each node looks for stopped sessions whose fill or
  finalize nobody holds (a dead node's) and takes them.
- **Shutdown.** SIGTERM hands every recording session over (tail uploaded, lease released) before
  the connections close: the clients reconnect through the load balancer and resume elsewhere.

Redis down: the registry and hand-over messages wait for it (logged once), leases fall back to
expiry; nothing on the ack path waits for Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ingest import version
from ingest.background import BackgroundTasks
from ingest.config import Settings
from ingest.exceptions import CapacityError, IngestError
from ingest.server.sio import redis_options
from storage.leases import Lease
from storage.store import SessionStore

log = logging.getLogger("camingest.cluster")
HEARTBEAT_S = 2.0
NODE_TTL_S = 6  # a node missing this long is gone
RPC_TIMEOUT_S = 5.0
KEY = "camingest:nodes:"
CHANNEL = "camingest:node:"


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


@dataclass
class NodeHooks:
    """What the cluster asks of the rest of the server (set at start)."""

    hand_over: Callable[[str], Awaitable[int | None]]  # give a session up: its durable_seq, None if not here
    drop: Callable[[str], None]  # a lease was lost: forget the session here
    needed: Callable[[], set[str]]  # sessions whose lease this node still needs (recording, filling, finalizing)
    describe: Callable[[], dict[str, Any]]  # sessions, workers, load: for the registry
    orphans: Callable[[], Awaitable[None]]  # take dead nodes' unfinished work


class Cluster:
    def __init__(self, settings: Settings, store: SessionStore, redis_url: str, node: str | None = None) -> None:
        import redis.asyncio as aioredis

        self.settings = settings
        self.store = store
        self.node = node or settings.node_id or default_node_id()
        self.lease_s = settings.lease_s
        self.redis = aioredis.from_url(
            redis_url, socket_connect_timeout=1, socket_timeout=2, decode_responses=True, **redis_options()
        )
        self.leases: dict[str, Lease] = {}
        self._claimed_at: dict[str, float] = {}
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks = BackgroundTasks(log)
        self.hooks: NodeHooks | None = None
        self._redis_ok = True
        store.serve_as(self.node)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, hooks: NodeHooks) -> None:
        self.hooks = hooks
        self._tasks.spawn(self._heartbeat(), "node heartbeat")
        self._tasks.spawn(self._listen(), "node messages")
        self._tasks.spawn(self._renew(), "lease renewal")
        self._tasks.spawn(self._take_orphans(), "dead nodes' work")

    async def close(self) -> None:
        await self._tasks.cancel()
        try:
            await self.redis.delete(KEY + self.node)
        except Exception:
            log.debug("could not remove this node from the registry", exc_info=True)
        await self.redis.aclose()

    # -- the registry -----------------------------------------------------------------------------
    async def peers(self) -> list[dict[str, Any]] | None:
        """Every node alive (this one included), by id; None while Redis cannot be read (down,
        or a pooled connection from before its restart failing once: the heartbeat logs it)."""
        from redis.exceptions import RedisError

        nodes = []
        try:
            async for key in self.redis.scan_iter(KEY + "*"):
                raw = await self.redis.get(key)
                if raw:
                    nodes.append(json.loads(raw))
        except (RedisError, OSError) as exc:
            log.debug("the node registry could not be read: %s", exc)
            return None
        return sorted(nodes, key=lambda n: n["id"])

    async def alive(self, node: str) -> bool:
        try:
            return bool(await self.redis.exists(KEY + node))
        except Exception:
            return False  # Redis away: the lease's expiry decides

    async def _heartbeat(self) -> None:
        assert self.hooks is not None
        started = time.time()
        while True:
            entry = {"id": self.node, "url": self.settings.node_url or "", "pid": os.getpid(), "started": started,
                     "version": version(), "load": os.getloadavg()[0], **self.hooks.describe()}  # fmt: skip
            try:
                await self.redis.set(KEY + self.node, json.dumps(entry), ex=NODE_TTL_S)
                if not self._redis_ok:
                    log.info("Redis is back")
                self._redis_ok = True
            except Exception as exc:
                if self._redis_ok:
                    log.warning("Redis unavailable (%s): the node registry and hand-overs wait for it", exc)
                self._redis_ok = False
            await asyncio.sleep(HEARTBEAT_S)

    # -- messages between nodes ---------------------------------------------------------------------
    async def _listen(self) -> None:
        backoff = 0.5
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL + self.node)
                backoff = 0.5
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    self._tasks.spawn(self._on_message(json.loads(message["data"])), "node message")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("node messages: %s; listening again in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    log.debug("closing the node channel failed", exc_info=True)

    async def _on_message(self, message: dict[str, Any]) -> None:
        assert self.hooks is not None
        if message.get("type") == "reply":
            future = self._replies.pop(str(message.get("id")), None)
            if future is not None and not future.done():
                future.set_result(message)
            return
        if message.get("type") == "handover":
            session_id = str(message.get("session_id"))
            log.info("node %s asks for session %s: handing it over", message.get("from"), session_id)
            try:
                durable = await self.hooks.hand_over(session_id)
                reply = {"type": "reply", "id": message.get("id"), "ok": True, "durable_seq": durable}
            except IngestError as exc:
                reply = {"type": "reply", "id": message.get("id"), "ok": False, "error": exc.message}
            await self.redis.publish(CHANNEL + str(message.get("from")), json.dumps(reply))

    async def _rpc(self, node: str, message: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        request_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        try:
            receivers = await self.redis.publish(CHANNEL + node, json.dumps({**message, "id": request_id,
                                                                             "from": self.node}))  # fmt: skip
            if not receivers:
                return None
            return await asyncio.wait_for(future, timeout)
        except (TimeoutError, OSError, ConnectionError) as exc:
            log.warning("node %s did not answer %s (%s)", node, message.get("type"), exc or "timeout")
            return None
        except Exception as exc:  # Redis errors
            log.warning("cannot reach node %s: %s", node, exc)
            return None
        finally:
            self._replies.pop(request_id, None)

    # -- ownership ----------------------------------------------------------------------------------
    def lease(self, session_id: str) -> Lease | None:
        return self.leases.get(session_id)

    def lease_ran_out(self, session_id: str) -> None:
        """The index says this node's lease of the session ran out (found at renewal, or by a
        hand-over request read late): said once, and the session dropped here."""
        assert self.hooks is not None
        log.warning("session %s: this node lost its lease (it could not renew it in time: another node "
                    "owns it now); dropped here, nothing more is committed for it", session_id)  # fmt: skip
        self.lost(session_id)
        self.hooks.drop(session_id)

    def lost(self, session_id: str) -> None:
        self.leases.pop(session_id, None)
        self._claimed_at.pop(session_id, None)

    async def take_unowned(self, session_id: str) -> bool:
        """Own a session nobody else holds (a dead node's, or one left by a restart), its local
        copy made whole: True if this node owns it now."""
        if session_id in self.leases:
            return True
        lease = await self.try_take(session_id)
        if lease is None:
            return False
        for note in await asyncio.to_thread(self.store.adopt, session_id):
            log.warning("session %s taken over by this node: %s", session_id, note)
        return True

    async def try_take(self, session_id: str) -> Lease | None:
        """The lease if nobody else holds it (a dead node's session): no hand-over asked."""
        lease = await asyncio.to_thread(self.store.leases.acquire, session_id, self.node, self.lease_s)
        if lease is not None:
            self._own(lease)
        return lease

    def _own(self, lease: Lease) -> None:
        self.leases[lease.session_id] = lease
        self._claimed_at[lease.session_id] = time.monotonic()

    async def claim(self, session_id: str, new: bool = False) -> Lease:
        lease = await asyncio.to_thread(self.store.leases.acquire, session_id, self.node, self.lease_s)
        if lease is None:
            holder = await asyncio.to_thread(self.store.leases.holder, session_id)
            if holder is not None and await self.alive(holder.node):
                await self._rpc(holder.node, {"type": "handover", "session_id": session_id}, RPC_TIMEOUT_S)
                lease = await asyncio.to_thread(self.store.leases.acquire, session_id, self.node, self.lease_s)
            deadline = time.monotonic() + (max(0.0, holder.expires_in_s) if holder else 0.0) + 1.0
            while lease is None and time.monotonic() < deadline:  # a dead owner: its lease expires
                await asyncio.sleep(0.2)
                lease = await asyncio.to_thread(self.store.leases.acquire, session_id, self.node, self.lease_s)
            if lease is None:
                owner = holder.node if holder else "another node"
                raise CapacityError(f"session {session_id} is recorded by node {owner}, which did not hand it over; "
                                    "retry in a moment")  # fmt: skip
        self._own(lease)
        if not new:
            notes = await asyncio.to_thread(self.store.adopt, session_id)
            for note in notes:
                log.warning("session %s taken over by this node: %s", session_id, note)
        return lease

    async def release(self, session_id: str) -> None:
        if self.leases.pop(session_id, None) is not None:
            self._claimed_at.pop(session_id, None)
            await asyncio.to_thread(self.store.leases.release, session_id, self.node)

    async def _take_orphans(self) -> None:
        """Every ``lease_s``: stopped sessions whose fill or finalize nobody holds are taken."""
        assert self.hooks is not None
        while True:
            await asyncio.sleep(self.lease_s)
            try:
                await self.hooks.orphans()
            except Exception:  # logged; tried again next time: this task never dies
                log.exception("taking over dead nodes' work failed")

    async def _renew(self) -> None:
        """Every ``lease_s / 3``: this node's leases extended, those it no longer needs released,
        those it lost dropped. Never dies (a lease not renewed is a session lost)."""
        assert self.hooks is not None
        every = self.lease_s / 3
        while True:
            await asyncio.sleep(every)
            try:
                needed = self.hooks.needed() | await asyncio.to_thread(self.store.uploads_pending)
                young = {sid for sid, at in self._claimed_at.items() if time.monotonic() - at < self.lease_s}
                for session_id in [s for s in self.leases if s not in needed and s not in young]:
                    await self.release(session_id)  # done with it: fill and finalize over
                lost = await asyncio.to_thread(self.store.leases.renew, self.node, list(self.leases), self.lease_s)
                for session_id in lost:
                    self.lease_ran_out(session_id)
            except IngestError as exc:  # the index away: leases expire; commits are refused meanwhile
                log.warning("lease renewal failed: %s", exc.message)
            except Exception:
                log.exception("lease renewal failed")
