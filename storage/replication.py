"""Copying sessions from the local disk (the write path) to object storage (the store of record).

A chunk is acknowledged once it is on the local disk and in the index, as always; this thread
then uploads the acknowledged chunks in **segments** (the chunks since the last one,
concatenated) once the oldest has waited ``segment_s`` or they reach ``segment_bytes``, and the
rest at stop. ``durable_seq`` (in the index, and in every ack) is the highest seq in object
storage: clients keep what it does not cover yet. A segment's plan (``first-last``) is written to
the index before its upload, so a server killed mid-upload uploads the same object again, never
a second one under another key. Derived files (the seekable recording, landmarks and their meta,
snapshots) are uploaded whole when their session's ``changed_gen`` moves past ``uploaded_gen``.

Failures (the store down, refusing) are retried with exponential backoff while the server runs;
``durable_seq`` then stalls and says so. Once a stopped session is wholly uploaded, its local
files may be evicted to keep the local folder under ``local_cache_bytes``; the store reads them
back when they are asked for. Everything here runs in this object's one thread (boto3 blocks).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from storage.errors import StoreUnavailableError
from storage.files import SessionFiles
from storage.objects import ObjectStore, segment_name

log = logging.getLogger("camingest.storage")
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 30.0
IDLE_WAIT_S = 1.0  # how long the thread sleeps with nothing due (a chunk commit wakes it)
DERIVED = ("recording.webm", "landmarks.jsonl", "landmarks.meta.json")


class ReplicatedStore(Protocol):
    """What the replicator needs of the session store (storage/store.py), which owns it."""

    def replication_work(self) -> list[dict[str, Any]]: ...
    def chunks_after(self, session_id: str, seq: int) -> list[dict[str, Any]]: ...
    def plan_segment(self, session_id: str, first: int, last: int) -> None: ...
    def has_local_stream(self, session_id: str, length: int) -> bool: ...
    def read_stream(self, session_id: str, offset: int, length: int) -> bytes: ...
    def segment_done(self, session_id: str, first: int, last: int) -> bool: ...
    def files(self, session_id: str) -> SessionFiles: ...
    def derived_done(self, session_id: str, generation: int) -> None: ...
    def local_usage(self) -> dict[str, int]: ...
    def evictable(self, session_id: str) -> bool: ...
    def evict(self, session_id: str) -> None: ...


@dataclass
class ReplicationStats:
    """For /metrics: what waits for object storage, and how uploads go."""

    backlog_bytes: int = 0  # acknowledged bytes not yet in object storage
    backlog_sessions: int = 0
    oldest_pending_s: float = 0.0  # how long the oldest acknowledged, not durable chunk has waited
    uploads: int = 0
    failures: int = 0
    store_ok: bool = True


class Replicator:
    def __init__(
        self,
        store: ReplicatedStore,
        objects: ObjectStore,
        segment_s: float,
        segment_bytes: int,
        local_cache_bytes: int,
        on_durable: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.objects = objects
        self.segment_s = segment_s
        self.segment_bytes = segment_bytes
        self.local_cache_bytes = local_cache_bytes
        self.on_durable = on_durable
        self.on_upload: Callable[[float], None] | None = None  # seconds per segment PUT (metrics)
        self.stats = ReplicationStats()
        self._durable: dict[str, int] = {}  # session -> durable_seq, as last read or written
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = 0.0
        self._accessed: dict[str, float] = {}  # session -> last read here (eviction order)
        self._urgent: set[str] = set()  # sessions being handed over: everything up now

    # -- called from other threads ---------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="replicator", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def durable_seq(self, session_id: str) -> int | None:
        """The last known durable_seq (None: not known here yet; read the index)."""
        return self._durable.get(session_id)

    def remember(self, session_id: str, durable_seq: int) -> None:
        self._durable[session_id] = max(durable_seq, self._durable.get(session_id, -1))

    def touched(self, session_id: str) -> None:
        self._accessed[session_id] = time.monotonic()

    def last_read(self, session_id: str) -> float:
        return self._accessed.get(session_id, 0.0)

    def forget(self, session_id: str) -> None:
        self._durable.pop(session_id, None)
        self._accessed.pop(session_id, None)

    def hurry(self, session_id: str) -> None:
        """Upload everything of the session now (a hand-over), recording or not."""
        self._urgent.add(session_id)
        self.wake()

    def calm(self, session_id: str) -> None:
        self._urgent.discard(session_id)

    def wait_durable(self, session_id: str, seq: int, timeout_s: float) -> int:
        """Wait until ``seq`` is in object storage (at most ``timeout_s``); the durable_seq then."""
        deadline = time.monotonic() + timeout_s
        self.wake()
        while True:
            durable = self._durable.get(session_id, -1)
            if durable >= seq or time.monotonic() >= deadline:
                return durable
            time.sleep(0.05)

    # -- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                due = self._pass()
                if self._backoff:
                    log.info("object storage is back: uploads go on")
                self._backoff = 0.0
                self.stats.store_ok = True
            except StoreUnavailableError as exc:
                self.stats.failures += 1
                self.stats.store_ok = False
                self._backoff = min(BACKOFF_MAX_S, max(BACKOFF_FIRST_S, self._backoff * 2))
                log.warning("uploads paused: %s; retried in %.1f s", exc.message, self._backoff)
                due = self._backoff
            except Exception:  # a bug, or the index away: logged, retried; the thread never dies
                log.exception("replication pass failed")
                self._backoff = min(BACKOFF_MAX_S, max(BACKOFF_FIRST_S, self._backoff * 2))
                due = self._backoff
            self._wake.wait(due)
            self._wake.clear()

    def _pass(self) -> float:
        """Upload what is due; returns how long to wait before the next pass."""
        now = time.time()
        rows = self.store.replication_work()
        backlog, sessions, oldest, wait = 0, 0, 0.0, IDLE_WAIT_S
        for row in rows:
            session_id = row["id"]
            self._durable[session_id] = max(self._durable.get(session_id, -1), row["durable_seq"])
            if row["durable_seq"] < row["next_seq"] - 1:
                pending = self.store.chunks_after(session_id, row["durable_seq"])
                if not pending:
                    continue
                size = sum(c["size"] for c in pending)
                backlog, sessions = backlog + size, sessions + 1
                age = now - pending[0]["received_at"]
                oldest = max(oldest, age)
                finished = row["state"] != "recording" or session_id in self._urgent
                if finished or age >= self.segment_s or size >= self.segment_bytes or row["segment_plan"]:
                    self._upload_segment(row, pending)
                else:
                    wait = min(wait, self.segment_s - age)
            if row["uploaded_gen"] < row["changed_gen"] and (row["state"] != "recording" or session_id in self._urgent):
                self.upload_derived(session_id, row["changed_gen"])
        self.stats.backlog_bytes, self.stats.backlog_sessions, self.stats.oldest_pending_s = backlog, sessions, oldest
        self._evict()
        return max(0.05, wait)

    def _upload_segment(self, row: dict[str, Any], pending: list[dict[str, Any]]) -> None:
        session_id = row["id"]
        plan = row["segment_plan"]
        if plan:  # an upload a crash interrupted: the same chunks, the same key
            first, last = (int(part) for part in plan.split("-"))
            planned = [c for c in pending if first <= c["seq"] <= last]
            if planned and planned[0]["seq"] == first and planned[-1]["seq"] == last:
                pending = planned
            else:  # a plan that no longer fits (the session was cut back): plan again
                plan = None
        if not plan:
            taken: list[dict[str, Any]] = []
            size = 0
            for chunk in pending:
                if taken and size + chunk["size"] > self.segment_bytes:
                    break
                taken.append(chunk)
                size += chunk["size"]
            pending = taken
            first, last = pending[0]["seq"], pending[-1]["seq"]
            self.store.plan_segment(session_id, first, last)
        if not self.store.has_local_stream(session_id, pending[-1]["offset"] + pending[-1]["size"]):
            return  # the bytes are not on this node's disk (another node holds them)
        data = self.store.read_stream(session_id, pending[0]["offset"], sum(c["size"] for c in pending))
        started = time.monotonic()
        self.objects.put(self.objects.location.session_key(session_id, segment_name(first, last)), data)
        if self.on_upload is not None:
            self.on_upload(time.monotonic() - started)
        self.stats.uploads += 1
        if self.store.segment_done(session_id, first, last):
            self._durable[session_id] = last
            if self.on_durable is not None:
                self.on_durable(session_id, last)

    def upload_derived(self, session_id: str, generation: int) -> None:
        """The session's derived files (and snapshots) as they are on the local disk, then the
        index told that ``generation`` of them is in object storage (also called by a command
        whose replicator does not run: ``SessionStore.publish``)."""
        files = self.store.files(session_id)
        for name in DERIVED:
            path = files.root / name
            if path.exists():
                self.objects.put_file(self.objects.location.session_key(session_id, name), path)
        if files.snapshots.is_dir():
            for path in sorted(files.snapshots.iterdir()):
                if path.is_file() and not path.name.endswith(".tmp"):
                    self.objects.put_file(self.objects.location.session_key(session_id, f"snapshots/{path.name}"), path)
        self.store.derived_done(session_id, generation)

    def _evict(self) -> None:
        """Keep the local folder under ``local_cache_bytes``: stopped sessions wholly in object
        storage go first, least recently read first."""
        usage = self.store.local_usage()
        if sum(usage.values()) <= self.local_cache_bytes:
            return
        total = sum(usage.values())
        for session_id in sorted(usage, key=lambda sid: self._accessed.get(sid, 0.0)):
            if total <= self.local_cache_bytes:
                return
            if self.store.evictable(session_id):
                self.store.evict(session_id)
                log.info("session %s evicted from the local cache (%d bytes; in object storage)", session_id,
                         usage[session_id])  # fmt: skip
                total -= usage[session_id]
