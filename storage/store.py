"""The session store: everything camingest keeps about a session, behind one interface.

The rest of camingest asks this object for what it needs (a session's row, a chunk's bytes, a
writer for its raw stream, its landmarks, a place to put its seekable recording) and never
learns where or how it is kept. Here: the data folder on the local disk (storage/files.py) and
the SQLite index (storage/index.py).

Durability: a chunk's bytes are written and fdatasync'ed into the raw stream first, then its
index row is committed (``commit_chunk``); only then is it acknowledged. A crash between the two
leaves bytes past the indexed end of the stream, which ``recover()`` trims, so files and index
always agree. Everything here is blocking; the server calls it from threads.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from storage import landmarks_meta
from storage.database import Connection, open_database
from storage.errors import IndexWriteError, StoreBusyError, UnknownSessionError, UnknownSnapshotError
from storage.files import (
    SESSION_ID_RE,
    SNAPSHOT_ID_RE,
    LocalStream,
    SessionFiles,
    StreamWriter,
    fsync_dir,
    is_leftover,
    replace_atomically,
    replacing,
    validate_session_id,
    write_new_file,
)
from storage.gallery import Gallery, import_legacy
from storage.index import Index
from storage.landmarks import (
    LandmarkCounts,
    LandmarkRewrite,
    LandmarkTail,
    append_frames,
    count_frames,
    digest,
    scan,
)
from storage.leases import Lease, LeaseLostError, Leases
from storage.leases import check_sql as lease_check_sql
from storage.objects import ObjectStore, ObjectStoreSettings, SegmentMap, StoreLocation, segment_chain
from storage.outbox import Outbox
from storage.records import ChunkRecord, decode_runs, encode_runs
from storage.replication import DERIVED, Replicator
from storage.tokens import TokenStore

STATES = ("recording", "stopped", "failed")
log = logging.getLogger("camingest.storage")
INDEX_FILE = "index.sqlite3"
LOCK_FILE = "server.lock"
UPLOADS_DIR = "uploads"
EXPORT_WANTED = ".wanted"  # beside an export being encoded: a crash interrupted it if it is still there
SCRATCH_DIR = "tmp"

__all__ = ["STATES", "SessionFilter", "SessionStore", "utc_now", "validate_session_id"]
META_KEY_RE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")


def new_session_id() -> str:
    now = _dt.datetime.now(_dt.UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _unix(iso: str) -> float:
    return _dt.datetime.fromisoformat(iso).timestamp()  # 3.11 reads the trailing Z


def utc_now(offset_s: float = 0.0) -> str:
    """Now as the index writes times (UTC, ms, Z); ``offset_s`` later (a shifted clock: setting clock_offset_s)."""
    now = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=offset_s)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def summary(row: dict[str, Any], chunks: int, snapshots: int) -> dict[str, Any]:
    """The PROTOCOL.md SUMMARY of a session row."""
    first, last = row["first_ts_ms"], row["last_ts_ms"]
    result = {
        "id": row["id"],
        "created_at": row["created_at"],
        "state": row["state"],
        "mime": row["mime"],
        "chunks": chunks,
        "bytes": row["bytes"],
        "frames": row["frames"],
        "duration_ms": 0.0 if first is None or last is None else round(last - first, 3),
        "snapshots": snapshots,
        "analysed_frames": row["landmark_frames"],
        "frames_with_faces": row["face_frames"],
        # frames live analysis had no time for; the server fills them after `stop` (0 = complete)
        "skipped_frames": row["skipped_frames"],
    }
    if row["error"]:
        result["error"] = row["error"]
    if row["ended_by"]:
        result["ended_by"] = row["ended_by"]
    meta = stored_meta(row["meta"])
    if meta:  # what the client said of itself at start (bounded in size there)
        result["meta"] = meta
    if meta.get("imported_from"):  # the user's file name, for the pages
        result["imported_from"] = str(meta["imported_from"])[:200]
    if row["landmarks_error"]:
        result["landmarks_error"] = row["landmarks_error"]
    if row["video"] is not None:  # once its Tracks were read: {"codec", "width", "height"}, null: no video
        result["video"] = json.loads(row["video"])
    if row.get("sub") is not None:  # who started it: the sub of its token (the app's id for the person)
        result["sub"] = row["sub"]
    if row.get("stopped_at"):
        result["ended_at"] = row["stopped_at"]
    if row.get("held"):  # retention keeps it
        result["held"] = True
    return result


def _finite_or_none(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def stored_meta(text: str | None) -> dict[str, Any]:
    """A session's meta as stored, for its summary: the server takes only strict JSON now, but
    one stored before (``{"x": NaN}``) must not make a listing unreadable: NaN and infinities
    read as null."""
    meta = json.loads(text or "{}", parse_constant=lambda _: None, parse_float=_finite_or_none)
    return meta if isinstance(meta, dict) else {}


def durable_of(row: dict[str, Any], objects: bool) -> int:
    """The highest seq in the store of record: every acked one when the local disk is it."""
    return int(row["durable_seq"]) if objects else int(row["next_seq"]) - 1


_SUMMARY_SQL = """
SELECT s.*,
       (SELECT COUNT(*) FROM chunks c WHERE c.session_id = s.id) AS n_chunks,
       (SELECT COUNT(*) FROM snapshots p WHERE p.session_id = s.id) AS n_snapshots
