"""SQLite index of sessions, chunks and snapshots (WAL, synchronous=FULL).

All writes go through one writer thread that commits them in groups: every caller's change runs
inside a SAVEPOINT of a shared transaction, so one fsync covers many chunks from many sessions
(a commit costs about 0.7 ms here; 800 chunks/s committed one by one would not keep up). A
caller's future resolves only after the COMMIT that holds its change, which is what makes an ack
durable. Reads use a connection per thread.
"""

from __future__ import annotations

import concurrent.futures
import errno
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from storage.errors import IndexWriteError

T = TypeVar("T")
SQLITE_FULL = 13

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id            TEXT PRIMARY KEY,
    created_at    TEXT NOT NULL,              -- ISO 8601, UTC
    state         TEXT NOT NULL,              -- recording | stopped | failed
    mime          TEXT NOT NULL,
    meta          TEXT NOT NULL DEFAULT '{}', -- client "meta" from start, JSON
    token_hash    TEXT NOT NULL,              -- sha256 of the session token
    next_seq      INTEGER NOT NULL DEFAULT 0,
    bytes         INTEGER NOT NULL DEFAULT 0, -- acked bytes = size of stream.webm
    frames        INTEGER NOT NULL DEFAULT 0, -- video frames completed so far (as a decoder shows them)
    first_ts_ms   REAL,                       -- first / last video block timestamp
    last_ts_ms    REAL,
    reader_state  TEXT,                       -- JSON of WebMReader.state() after next_seq-1
    landmark_frames INTEGER NOT NULL DEFAULT 0, -- frames with stored landmark results (incl. skipped)
    face_frames   INTEGER NOT NULL DEFAULT 0, -- of those, frames with at least one face
    skipped_frames INTEGER NOT NULL DEFAULT 0, -- of those, frames live analysis skipped (not yet filled)
    error         TEXT,                       -- why the session failed
    stopped_at    TEXT,
    ended_by      TEXT,                       -- client (stop) | idle | close
    landmarks_error TEXT,                     -- why filling its landmarks cannot complete
    digest        TEXT,                       -- JSON: who appears, the thumbnail's frame (storage/landmarks.py)
    digest_key    TEXT,                       -- the landmarks file (size:mtime) the digest was made from
    video         TEXT                        -- JSON {"codec", "width", "height"}, or null: no video track
);
CREATE TABLE IF NOT EXISTS session_people (  -- who appears in a session (from its digest), for filters
    session_id    TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    frames        INTEGER NOT NULL,
    PRIMARY KEY (session_id, name)
);
CREATE TABLE IF NOT EXISTS chunks (
    session_id    TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    offset        INTEGER NOT NULL,           -- in stream.webm
    size          INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    received_at   REAL NOT NULL,              -- unix time, server clock
    t_ms          REAL,                       -- client time, if sent
    units         TEXT NOT NULL,              -- blocks this chunk completed: [[cluster_tc, [[off, len], ...]], ...]
    frames_before INTEGER NOT NULL,           -- video frames completed by earlier chunks
    frames        INTEGER NOT NULL,           -- video frames completed by this chunk
    keyframe      INTEGER,                    -- frame index of the last keyframe completed here
    PRIMARY KEY (session_id, seq)
);
CREATE TABLE IF NOT EXISTS session_init (
    session_id    TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
    init          BLOB NOT NULL               -- the init segment (normalised Segment header)
);
CREATE TABLE IF NOT EXISTS snapshots (
    session_id    TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    snapshot_id   TEXT NOT NULL,
    mime          TEXT NOT NULL,
    t_ms          REAL,
    bytes         INTEGER NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (session_id, snapshot_id)
);
"""


class Index:
    """The SQLite index. ``write(fn)`` runs ``fn(conn)`` in the writer thread, inside the group
    transaction; ``read(fn)`` runs it on the calling thread's own connection."""

    def __init__(self, path: Path, max_pending: int = 1024, max_group: int = 256) -> None:
        self.path = path
        self.max_group = max_group
        self._jobs: queue.Queue[tuple[Callable[[sqlite3.Connection], Any], concurrent.futures.Future[Any]] | None] = (
            queue.Queue(maxsize=max_pending)
        )
        self._local = threading.local()
        self._writer: threading.Thread | None = None
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # an acked chunk survives power loss, not just kill -9
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        conn.executescript(SCHEMA)
        self._migrate(conn)
        self._writer = threading.Thread(target=self._run, args=(conn,), name="index-writer", daemon=True)
        self._writer.start()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Columns added after a data folder was created (CREATE IF NOT EXISTS keeps old tables)."""
        have = {row["name"] for row in conn.execute("PRAGMA table_info(sessions)")}
        added = {
            "landmark_frames": "INTEGER NOT NULL DEFAULT 0",
            "face_frames": "INTEGER NOT NULL DEFAULT 0",
            "skipped_frames": "INTEGER NOT NULL DEFAULT 0",
            "ended_by": "TEXT",
            "landmarks_error": "TEXT",
            "digest": "TEXT",
            "digest_key": "TEXT",
            "video": "TEXT",
        }
        for column, declaration in added.items():
            if column not in have:
                conn.execute(f"ALTER TABLE sessions ADD COLUMN {column} {declaration}")
        # the sessions page lists newest first, and filters by person
        conn.execute("CREATE INDEX IF NOT EXISTS sessions_by_time ON sessions (created_at DESC, id DESC)")
        conn.execute("CREATE INDEX IF NOT EXISTS session_people_by_name ON session_people (name)")

    def close(self) -> None:
        if self._writer is not None:
            self._jobs.put(None)
            self._writer.join()
            self._writer = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> concurrent.futures.Future[T]:
        """Queue ``fn`` for the next group commit; blocks while ``max_pending`` jobs wait."""
        if self._writer is None:
            raise RuntimeError("index is not open")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a committed transaction and return its result (blocking)."""
        return self.submit(fn).result()

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._readers_lock:
                self._readers.append(conn)
        return fn(conn)

    def _run(self, conn: sqlite3.Connection) -> None:
        stop = False
        while not stop:
            job = self._jobs.get()
            if job is None:
                break
            batch = [job]
            while len(batch) < self.max_group:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._commit(conn, batch)
        conn.close()

    @staticmethod
    def _commit(
        conn: sqlite3.Connection,
        batch: list[tuple[Callable[[sqlite3.Connection], Any], concurrent.futures.Future[Any]]],
    ) -> None:
        outcomes: list[tuple[concurrent.futures.Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, future in batch:
                conn.execute("SAVEPOINT job")
                try:
                    result = fn(conn)
                except BaseException as exc:  # one caller's failure must not undo the others
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((future, None, _storage_error(exc)))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((future, result, None))
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for _, future in batch:
                future.set_exception(_storage_error(exc))
            return
        for future, result, error in outcomes:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)


def _storage_error(exc: BaseException) -> BaseException:
    """SQLite's errors as the store's own (callers know storage errors, not SQLite's)."""
    if not isinstance(exc, sqlite3.Error):
        return exc
    full = getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL
    return IndexWriteError(errno.ENOSPC if full else errno.EIO, f"the index could not commit: {exc}")
