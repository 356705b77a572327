"""The index of sessions, chunks and snapshots, with group commit, on SQLite or PostgreSQL.

All writes go through one writer thread that commits them in groups: every caller's change runs
inside a SAVEPOINT of a shared transaction, so one commit (one fsync) covers many chunks from many
sessions (a commit costs about 0.7 ms on SQLite here; 800 chunks/s committed one by one would not
keep up, and a PostgreSQL round trip per chunk would cost more). A caller's future resolves only
after the COMMIT that holds its change, which is what makes an ack durable. Reads use a connection
per thread. A lost PostgreSQL connection fails what was in flight with ``StoreUnavailableError``
(``busy``) and is opened again for the next group: the index recovers while the server runs.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from storage.database import Connection, Database, is_broken
from storage.errors import StoreUnavailableError
from storage.schema import migrate

T = TypeVar("T")
log = logging.getLogger("camingest.index")
Job = tuple[Callable[[Connection], Any], concurrent.futures.Future[Any]]
RECONNECT_PAUSE_S = 0.5  # between attempts to reach a database that went away


class Index:
    """``write(fn)`` runs ``fn(conn)`` in the writer thread, inside the group transaction;
    ``read(fn)`` runs it on the calling thread's own connection."""

    def __init__(self, database: Database, max_pending: int = 1024, max_group: int = 256) -> None:
        self.database = database
        self.dialect = database.dialect
        self.max_group = max_group
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_pending)
        self._local = threading.local()
        self._writer: threading.Thread | None = None
        self._readers: list[Connection] = []
        self._readers_lock = threading.Lock()

    def open(self) -> list[int]:
        """Connect, bring the schema up to date, start the writer; returns the migrations applied."""
        conn = self.database.connect()
        try:
            applied = migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._writer = threading.Thread(target=self._run, args=(conn,), name="index-writer", daemon=True)
        self._writer.start()
        return applied

    def close(self) -> None:
        if self._writer is not None:
            self._jobs.put(None)
            self._writer.join()
            self._writer = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    def submit(self, fn: Callable[[Connection], T]) -> concurrent.futures.Future[T]:
        """Queue ``fn`` for the next group commit; blocks while ``max_pending`` jobs wait."""
        if self._writer is None:
            raise RuntimeError("index is not open")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a committed transaction and return its result (blocking)."""
        return self.submit(fn).result()

    def read(self, fn: Callable[[Connection], T]) -> T:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and is_broken(conn):
            self._forget_reader(conn)
            conn = None
        if conn is None:
            conn = self._local.conn = self.database.connect()
            with self._readers_lock:
                self._readers.append(conn)
        try:
            return fn(conn)
        except StoreUnavailableError:
            self._forget_reader(conn)  # opened again by the next read
            raise

    def _forget_reader(self, conn: Connection) -> None:
        self._local.conn = None
        with self._readers_lock:
            if conn in self._readers:
                self._readers.remove(conn)
        try:
            conn.close()
        except Exception:  # already gone with its server
            log.debug("closing a broken index connection failed", exc_info=True)

    def _run(self, conn: Connection | None) -> None:
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
            if conn is None or is_broken(conn):
                conn = self._reconnect(conn, batch)
                if conn is None:
                    continue
            self._commit(conn, batch)
        if conn is not None:
            conn.close()

    def _reconnect(self, old: Connection | None, batch: list[Job]) -> Connection | None:
        """A new writer connection, or None (the batch failed ``busy``: the database is away)."""
        if old is not None:
            try:
                old.close()
            except Exception:
                log.debug("closing the broken writer connection failed", exc_info=True)
        try:
            conn = self.database.connect()
        except StoreUnavailableError as exc:
            log.warning("index unavailable: %s", exc.message)
            for _, future in batch:
                future.set_exception(exc)
            time.sleep(RECONNECT_PAUSE_S)  # the writer thread's own pause: no caller waits on it
            return None
        log.info("index connection restored (%s)", self.database.describe())
        return conn

    def _commit(self, conn: Connection, batch: list[Job]) -> None:
        outcomes: list[tuple[concurrent.futures.Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
            for fn, future in batch:
                conn.execute("SAVEPOINT job")
                try:
                    result = fn(conn)
                except StoreUnavailableError:
                    raise  # the connection itself is gone: the whole group fails
                except BaseException as exc:  # one caller's failure must not undo the others
                    conn.execute("ROLLBACK TO SAVEPOINT job")
                    conn.execute("RELEASE SAVEPOINT job")
                    outcomes.append((future, None, exc))
                else:
                    conn.execute("RELEASE SAVEPOINT job")
                    outcomes.append((future, result, None))
            conn.execute("COMMIT")
        except BaseException as exc:
            if not is_broken(conn):
                try:
                    conn.execute("ROLLBACK")
                except Exception:
                    log.debug("rollback after a failed group commit failed", exc_info=True)
            for _, future in batch:
                future.set_exception(exc)
            return
        for future, result, error in outcomes:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