FROM sessions s
"""


@dataclass(frozen=True)
class SessionFilter:
    """Which sessions a listing holds (all given conditions at once): a state, created at or
    after ``since`` and before ``until`` (ISO 8601 UTC, as ``created_at``), a person who
    appears (a gallery name, or "unknown"), a ``meta`` key with a value (as text)."""

    state: str | None = None
    since: str | None = None
    until: str | None = None
    person: str | None = None
    meta: tuple[str, str] | None = None
    sub: str | None = None  # started with a token of this sub (a recorder sees only its own)


def encode_cursor(created_at: str, session_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at, session_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str] | None:
    """The (created_at, id) a page ends at, or None if ``cursor`` is not one of ours."""
    try:
        created_at, session_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        return None
    if not (isinstance(created_at, str) and isinstance(session_id, str) and len(created_at) < 40):
        return None
    return created_at, session_id


class SessionStore:
    def __init__(
        self,
        data_dir: Path,
        max_pending_writes: int = 1024,
        index: str | None = None,
        objects: ObjectStoreSettings | None = None,
        clock_offset_s: float = 0.0,
    ) -> None:
        """``index``: None (SQLite in the data folder) or a PostgreSQL URL; ``objects``: None (the
        data folder is the store of record) or S3-compatible object storage (the data folder is
        then the write path and a bounded cache); ``clock_offset_s``: when sessions end is
        written that much later than now (setting clock_offset_s, for retention drills)."""
        self.clock_offset_s = clock_offset_s
        self.data_dir = Path(data_dir)
        self.sessions_dir = self.data_dir / "sessions"
        self.database = open_database(index, self.data_dir, INDEX_FILE)
        self.index = Index(self.database, max_pending=max_pending_writes)
        self.objects: ObjectStore | None = None
        self.replicator: Replicator | None = None
        if objects is not None:
            self.objects = ObjectStore(StoreLocation.parse(objects.url, objects.endpoint))
            self.replicator = Replicator(
                self, self.objects, objects.segment_s, objects.segment_bytes, objects.local_cache_bytes
            )
            self.evict_quiet_s = objects.evict_quiet_s
        self.gallery = Gallery(self.index, self.data_dir / "gallery" / "images", self.objects)
        self.leases = Leases(self.index)
        self.tokens = TokenStore(self.index)
        self.outbox = Outbox(self.index)
        self.node: str | None = None  # several nodes: this one's id (it replicates what it owns)
        self._present: set[str] = set()  # sessions whose files are known to be on the local disk
        self._fetching: dict[str, threading.Lock] = {}
        self._lock_fd: int | None = None
        self._replicating = False  # this process's replicator uploads (the server; not a command)

    @staticmethod
    def found(data_dir: Path, index: str | None = None) -> bool:
        """Whether there is camingest data to read (for the commands that read it): an index
        server is taken as found; a SQLite index must exist in the data folder."""
        database = open_database(index, Path(data_dir), INDEX_FILE)
        return database.dialect != "sqlite" or Path(getattr(database, "path", "")).exists()

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self, recover: bool = True, holder: str | None = None, cluster: bool = False) -> list[str]:
        """Open the index. With ``recover`` (the server: it takes the data folder's lock first,
        as repairs must not race a running server) also repair what a crash may have left;
        returns one line per repair. ``holder`` (who takes the lock: command, pid, address) is
        written into the lock file, so that whoever is refused can be told who holds it."""
        self.sessions_dir.mkdir(parents=True, exist_ok=True)
        if recover:
            self._lock_fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held_by = self.lock_holder()
                os.close(self._lock_fd)
                self._lock_fd = None
                who = f" ({held_by})" if held_by else ""
                raise StoreBusyError(f"another camingest process{who} is using {self.data_dir}") from None
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, (holder or f"pid {os.getpid()}").encode()[:400] + b"\n", 0)
        self.index.open()
        notes = []
        # the gallery of before the index moves into it, once (whoever opens the folder first)
        imported = import_legacy(self.gallery, self.data_dir / "gallery" / "gallery.sqlite3")
        if imported:
            notes.append(f"the gallery's {imported} people moved into the index")
        if recover:
            notes += self.recover(cluster)
            if self.replicator is not None:  # the server: it uploads (a command only reads)
                self.replicator.start()
                self._replicating = True
        return notes

    def lock_holder(self) -> str | None:
        """What the process holding the data folder's lock wrote there (command, pid, address)."""
        try:
            text = (self.data_dir / LOCK_FILE).read_bytes()[:400].decode("utf-8", "replace").strip()
        except OSError:
            return None
        return "".join(c for c in text if c.isprintable()) or None

    def close(self) -> None:
        if self.replicator is not None:
            self.replicator.close()
        self.index.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def recover(self, cluster: bool = False) -> list[str]:
        """Trim raw streams to the indexed length (bytes of a chunk that was written but never
        committed, so never acked), fail sessions whose file lost acked bytes, and remove what
        unfinished uploads and imports left (never acknowledged: nothing is lost)."""
        notes: list[str] = []
        for leftover in (UPLOADS_DIR, SCRATCH_DIR):
            shutil.rmtree(self.data_dir / leftover, ignore_errors=True)
        for orphan in self.gallery.orphan_photos():  # a crash between a photo and its row
            orphan.unlink(missing_ok=True)
            notes.append(f"removed the gallery photo {orphan.name}, which no person holds")
        for key in [] if cluster else self.gallery.orphan_objects():
            self.gallery.remove_object(key)
            notes.append(f"removed the gallery photo {key.rsplit('/', 1)[-1]} from object storage, which no person holds")
        rows = self.index.read(lambda c: c.execute("SELECT id, bytes, state, meta FROM sessions").fetchall())
        removed = self._remove_unfinished_imports(rows, cluster)
        notes += removed.values()
        rows = [row for row in rows if row["id"] not in removed]
        notes += self._remove_temporary_files([row["id"] for row in rows])
        for row in rows:
            path = self.files(row["id"]).stream
            size = path.stat().st_size if path.exists() else 0
            if size > row["bytes"]:
                with open(path, "r+b") as f:
                    f.truncate(row["bytes"])
                    os.fsync(f.fileno())
                notes.append(f"{row['id']}: trimmed {size - row['bytes']} unacknowledged bytes")
            elif size < row["bytes"] and cluster:
                continue  # maybe another node's session: its next owner makes its copy whole (adopt)
            elif size < row["bytes"] and self.objects is not None:
                notes += self._restore_from_objects(row["id"])
            elif size < row["bytes"]:
                message = f"stream.webm has {size} bytes, the index acknowledged {row['bytes']}"
                self._fail(row["id"], message)
                notes.append(f"{row['id']}: {message}")
        return notes

    @staticmethod
    def _import_of(row: dict[str, Any]) -> bool:
        """Whether the session is (was) an import: an upload or ``camingest import``."""
        try:
            meta = json.loads(row["meta"] or "null")
        except ValueError:
            return False
        return isinstance(meta, dict) and "imported_from" in meta

    def _remove_unfinished_imports(self, rows: list[dict[str, Any]], cluster: bool) -> dict[str, str]:
        """An import still ``recording`` was killed before it ended (it is ``stopped`` before its
        upload is answered or its command says so: nobody was told it exists), and a session
        folder without a row was killed between the two: both removed. With several nodes an
        import in that state may be another node's, running: only folders are looked at."""
        notes: dict[str, str] = {}
        if not cluster:
            for row in rows:
                if row["state"] == "recording" and self._import_of(row):
                    self.delete(row["id"])
                    notes[row["id"]] = f"{row['id']}: removed an import that never completed (never acknowledged)"
        known = {row["id"] for row in rows}
        if self.sessions_dir.is_dir():
            for folder in sorted(self.sessions_dir.iterdir()):
                if folder.is_dir() and folder.name not in known and SESSION_ID_RE.match(folder.name) \
                        and not self._row_exists(folder.name):
                    shutil.rmtree(folder, ignore_errors=True)
                    notes[folder.name] = f"{folder.name}: removed a session folder the index never held (a crash at its creation)"
        return notes

    def _remove_temporary_files(self, session_ids: list[str]) -> list[str]:
        """What writers killed mid-way left in the sessions' folders (a landmark rewrite, an
        export being encoded, a file being replaced): at start-up nobody writes them."""
        notes = []
        for session_id in session_ids:
            root = self.files(session_id).root
            if not root.is_dir():
                continue
            left = sorted(p for p in root.rglob("*") if p.is_file() and is_leftover(p.name))
            for path in left:
                path.unlink(missing_ok=True)
            if left:
                names = ", ".join(str(p.relative_to(root)) for p in left[:5]) + (" ..." if len(left) > 5 else "")
                notes.append(f"{session_id}: removed {len(left)} temporary file(s) a killed writer left: {names}")
        return notes

    def _row_exists(self, session_id: str) -> bool:
        row = self.index.read(lambda c: c.execute("SELECT 1 AS one FROM sessions WHERE id=?", (session_id,)).fetchone())
        return row is not None

    def _restore_from_objects(self, session_id: str) -> list[str]:
        """The local copy of a session is gone or short (a lost disk, a new machine): what is in
        object storage comes back; acknowledged chunks that never reached it are forgotten by the
        index (``next_seq`` = ``durable_seq + 1``), so their client resends them."""
        row = self.get_row(session_id)
        durable = row["durable_seq"]
        notes = []
        if durable < row["next_seq"] - 1:
            self._truncate(session_id, durable)
            notes.append(f"{session_id}: chunks {durable + 1}-{row['next_seq'] - 1} were not in object storage; "
                         f"next_seq is {durable + 1} (the client resends them)")  # fmt: skip
        self._present.discard(session_id)
        # the folder exists even when nothing was durable: the resent chunk 0 is written into it
        self.files(session_id).root.mkdir(parents=True, exist_ok=True)
        if durable >= 0:
            self._local(session_id)
            notes.append(f"{session_id}: restored from object storage through seq {durable}")
        return notes

    def _truncate(self, session_id: str, last_seq: int) -> None:
        """Forget chunks after ``last_seq``: the session's state becomes what it was after it."""

        def cut(conn: Connection) -> None:
            kept = conn.execute("SELECT * FROM chunks WHERE session_id=? AND seq=?", (session_id, last_seq)).fetchone()
            conn.execute("DELETE FROM chunks WHERE session_id=? AND seq>?", (session_id, last_seq))
            if kept is None:
                conn.execute("DELETE FROM session_init WHERE session_id=?", (session_id,))
                conn.execute(
                    "UPDATE sessions SET next_seq=0, bytes=0, frames=0, first_ts_ms=NULL, last_ts_ms=NULL,"
                    " reader_state=NULL, segment_plan=NULL WHERE id=?",
                    (session_id,),
                )
                return
            after = json.loads(kept["after_state"] or "null")
            if after is None:
                raise IndexWriteError(0, f"session {session_id} has no saved state after chunk {last_seq}")
            conn.execute(
                "UPDATE sessions SET next_seq=?, bytes=?, frames=?, first_ts_ms=?, last_ts_ms=?, reader_state=?,"
                " segment_plan=NULL WHERE id=?",
                (last_seq + 1, kept["offset"] + kept["size"], kept["frames_before"] + kept["frames"],
                 after["first_ts_ms"], after["last_ts_ms"], json.dumps(after["reader_state"]), session_id),
            )  # fmt: skip

        self.index.write(cut)
        stream = self.files(session_id).stream
        if stream.exists():
            row = self.get_row(session_id)
            with open(stream, "r+b") as f:
                f.truncate(min(row["bytes"], os.fstat(f.fileno()).st_size))

    def _fail(self, session_id: str, message: str) -> None:
        self.index.write(
            lambda c: c.execute("UPDATE sessions SET state='failed', error=? WHERE id=?", (message, session_id))
        )

    # -- sessions -----------------------------------------------------------------------------
    def files(self, session_id: str) -> SessionFiles:
        return SessionFiles(self.sessions_dir / validate_session_id(session_id))

    def _local(self, session_id: str) -> SessionFiles:
        """The session's files on the local disk, fetched from object storage first where they
        were evicted from it (or lost with a disk)."""
        files = self.files(session_id)
        if self.objects is None or self.replicator is None:
            return files
        self.replicator.touched(session_id)
        if session_id in self._present:
            return files
        lock = self._fetching.setdefault(session_id, threading.Lock())
        with lock:
            if session_id not in self._present:
                row = self.get_row(session_id)
                self._fetch(session_id, files, row)
                if row["state"] != "recording":  # a stopped session no longer changes: known present
                    self._present.add(session_id)
        return files

    def durable_length(self, row: dict[str, Any]) -> int:
        """Bytes of the raw stream through durable_seq."""
        if row["durable_seq"] >= row["next_seq"] - 1:
            return int(row["bytes"])
        if row["durable_seq"] < 0:
            return 0
        chunk = self.chunk_row(row["id"], row["durable_seq"])
        return 0 if chunk is None else int(chunk["offset"] + chunk["size"])

    def local_length(self, session_id: str) -> int:
        """Acknowledged bytes of the raw stream on this node's disk (all of them at its owner;
        what is durable elsewhere)."""
        path = self.files(session_id).stream
        size = path.stat().st_size if path.exists() else 0
        return min(size, int(self.get_row(session_id)["bytes"]))

    def _fetch(self, session_id: str, files: SessionFiles, row: dict[str, Any]) -> None:
        assert self.objects is not None
        size = files.stream.stat().st_size if files.stream.exists() else 0
        if size >= self.durable_length(row):
            return
        files.root.mkdir(parents=True, exist_ok=True)
        location = self.objects.location
        with replacing(files.stream) as tmp, open(tmp, "wb") as out:
            for key, _, _ in self._segment_chain(session_id, row["durable_seq"]):
                out.write(self.objects.get(key))
            out.flush()
            if out.tell() < self.durable_length(row):
                raise IndexWriteError(0, f"object storage holds {out.tell()} of the {row['bytes']} bytes of {session_id}")
        self._fetch_derived(session_id, files, DERIVED)
        snapshot_prefix = location.session_key(session_id, "snapshots/")
        for key, _ in self.objects.keys(snapshot_prefix):
            target = files.snapshots / key[len(snapshot_prefix):]
            if not target.exists():
                files.snapshots.mkdir(exist_ok=True)
                replace_atomically(target, self.objects.get(key))
        log.info("session %s fetched from object storage", session_id)

    def _fetch_derived(self, session_id: str, files: SessionFiles, names: tuple[str, ...]) -> None:
        """Those of the session's derived files (``DERIVED``) missing here, from object storage."""
        assert self.objects is not None
        for name in names:
            target = files.root / name
            if not target.exists():
                try:
                    data = self.objects.get(self.objects.location.session_key(session_id, name))
                except FileNotFoundError:
                    continue
                files.root.mkdir(parents=True, exist_ok=True)
                replace_atomically(target, data)

    def _local_landmarks(self, session_id: str) -> SessionFiles:
        """As ``_local``, for writing the session's landmarks and their meta: where this machine
        holds nothing of its stream (a ``reprocess`` on a machine of its own, its jobs planned
        and run by Dask workers from object storage), only those two files are fetched, not the
        stream."""
        files = self.files(session_id)
        if self.objects is None or self.replicator is None or session_id in self._present or files.stream.exists():
            return self._local(session_id)
        self.get_row(session_id)  # an unknown session is said as such
        files.root.mkdir(parents=True, exist_ok=True)
        lock = self._fetching.setdefault(session_id, threading.Lock())
        with lock:
            self._fetch_derived(session_id, files, ("landmarks.jsonl", "landmarks.meta.json"))
        return files

    def _segment_chain(self, session_id: str, durable_seq: int) -> list[tuple[str, int, int]]:
        """The segments in object storage that make the raw stream through ``durable_seq``."""
        assert self.objects is not None
        if durable_seq < 0:
            return []
        extents = {c["seq"]: (int(c["offset"]), int(c["size"])) for c in self.chunks_after(session_id, -1)}
        return segment_chain(session_id, self.objects.segments(session_id), extents, durable_seq)

    def segment_map(self, session_id: str) -> SegmentMap | None:
        """Where the session's durable raw stream lies in object storage (one listing), so that
        readers elsewhere (Dask workers) fetch byte ranges of it themselves; None when the data
        folder is the store of record. ``IndexWriteError`` if a durable segment is missing."""
        if self.objects is None:
            return None
        row = self.get_row(session_id)
        return SegmentMap(self.objects.location, tuple(self._segment_chain(session_id, row["durable_seq"])))

    def adopt(self, session_id: str) -> list[str]:
        """This node took the session over (from another node, or a dead one): its local copy is
        made what the index says, read back from object storage, and what never reached it is
        forgotten by the index (the client resends it). One line per repair."""
        self._present.discard(session_id)
        row = self.get_row(session_id)
        stream = self.files(session_id).stream
        size = stream.stat().st_size if stream.exists() else 0
        if size > row["bytes"]:  # bytes this node wrote but never committed, in an earlier ownership
            with open(stream, "r+b") as f:
                f.truncate(row["bytes"])
        if size >= row["bytes"] or self.objects is None:
            return []
        return self._restore_from_objects(session_id)

    def evict(self, session_id: str) -> None:
        """Drop the local copy of a session that is wholly in object storage."""
        self._present.discard(session_id)
        shutil.rmtree(self.files(session_id).root, ignore_errors=True)

    # -- object storage ------------------------------------------------------------------------
    def durable_seq(self, session_id: str, acked_seq: int) -> int:
        """The highest seq already in the store of record (the local disk's last ack when there
        is no object storage). No I/O: what the replicator knows (``remember`` seeds it)."""
        if self.replicator is None:
            return acked_seq
        known = self.replicator.durable_seq(session_id)
        return -1 if known is None else known

    def remember(self, row: dict[str, Any]) -> None:
        """A session row was read: its durable_seq seeds what acks say."""
        if self.replicator is not None:
            self.replicator.remember(row["id"], row["durable_seq"])

    def hand_over_data(self, session_id: str, timeout_s: float) -> int:
        """Everything of a recording session this node holds into object storage (its tail, its
        landmarks so far), waiting at most ``timeout_s``; its durable_seq then. ``LeaseLostError``
        if this node's lease ran out (the index says so) before it started."""
        if self.replicator is None:
            return self.get_row(session_id)["next_seq"] - 1
        if not self._holds(session_id):  # (a node woken after its lease ran out: nothing of it is ours)
            raise LeaseLostError(f"this node no longer owns session {session_id}: it has nothing to hand over")
        self.index.write(lambda c: c.execute("UPDATE sessions SET changed_gen=changed_gen+1 WHERE id=?", (session_id,)))
        self.replicator.hurry(session_id)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                row = self.get_row(session_id)
                done = row["durable_seq"] >= row["next_seq"] - 1 and row["uploaded_gen"] >= row["changed_gen"]
                if done or time.monotonic() >= deadline or not self._holds(session_id):
                    return int(row["durable_seq"])  # (a lease lost meanwhile: this node uploads nothing more)
                time.sleep(0.05)
        finally:
            self.replicator.calm(session_id)

    def _holds(self, session_id: str) -> bool:
        """Whether this node holds the session's lease (always, for a store that is no cluster's node)."""
        if self.node is None:
            return True
        holder = self.leases.holder(session_id)
        return holder is not None and holder.node == self.node and holder.expires_in_s > 0

    def wait_durable(self, session_id: str, timeout_s: float) -> int:
        """Wait (at most ``timeout_s``) until every acknowledged chunk is in the store of record."""
        last = self.get_row(session_id)["next_seq"] - 1
        if self.replicator is None:
            return last
        return self.replicator.wait_durable(session_id, last, timeout_s)

    def serve_as(self, node: str) -> None:
        """This store is one node's of several: it uploads only what that node owns (a lease)."""
        self.node = node

    def replication_work(self) -> list[dict[str, Any]]:
        """Sessions with something to upload (of this node's, with several)."""
        columns = "s.id, s.state, s.next_seq, s.durable_seq, s.segment_plan, s.changed_gen, s.uploaded_gen"
        pending = "(s.durable_seq < s.next_seq - 1 OR s.uploaded_gen < s.changed_gen)"
        if self.node is None:
            return self.index.read(lambda c: c.execute(
                f"SELECT {columns} FROM sessions s WHERE {pending} ORDER BY s.created_at").fetchall())  # fmt: skip
        return self.index.read(
            lambda c: c.execute(
                f"SELECT {columns} FROM sessions s JOIN leases l ON l.session_id = s.id AND l.node = ?"
                f" AND l.expires_at > {self.leases.now} WHERE {pending} ORDER BY s.created_at",
                (self.node,),
            ).fetchall()
        )

    def uploads_pending(self) -> set[str]:
        """This node's sessions with something still to upload: their leases are kept."""
        return {row["id"] for row in self.replication_work()}

    def orphaned_uploads(self) -> list[str]:
        """Stopped sessions whose derived files changed and were never uploaded, whose lease
        nobody holds (a node died with them)."""
        rows = self.index.read(
            lambda c: c.execute(
                "SELECT s.id FROM sessions s LEFT JOIN leases l ON l.session_id = s.id"
                f" AND l.expires_at > {self.leases.now} WHERE s.state <> 'recording' AND s.uploaded_gen < s.changed_gen"
                " AND l.session_id IS NULL ORDER BY s.created_at"
            ).fetchall()
        )
        return [row["id"] for row in rows]

    def derived_lost(self, session_id: str) -> None:
        """A dead node's derived files of the session never reached object storage: made again
        (the counters and the finalized flag say they are missing, so fill and finalize run)."""
        files = self.files(session_id)
        if files.landmarks.exists() and files.recording.exists():
            self._changed(session_id)  # this node has them: upload them
            return
        self.index.write(
            lambda c: c.execute(
                "UPDATE sessions SET finalized=0, landmark_frames=0, face_frames=0, skipped_frames=0,"
                " uploaded_gen=changed_gen WHERE id=?",
                (session_id,),
            )
        )

    def chunks_after(self, session_id: str, seq: int) -> list[dict[str, Any]]:
        return self.index.read(
            lambda c: c.execute(
                'SELECT seq, "offset", size, received_at FROM chunks WHERE session_id=? AND seq>? ORDER BY seq',
                (session_id, seq),
            ).fetchall()
        )

    def has_local_stream(self, session_id: str, length: int) -> bool:
        path = self.files(session_id).stream
        return path.exists() and path.stat().st_size >= length

    def plan_segment(self, session_id: str, first: int, last: int) -> None:
        self.index.write(
            lambda c: c.execute("UPDATE sessions SET segment_plan=? WHERE id=?", (f"{first}-{last}", session_id))
        )

    def segment_done(self, session_id: str, first: int, last: int) -> bool:
        return bool(
            self.index.write(
                lambda c: c.execute(
                    "UPDATE sessions SET durable_seq=?, segment_plan=NULL WHERE id=? AND durable_seq=?",
                    (last, session_id, first - 1),
                ).rowcount
            )
        )

    def derived_done(self, session_id: str, generation: int) -> None:
        self.index.write(
            lambda c: c.execute(
                "UPDATE sessions SET uploaded_gen=? WHERE id=? AND uploaded_gen<?", (generation, session_id, generation)
            )
        )

    def publish(self, session_id: str) -> None:
        """With object storage, in a process whose replicator does not run (a command such as
        ``reprocess``, perhaps on a machine of its own): upload the session's derived files now,
        so what it wrote here reaches the store of record before it exits. A server uploads
        them itself (``_changed``); without object storage the data folder is the store."""
        if self.replicator is None or self._replicating:
            return
        row = self.index.write(  # after the changes this process submitted
            lambda c: c.execute("SELECT changed_gen FROM sessions WHERE id=?", (session_id,)).fetchone()
        )
        if row is None:
            raise UnknownSessionError(f"unknown session {session_id!r}")
        self.replicator.upload_derived(session_id, int(row["changed_gen"]))

    def _changed(self, session_id: str) -> None:
        """A derived file of the session changed: upload it (group-committed, not awaited)."""
        if self.replicator is None:
            return
        self.index.submit(
            lambda c: c.execute("UPDATE sessions SET changed_gen=changed_gen+1 WHERE id=?", (session_id,))
        ).add_done_callback(lambda _: self.replicator.wake() if self.replicator else None)

    def local_usage(self) -> dict[str, int]:
        """Bytes of each session folder on the local disk."""
        usage: dict[str, int] = {}
        if not self.sessions_dir.is_dir():
            return usage
        for folder in self.sessions_dir.iterdir():
            if folder.is_dir():
                usage[folder.name] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        return usage

    def evictable(self, session_id: str) -> bool:
        """Stopped, wholly in object storage, and not read here for ``evict_quiet_s``."""
        try:
            row = self.get_row(session_id)
        except UnknownSessionError:
            return False
        if row["state"] == "recording" or row["durable_seq"] < row["next_seq"] - 1 or row["uploaded_gen"] < row["changed_gen"]:
            return False
        last_read = self.replicator.last_read(session_id) if self.replicator else 0.0
        return time.monotonic() - last_read > self.evict_quiet_s

    def create(
        self, mime: str, meta: dict[str, Any], sub: str | None = None, jti: str | None = None
    ) -> tuple[dict[str, Any], str]:
        """A new session; ``sub`` and ``jti``: the token that started it (kept with it)."""
        session_id, token = new_session_id(), secrets.token_urlsafe(24)
        files = self.files(session_id)
        files.root.mkdir(parents=True)
        files.stream.touch()
        fsync_dir(files.root)
        fsync_dir(self.sessions_dir)
        created = utc_now()
        self.index.write(
            lambda c: c.execute(
                "INSERT INTO sessions (id, created_at, state, mime, meta, token_hash, sub, token_jti)"
                " VALUES (?, ?, 'recording', ?, ?, ?, ?, ?)",
                (session_id, created, mime, json.dumps(meta, allow_nan=False), hash_token(token), sub, jti),
            )
        )
        return self.get_row(session_id), token

    def get_row(self, session_id: str) -> dict[str, Any]:
        validate_session_id(session_id)
        row = self.index.read(lambda c: c.execute(_SUMMARY_SQL + " WHERE s.id = ?", (session_id,)).fetchone())
        if row is None:
            raise UnknownSessionError(f"unknown session {session_id!r}")
        return dict(row)

    def summary(self, session_id: str) -> dict[str, Any]:
        row = self.get_row(session_id)
        result = summary(row, row["n_chunks"], row["n_snapshots"])
        result["finalized"] = self.is_finalized(session_id)
        result["durable_seq"] = durable_of(row, self.objects is not None)
        return result

    def detail(self, session_id: str) -> dict[str, Any]:
        """The summary plus the session's snapshots (``GET /api/sessions/{id}``)."""
        result = self.summary(session_id)
        result["snapshots"] = self.snapshot_rows(session_id)
        return result

    def list_summaries(self) -> list[dict[str, Any]]:
        rows = self.index.read(lambda c: c.execute(_SUMMARY_SQL + " ORDER BY s.created_at DESC, s.id DESC").fetchall())
        return [summary(r, r["n_chunks"], r["n_snapshots"]) for r in rows]

    def list_page(
        self, where: SessionFilter = SessionFilter(), cursor: tuple[str, str] | None = None, limit: int = 100
    ) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        """One page of summaries, newest first, after ``cursor`` (the (created_at, id) the
        previous page ended at); returns them and the cursor of the next page (None: the last).
        Each summary also says who appears (``people``, from the session's digest)."""
        conditions: list[str] = []
        args: list[Any] = []
        if where.state is not None:
            conditions.append("s.state = ?")
            args.append(where.state)
        if where.since is not None:
            conditions.append("s.created_at >= ?")
            args.append(where.since)
        if where.until is not None:
            conditions.append("s.created_at < ?")
            args.append(where.until)
        if where.sub is not None:
            conditions.append("s.sub = ?")
            args.append(where.sub)
        if where.person is not None:
            self.refresh_digests()  # who appears in sessions whose landmarks changed since
            conditions.append("EXISTS (SELECT 1 FROM session_people p WHERE p.session_id = s.id AND p.name = ?)")
            args.append(where.person)
        if where.meta is not None:
            key, value = where.meta
            if not META_KEY_RE.match(key):
                raise ValueError(f"meta key {key[:80]!r}: letters, digits, _ and - only (1-64)")
            if self.index.dialect == "postgresql":
                conditions.append("(s.meta::jsonb ->> ?) = ?")
                args += [key, value]
            else:
                conditions.append("CAST(json_extract(s.meta, ?) AS TEXT) = ?")
                args += [f"$.{key}", value]
        if cursor is not None:
            conditions.append("(s.created_at, s.id) < (?, ?)")
            args += list(cursor)
        sql = _SUMMARY_SQL + (" WHERE " + " AND ".join(conditions) if conditions else "")
        sql += " ORDER BY s.created_at DESC, s.id DESC LIMIT ?"
        rows = self.index.read(lambda c: c.execute(sql, (*args, limit + 1)).fetchall())
        page = [dict(r) for r in rows[:limit]]
        out = []
        for row in page:
            result = summary(row, row["n_chunks"], row["n_snapshots"])
            result["people"] = [p["name"] for p in self._digest(row)["people"]]
            out.append(result)
        more = len(rows) > limit
        return out, (page[-1]["created_at"], page[-1]["id"]) if more and page else None

    # -- what the sessions page shows: who appears, a thumbnail ------------------------------------
    def _digest_key(self, session_id: str) -> str:
        try:
            st = self.files(session_id).landmarks.stat()
        except FileNotFoundError:
            return "none"
        return f"{st.st_size}:{st.st_mtime_ns}"

    def _digest(self, row: dict[str, Any]) -> dict[str, Any]:
        """The session's digest (storage/landmarks.py ``digest``), made again when its landmarks
        file changed since (kept in the index, with who appears in ``session_people``)."""
        key = self._digest_key(row["id"])
        # kept as it is when it is current, or when this node has no copy of the landmarks (they
        # were made elsewhere, or evicted): the digest in the index is theirs
        if row.get("digest") and (row.get("digest_key") == key or key == "none"):
            cached: dict[str, Any] = json.loads(row["digest"])
            return cached
        made = digest(self.files(row["id"]).landmarks)
        people = [(row["id"], p["name"], p["frames"]) for p in made["people"]]

        def save(c: Connection) -> None:
            if not c.execute("UPDATE sessions SET digest=?, digest_key=? WHERE id=?", (json.dumps(made), key, row["id"])).rowcount:
                return  # deleted meanwhile
            c.execute("DELETE FROM session_people WHERE session_id=?", (row["id"],))
            for person in people:
                c.execute("INSERT INTO session_people VALUES (?, ?, ?)", person)

        self.index.write(save)
        return made

    def digest(self, session_id: str) -> dict[str, Any]:
        """Who appears in the session and the frame of its thumbnail (kept up to date)."""
        validate_session_id(session_id)
        row = self.index.read(
            lambda c: c.execute("SELECT id, digest, digest_key FROM sessions WHERE id=?", (session_id,)).fetchone()
        )
        if row is None:
            raise UnknownSessionError(f"unknown session {session_id!r}")
        return self._digest(dict(row))

    def refresh_digests(self) -> int:
        """Make again the digests of sessions whose landmarks changed (one stat each); returns
        how many were."""
        rows = self.index.read(lambda c: c.execute("SELECT id, digest, digest_key FROM sessions").fetchall())
        stale = [dict(r) for r in rows if r["digest_key"] != self._digest_key(r["id"])]
        for row in stale:
            self._digest(row)
        return len(stale)

    def thumbnail(self, session_id: str, frame: int) -> bytes | None:
        """The stored thumbnail showing ``frame``, or None (not made yet)."""
        try:
            return self.files(session_id).thumbnail(frame).read_bytes()
        except FileNotFoundError:
            return None

    def save_thumbnail(self, session_id: str, frame: int, data: bytes) -> None:
        """Keep ``data`` (a JPEG) as the session's thumbnail of ``frame``; older ones go."""
        files = self.files(session_id)
        target = files.thumbnail(frame)
        if not files.root.is_dir():
            raise UnknownSessionError(f"unknown session {session_id!r}")  # deleted meanwhile
        replace_atomically(target, data)
        for old in files.thumbnails():
            if old != target:
                old.unlink(missing_ok=True)

    def set_state(
        self, session_id: str, state: str, error: str | None = None, frames: int | None = None,
        lease: Lease | None = None,
    ) -> bool:  # fmt: skip
        """``frames``: the session's frame count corrected (a video that stopped decoding: the
        frames that did). With ``lease`` (a node of a cluster) nothing changes unless the node
        still holds it, as for a chunk's commit; False then (or if the session is gone)."""
        assert state in STATES
        stopped_at = utc_now(self.clock_offset_s) if state != "recording" else None
        owned = f" AND {lease_check_sql(self.index.dialect)}" if lease is not None else ""
        owner = (lease.node, lease.epoch) if lease is not None else ()
        changed = self.index.write(
            lambda c: c.execute(
                "UPDATE sessions SET state=?, error=COALESCE(?, error), stopped_at=COALESCE(stopped_at, ?),"
                " frames=COALESCE(?, frames) WHERE id=?" + owned,
                (state, error, stopped_at, frames, session_id, *owner),
            ).rowcount
        )
        return bool(changed)

    def end_session(self, session_id: str, ended_by: str, lease: Lease | None = None) -> bool:
        """Mark a recording session stopped, saying what ended it; False if it was not recording
        (or, with ``lease``, if this node no longer holds it)."""
        stopped_at = utc_now(self.clock_offset_s)
        owned = f" AND {lease_check_sql(self.index.dialect)}" if lease is not None else ""
        owner = (lease.node, lease.epoch) if lease is not None else ()
        changed = self.index.write(
            lambda c: c.execute(
                "UPDATE sessions SET state='stopped', ended_by=?, stopped_at=? WHERE id=? AND state='recording'" + owned,
                (ended_by, stopped_at, session_id, *owner),
            ).rowcount
        )
        if changed and self.replicator is not None:
            self._changed(session_id)  # its tail and its landmarks go to object storage now
        return bool(changed)

    def recording_activity(self) -> dict[str, float]:
        """Sessions still recording -> unix time of their last chunk (or of their creation)."""
        rows = self.index.read(
            lambda c: c.execute(
                "SELECT s.id, s.created_at, MAX(c.received_at) AS last FROM sessions s"
                " LEFT JOIN chunks c ON c.session_id = s.id WHERE s.state='recording' GROUP BY s.id"
            ).fetchall()
        )
        return {
            row["id"]: row["last"] if row["last"] is not None else _unix(row["created_at"]) for row in rows
        }

    def last_chunk_at(self, session_id: str) -> float | None:
        """Unix time the session's last chunk was received; None before its first."""
        value = self.index.read(
            lambda c: c.execute("SELECT MAX(received_at) AS last FROM chunks WHERE session_id=?", (session_id,)).fetchone()
        )
        return None if value is None or value["last"] is None else float(value["last"])

    def unfinalized(self) -> list[str]:
        """Stopped sessions with chunks but no seekable recording (a crash between stop and
        finalize), oldest first."""
        rows = self.index.read(
            lambda c: c.execute("SELECT id FROM sessions WHERE state='stopped' AND bytes>0 ORDER BY created_at").fetchall()
        )
        return [row["id"] for row in rows if not self.is_finalized(row["id"])]

    def set_landmarks_error(self, session_id: str, message: str | None) -> None:
        """Filling this session's landmarks cannot complete (its stream does not decode): said in
        its summary, and not tried again at every restart."""
        self.index.write(
            lambda c: c.execute("UPDATE sessions SET landmarks_error=? WHERE id=?", (message, session_id))
        )

    def reset_landmark_counts(self, session_id: str, counts: LandmarkCounts) -> None:
        self._changed(session_id)
        self.index.write(
            lambda c: c.execute(
                "UPDATE sessions SET landmark_frames=?, face_frames=?, skipped_frames=? WHERE id=?",
                (counts.frames, counts.with_faces, counts.skipped, session_id),
            )
        )

    def sessions_to_fill(self) -> list[str]:
        """Stopped sessions whose landmark counters say some frames have no results (skipped, or
        counters behind the file after a crash), oldest first."""
        rows = self.index.read(
            lambda c: c.execute(
                "SELECT id FROM sessions WHERE state='stopped' AND landmarks_error IS NULL"
                " AND (skipped_frames>0 OR landmark_frames<frames) ORDER BY created_at"
            ).fetchall()
        )
        return [row["id"] for row in rows]

    def delete(self, session_id: str) -> bool:
        """Delete the session with every file of it; False if its row was gone already (another
        node or command deleted it: its files go anyway)."""
        files = self.files(session_id)
        deleted = self.index.write(lambda c: c.execute("DELETE FROM sessions WHERE id=?", (session_id,)).rowcount)
        shutil.rmtree(files.root, ignore_errors=True)
        self._present.discard(session_id)
        if self.objects is not None and self.replicator is not None:
            self.replicator.forget(session_id)
            self.objects.delete_prefix(self.objects.location.session_key(session_id, ""))
        return bool(deleted)

    # -- who may see it, how long it is kept ------------------------------------------------------
    def session_sub(self, session_id: str) -> str | None:
        """The sub of the token that started the session (None: none); unknown_session if none."""
        validate_session_id(session_id)
        row = self.index.read(lambda c: c.execute("SELECT sub FROM sessions WHERE id = ?", (session_id,)).fetchone())
        if row is None:
            raise UnknownSessionError(f"unknown session {session_id!r}")
        return None if row["sub"] is None else str(row["sub"])

    def set_hold(self, session_id: str, held: bool) -> None:
        """Hold the session (retention keeps it) or let it go."""
        validate_session_id(session_id)
        changed = self.index.write(
            lambda c: c.execute("UPDATE sessions SET held = ? WHERE id = ?", (int(held), session_id)).rowcount
        )
        if not changed:
            raise UnknownSessionError(f"unknown session {session_id!r}")

    def ended_before(self, before: str, include_held: bool = False) -> list[dict[str, Any]]:
        """Sessions that ended (stopped or failed) before ``before`` (ISO 8601 UTC as the index
        writes it), oldest first: ``id``, ``ended_at``, ``held``; held ones only if asked."""
        held = "" if include_held else " AND held = 0"
        rows = self.index.read(
            lambda c: c.execute(
                "SELECT id, COALESCE(stopped_at, created_at) AS ended_at, held FROM sessions"
                " WHERE state <> 'recording' AND COALESCE(stopped_at, created_at) < ?" + held + " ORDER BY ended_at",
                (before,),
            ).fetchall()
        )
        return [{"id": r["id"], "ended_at": r["ended_at"], "held": bool(r["held"])} for r in rows]

    # -- chunks -------------------------------------------------------------------------------
    def chunk_row(self, session_id: str, seq: int) -> dict[str, Any] | None:
        row = self.index.read(
            lambda c: c.execute("SELECT * FROM chunks WHERE session_id=? AND seq=?", (session_id, seq)).fetchone()
        )
        return None if row is None else dict(row)

    def chunk_rows(self, session_id: str, from_seq: int = 0) -> list[dict[str, Any]]:
        rows = self.index.read(
            lambda c: c.execute(
                "SELECT * FROM chunks WHERE session_id=? AND seq>=? ORDER BY seq", (session_id, from_seq)
            ).fetchall()
        )
        return [dict(r) for r in rows]

    def init_segment(self, session_id: str) -> bytes | None:
        row = self.index.read(
            lambda c: c.execute("SELECT init FROM session_init WHERE session_id=?", (session_id,)).fetchone()
        )
        return None if row is None else bytes(row["init"])

    @staticmethod
    def has_blocks(row: dict[str, Any]) -> bool:
        """Whether the stored chunk of ``row`` completed any block."""
        return bool(decode_runs(row["units"]))

    def chunk_runs(self, session_id: str, row: dict[str, Any]) -> list[tuple[int, bytes]]:
        """The blocks a stored chunk completed, by cluster timecode, read from the locations
        kept in its index row (no re-parsing): with the init segment, ``build_unit`` of
        ingest/media/webm.py makes them a standalone WebM."""
        return [
            (timecode, b"".join(self.read_stream(session_id, offset, length) for offset, length in spans))
            for timecode, spans in decode_runs(row["units"])
        ]

    def read_stream(self, session_id: str, offset: int, length: int) -> bytes:
        """Bytes of the raw stream: from the local copy, made from object storage first where it
        is not here (``_local``). ``OSError`` naming the session if they are in neither (acked
        by a node that never made them durable)."""
        try:
            with open(self._local(session_id).stream, "rb") as f:
                f.seek(offset)
                data = f.read(length)
        except FileNotFoundError:
            data = b""
        if len(data) != length:
            raise OSError(f"the stored stream of {session_id} is shorter than its index here (bytes {offset}-"
                          f"{offset + length} of it are neither on this node nor in object storage)")  # fmt: skip
        return data

    def stream_writer(self, session_id: str) -> StreamWriter:
        """Where a recording session's chunks are appended (durably), by their offsets."""
        return StreamWriter(self.files(session_id).stream)

    def commit_chunk(self, record: ChunkRecord, lease: Lease | None = None) -> concurrent.futures.Future[None]:
        """Commit a chunk whose bytes ``stream_writer`` has made durable: its row and the
        session's state after it, in the next group commit. The future resolves once committed
        (an ack may be sent then). Blocks while ``max_pending_writes`` commits wait. With
        ``lease`` (a node of a cluster) nothing is committed unless the node still holds it:
        ``LeaseLostError`` otherwise. A refused chunk (``record.error``) was never written:
        only the session's failure is committed."""
        owned = f" AND {lease_check_sql(self.index.dialect)}" if lease is not None else ""
        owner = (lease.node, lease.epoch) if lease is not None else ()
        if record.error is not None:  # refused: not part of the stream, only the session's end

            def fail(conn: Connection) -> None:
                conn.execute(
                    "UPDATE sessions SET state='failed', error=COALESCE(error, ?) WHERE id=?" + owned,
                    (record.error, record.session_id, *owner),
                )

            return self.index.submit(fail)
        row = (
            record.session_id, record.seq, record.offset, record.size, record.sha256, record.received_at,
            record.t_ms, encode_runs(record.runs), record.frames_before, record.frames, record.keyframe,
        )  # fmt: skip
        reader_state = json.dumps(record.reader_state)
        after = json.dumps({"reader_state": record.reader_state, "first_ts_ms": record.first_ts_ms,
                            "last_ts_ms": record.last_ts_ms})  # fmt: skip

        def commit(conn: Connection) -> None:
            updated = conn.execute(
                # a session whose video stopped decoding keeps the count that decoded (set_state)
                "UPDATE sessions SET next_seq=?, bytes=?, frames=CASE WHEN state='failed' THEN frames ELSE ? END,"
                " first_ts_ms=?, last_ts_ms=?, reader_state=?, video=COALESCE(?, video) WHERE id=?" + owned,
                (
                    record.seq + 1, record.offset + record.size, record.frames_before + record.frames,
                    record.first_ts_ms, record.last_ts_ms, reader_state, record.video, record.session_id,
                    *owner,
                ),
            ).rowcount  # fmt: skip
            if lease is not None and not updated:  # rolled back with this job's savepoint
                raise LeaseLostError(f"this node no longer owns session {record.session_id}: reconnect and resume it")
            conn.execute(
                'INSERT INTO chunks (session_id, seq, "offset", size, sha256, received_at, t_ms, units, frames_before,'
                " frames, keyframe, after_state) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (*row, after),
            )
            if record.init is not None:
                conn.execute(
                    "INSERT INTO session_init VALUES (?, ?) ON CONFLICT (session_id) DO UPDATE SET init = excluded.init",
                    (record.session_id, record.init),
                )

        return self.index.submit(commit)

    def reader_state(self, session_id: str) -> tuple[dict[str, Any] | None, bytes]:
        """The WebM reader's saved state after the last committed chunk and the stream bytes it
        had not consumed yet (to resume a session without re-reading its stream)."""
        row = self.get_row(session_id)
        if not row["reader_state"]:
            return None, b""
        state = json.loads(row["reader_state"])
        return state, self.read_stream(session_id, state["consumed"], row["bytes"] - state["consumed"])

    def stream_source(self, session_id: str) -> LocalStream:
        """Read access to the acknowledged raw stream, for remuxing, rendering and batch jobs
        (picklable: worker processes read it themselves)."""
        files = self._local(session_id)
        return LocalStream(str(files.stream), self.local_length(session_id))

    def open_stream(self, session_id: str) -> tuple[BinaryIO, int]:
        """The raw stream opened for reading, and its acknowledged length (of a session recorded
        by another node: what is durable so far)."""
        files = self._local(session_id)
        return open(files.stream, "rb"), self.local_length(session_id)

    # -- the seekable recording -----------------------------------------------------------------
    def is_finalized(self, session_id: str) -> bool:
        row = self.get_row(session_id)
        return bool(row["finalized"]) or self.files(session_id).recording.exists()  # (rows made before the flag)

    def _finalized(self, session_id: str) -> None:
        self.index.write(lambda c: c.execute("UPDATE sessions SET finalized=1 WHERE id=?", (session_id,)))
        self._changed(session_id)

    @contextlib.contextmanager
    def recording_target(self, session_id: str) -> Iterator[Path]:
        """A temporary path to write the seekable recording into; it becomes the session's
        recording (atomically) when the block ends without an error."""
        with replacing(self._local(session_id).recording) as tmp:
            yield tmp
        self._finalized(session_id)

    def install_recording(self, session_id: str, path: Path) -> None:
        """Make a finished file (an import's remux, on this filesystem) the session's recording."""
        os.replace(path, self.files(session_id).recording)
        self._finalized(session_id)

    def open_recording(self, session_id: str) -> tuple[BinaryIO, int] | None:
        """The finalized recording and its size, or None before it exists."""
        path = self._local(session_id).recording
        try:
            f = open(path, "rb")  # noqa: SIM115 -- the caller closes it
        except FileNotFoundError:
            return None
        return f, os.fstat(f.fileno()).st_size

    # -- snapshots ------------------------------------------------------------------------------
    def add_snapshot(
        self, session_id: str, mime: str, width: int, height: int, data: bytes, t_ms: float | None,
        faces: list[dict[str, Any]] | None = None,
    ) -> str:  # fmt: skip
        """Store a (validated) snapshot durably; returns its id. With ``faces`` (already found)
        its landmarks are written too, before the snapshot is listed."""
        files = self._local(session_id)
        files.snapshots.mkdir(exist_ok=True)
        counted = self.index.read(
            lambda c: c.execute("SELECT COUNT(*) AS n FROM snapshots WHERE session_id=?", (session_id,)).fetchone()
        )
        number = counted["n"] if counted else 0
        snapshot_id = f"{number:06d}-{secrets.token_hex(3)}"
        write_new_file(files.snapshot(snapshot_id, mime), data)
        self._changed(session_id)
        if faces is not None:
            self.write_snapshot_landmarks(session_id, snapshot_id, faces)
        self.index.write(
            lambda c: c.execute(
                "INSERT INTO snapshots VALUES (?,?,?,?,?,?,?,?)",
                (session_id, snapshot_id, mime, t_ms, len(data), width, height, utc_now()),
            )
        )
        return snapshot_id

    def snapshot_rows(self, session_id: str) -> list[dict[str, Any]]:
        rows = self.index.read(
            lambda c: c.execute(
                "SELECT snapshot_id, mime, t_ms, bytes, width, height, created_at FROM snapshots"
                " WHERE session_id=? ORDER BY snapshot_id",
                (session_id,),
            ).fetchall()
        )
        return [dict(r) for r in rows]

    def snapshot_row(self, session_id: str, snapshot_id: str) -> dict[str, Any]:
        """The snapshot's row; ``unknown_session`` / ``unknown_snapshot`` otherwise."""
        self.get_row(session_id)  # an unknown session is unknown_session, first
        row = None
        if isinstance(snapshot_id, str) and SNAPSHOT_ID_RE.match(snapshot_id):
            row = self.index.read(
                lambda c: c.execute(
                    "SELECT * FROM snapshots WHERE session_id=? AND snapshot_id=?", (session_id, snapshot_id)
                ).fetchone()
            )
        if row is None:
            raise UnknownSnapshotError(f"session {session_id} has no snapshot {str(snapshot_id)[:40]!r}")
        return dict(row)

    def snapshot_file(self, session_id: str, snapshot_id: str) -> str:
        """Where a worker reads the stored image of a snapshot."""
        row = self.snapshot_row(session_id, snapshot_id)
        return str(self._local(session_id).snapshot(snapshot_id, row["mime"]))

    def open_snapshot(self, session_id: str, snapshot_id: str) -> tuple[BinaryIO, int, str]:
        """The stored image opened for reading, its size and its type."""
        row = self.snapshot_row(session_id, snapshot_id)
        f = open(self._local(session_id).snapshot(snapshot_id, row["mime"]), "rb")  # noqa: SIM115
        return f, row["bytes"], row["mime"]

    def write_snapshot_landmarks(self, session_id: str, snapshot_id: str, faces: list[dict[str, Any]]) -> None:
        replace_atomically(
            self._local(session_id).snapshot_landmarks(snapshot_id), json.dumps({"faces": faces}, allow_nan=False).encode()
        )
        self._changed(session_id)

    def snapshot_landmarks(self, session_id: str, snapshot_id: str) -> bytes | None:
        """``{"faces": [...]}`` as stored, or None while the snapshot is not analysed."""
        self.snapshot_row(session_id, snapshot_id)
        try:
            return self._local(session_id).snapshot_landmarks(snapshot_id).read_bytes()
        except FileNotFoundError:
            return None

    # -- landmarks ------------------------------------------------------------------------------
    def append_landmarks(self, session_id: str, frames: list[dict[str, Any]]) -> LandmarkCounts:
        """Append live results and add them to the session's counters (group-committed, not
        awaited: derived data that a restart recounts from the file)."""
        append_frames(self.files(session_id).landmarks, frames)
        counts = LandmarkCounts.of(frames)
        self.index.submit(
            lambda c: c.execute(
                "UPDATE sessions SET landmark_frames=landmark_frames+?, face_frames=face_frames+?,"
                " skipped_frames=skipped_frames+? WHERE id=?",
                (counts.frames, counts.with_faces, counts.skipped, session_id),
            )
        )
        return counts

    def landmarks_finished(self, session_id: str) -> None:
        """Live analysis of a stopped session wrote its last results: they may be uploaded."""
        self._changed(session_id)

    def stored_landmark_frames(self, session_id: str) -> int:
        """Frames with a stored result (a torn last line, from a crash mid-append, is cut)."""
        return count_frames(self._local(session_id).landmarks)

    def scan_landmarks(self, session_id: str, total: int) -> tuple[list[int], LandmarkCounts]:
        """Frame indices in [0, total) without a result or with a skipped one, and the counters."""
        return scan(self._local(session_id).landmarks, total)

    def landmarks_rewrite(self, session_id: str) -> LandmarkRewrite:
        """A rewrite of some frame ranges (unopened: use ``with`` or ``.__enter__()``)."""
        return LandmarkRewrite(self._local_landmarks(session_id).landmarks, on_commit=lambda: self._changed(session_id))

    def landmark_tail(self, session_id: str) -> LandmarkTail:
        return LandmarkTail(self._local(session_id).landmarks)

    def landmarks_json(self, session_id: str) -> bytes:
        """``{"session_id", "frames": [...]}`` in index order: the stored lines already are the
        frames' JSON, joined without re-encoding."""
        self.get_row(session_id)
        path = self._local(session_id).landmarks
        lines = path.read_bytes().splitlines() if path.exists() else []
        body = b",".join(line for line in lines if line.endswith(b"}"))
        return b'{"session_id":' + json.dumps(session_id).encode() + b',"frames":[' + body + b"]}"

    def landmarks_meta(self, session_id: str) -> dict[str, Any] | None:
        return landmarks_meta.read(self._local(session_id).landmarks_meta)

    def start_landmarks_meta(self, session_id: str, meta: dict[str, Any]) -> None:
        """Record how live analysis makes this session's landmarks (kept if already recorded)."""
        landmarks_meta.write_if_absent(self._local(session_id).landmarks_meta, meta)
        self._changed(session_id)

    def write_landmarks_meta(self, session_id: str, meta: dict[str, Any]) -> None:
        landmarks_meta.write(self._local_landmarks(session_id).landmarks_meta, meta)
        self._changed(session_id)

    def update_landmarks_meta(self, session_id: str, **changes: Any) -> None:
        landmarks_meta.update(self._local(session_id).landmarks_meta, **changes)
        self._changed(session_id)

    # -- exports --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def export_target(self, session_id: str, name: str) -> Iterator[Path]:
        """A temporary path to encode an export into; kept as the session's export ``name``
        when the block ends without an error."""
        folder = self.files(session_id).exports
        folder.mkdir(exist_ok=True)
        with replacing(folder / Path(name).name) as tmp:
            yield tmp

    def export_files(self, session_id: str) -> list[tuple[str, int]]:
        """(name, bytes) of the session's finished exports."""
        folder = self.files(session_id).exports
        if not folder.is_dir():
            return []
        return [(p.name, p.stat().st_size) for p in sorted(folder.iterdir())
                if p.is_file() and not is_leftover(p.name) and not p.name.endswith(EXPORT_WANTED)]  # fmt: skip

    def want_export(self, session_id: str, name: str) -> None:
        """An export ``name`` is being encoded: recorded (durably) until ``export_ended``, so
        that a restart after a crash encodes it again (``wanted_exports``)."""
        folder = self.files(session_id).exports
        folder.mkdir(exist_ok=True)
        replace_atomically(folder / f"{Path(name).name}{EXPORT_WANTED}", b"")
        fsync_dir(folder)

    def export_ended(self, session_id: str, name: str) -> None:
        """The export is done, failed or cancelled: no restart encodes it again."""
        (self.files(session_id).exports / f"{Path(name).name}{EXPORT_WANTED}").unlink(missing_ok=True)

    def wanted_exports(self) -> list[tuple[str, str]]:
        """(session id, export name) of exports a crash interrupted, oldest first."""
        found = []
        for marker in self.sessions_dir.glob(f"*/exports/*{EXPORT_WANTED}"):
            session_id = marker.parent.parent.name
            if SESSION_ID_RE.match(session_id) and self._row_exists(session_id):
                found.append((marker.stat().st_mtime, session_id, marker.name.removesuffix(EXPORT_WANTED)))
        return [(session_id, name) for _, session_id, name in sorted(found)]

    def delete_export(self, session_id: str, name: str) -> bool:
        """Remove the session's finished export ``name``; whether there was one."""
        try:
            (self.files(session_id).exports / Path(name).name).unlink()
        except FileNotFoundError:
            return False
        return True

    def open_export(self, session_id: str, name: str) -> tuple[BinaryIO, int] | None:
        path = self.files(session_id).exports / Path(name).name
        try:
            f = open(path, "rb")  # noqa: SIM115 -- the caller closes it
        except (FileNotFoundError, IsADirectoryError):
            return None
        return f, os.fstat(f.fileno()).st_size

    # -- files that are not sessions yet --------------------------------------------------------
    @contextlib.contextmanager
    def incoming_file(self) -> Iterator[tuple[BinaryIO, Path]]:
        """A temporary file for an upload's body (removed afterwards; emptied at start-up)."""
        folder = self.data_dir / UPLOADS_DIR
        folder.mkdir(exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, suffix=".upload")
        path = Path(name)
        try:
            with os.fdopen(fd, "w+b") as f:
                yield f, path
        finally:
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def scratch_dir(self) -> Iterator[Path]:
        """A temporary folder on the data folder's filesystem (an import's remux: moved into
        the session without a copy); removed afterwards, and at start-up after a crash."""
        folder = self.data_dir / SCRATCH_DIR
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            yield Path(tmp)
