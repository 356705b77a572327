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
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from storage import landmarks_meta
from storage.errors import StoreBusyError, UnknownSessionError, UnknownSnapshotError
from storage.files import (
    SNAPSHOT_ID_RE,
    LocalStream,
    SessionFiles,
    StreamWriter,
    fsync_dir,
    replace_atomically,
    replacing,
    validate_session_id,
    write_new_file,
)
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
from storage.records import ChunkRecord, decode_runs, encode_runs

STATES = ("recording", "stopped", "failed")
INDEX_FILE = "index.sqlite3"
LOCK_FILE = "server.lock"
UPLOADS_DIR = "uploads"
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


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def summary(row: sqlite3.Row | dict[str, Any], chunks: int, snapshots: int) -> dict[str, Any]:
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
    meta = json.loads(row["meta"] or "{}")
    if meta:  # what the client said of itself at start (bounded in size there)
        result["meta"] = meta
    if meta.get("imported_from"):  # the user's file name, for the pages
        result["imported_from"] = str(meta["imported_from"])[:200]
    if row["landmarks_error"]:
        result["landmarks_error"] = row["landmarks_error"]
    if row["video"] is not None:  # once its Tracks were read: {"codec", "width", "height"}, null: no video
        result["video"] = json.loads(row["video"])
    return result


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
    def __init__(self, data_dir: Path, max_pending_writes: int = 1024) -> None:
        self.data_dir = Path(data_dir)
        self.sessions_dir = self.data_dir / "sessions"
        self.index = Index(self.data_dir / INDEX_FILE, max_pending=max_pending_writes)
        self._lock_fd: int | None = None

    @staticmethod
    def found(data_dir: Path) -> bool:
        """Whether ``data_dir`` holds camingest data (for the commands that read it)."""
        return (Path(data_dir) / INDEX_FILE).exists()

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self, recover: bool = True, holder: str | None = None) -> list[str]:
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
        return self.recover() if recover else []

    def lock_holder(self) -> str | None:
        """What the process holding the data folder's lock wrote there (command, pid, address)."""
        try:
            text = (self.data_dir / LOCK_FILE).read_bytes()[:400].decode("utf-8", "replace").strip()
        except OSError:
            return None
        return "".join(c for c in text if c.isprintable()) or None

    def close(self) -> None:
        self.index.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def recover(self) -> list[str]:
        """Trim raw streams to the indexed length (bytes of a chunk that was written but never
        committed, so never acked), fail sessions whose file lost acked bytes, and remove what
        unfinished uploads and imports left (never acknowledged: nothing is lost)."""
        notes: list[str] = []
        for leftover in (UPLOADS_DIR, SCRATCH_DIR):
            shutil.rmtree(self.data_dir / leftover, ignore_errors=True)
        rows = self.index.read(lambda c: c.execute("SELECT id, bytes, state FROM sessions").fetchall())
        for row in rows:
            path = self.files(row["id"]).stream
            size = path.stat().st_size if path.exists() else 0
            if size > row["bytes"]:
                with open(path, "r+b") as f:
                    f.truncate(row["bytes"])
                    os.fsync(f.fileno())
                notes.append(f"{row['id']}: trimmed {size - row['bytes']} unacknowledged bytes")
            elif size < row["bytes"]:
                message = f"stream.webm has {size} bytes, the index acknowledged {row['bytes']}"
                self._fail(row["id"], message)
                notes.append(f"{row['id']}: {message}")
        return notes

    def _fail(self, session_id: str, message: str) -> None:
        self.index.write(
            lambda c: c.execute("UPDATE sessions SET state='failed', error=? WHERE id=?", (message, session_id))
        )

    # -- sessions -----------------------------------------------------------------------------
    def files(self, session_id: str) -> SessionFiles:
        return SessionFiles(self.sessions_dir / validate_session_id(session_id))

    def create(self, mime: str, meta: dict[str, Any]) -> tuple[dict[str, Any], str]:
        session_id, token = new_session_id(), secrets.token_urlsafe(24)
        files = self.files(session_id)
        files.root.mkdir(parents=True)
        files.stream.touch()
        fsync_dir(files.root)
        fsync_dir(self.sessions_dir)
        created = utc_now()
        self.index.write(
            lambda c: c.execute(
                "INSERT INTO sessions (id, created_at, state, mime, meta, token_hash) VALUES (?, ?, 'recording', ?, ?, ?)",
                (session_id, created, mime, json.dumps(meta), hash_token(token)),
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
        if where.person is not None:
            self.refresh_digests()  # who appears in sessions whose landmarks changed since
            conditions.append("EXISTS (SELECT 1 FROM session_people p WHERE p.session_id = s.id AND p.name = ?)")
            args.append(where.person)
        if where.meta is not None:
            key, value = where.meta
            if not META_KEY_RE.match(key):
                raise ValueError(f"meta key {key[:80]!r}: letters, digits, _ and - only (1-64)")
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
        if row.get("digest") and row.get("digest_key") == key:
            cached: dict[str, Any] = json.loads(row["digest"])
            return cached
        made = digest(self.files(row["id"]).landmarks)
        people = [(row["id"], p["name"], p["frames"]) for p in made["people"]]

        def save(c: sqlite3.Connection) -> None:
            if not c.execute("UPDATE sessions SET digest=?, digest_key=? WHERE id=?", (json.dumps(made), key, row["id"])).rowcount:
                return  # deleted meanwhile
            c.execute("DELETE FROM session_people WHERE session_id=?", (row["id"],))
            c.executemany("INSERT INTO session_people VALUES (?, ?, ?)", people)

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

    def set_state(self, session_id: str, state: str, error: str | None = None, frames: int | None = None) -> None:
        """``frames``: the session's frame count corrected (a video that stopped decoding: the
        frames that did)."""
        assert state in STATES
        stopped_at = utc_now() if state != "recording" else None
        self.index.write(
            lambda c: c.execute(
                "UPDATE sessions SET state=?, error=COALESCE(?, error), stopped_at=COALESCE(stopped_at, ?),"
                " frames=COALESCE(?, frames) WHERE id=?",
                (state, error, stopped_at, frames, session_id),
            )
        )

    def end_session(self, session_id: str, ended_by: str) -> bool:
        """Mark a recording session stopped, saying what ended it; False if it was not recording."""
        stopped_at = utc_now()
        changed = self.index.write(
            lambda c: c.execute(
                "UPDATE sessions SET state='stopped', ended_by=?, stopped_at=? WHERE id=? AND state='recording'",
                (ended_by, stopped_at, session_id),
            ).rowcount
        )
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
            lambda c: c.execute("SELECT MAX(received_at) FROM chunks WHERE session_id=?", (session_id,)).fetchone()[0]
        )
        return None if value is None else float(value)

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

    def delete(self, session_id: str) -> None:
        files = self.files(session_id)
        self.index.write(lambda c: c.execute("DELETE FROM sessions WHERE id=?", (session_id,)))
        shutil.rmtree(files.root, ignore_errors=True)

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
        with open(self.files(session_id).stream, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise OSError(f"the stored stream of {session_id} is shorter than its index")
        return data

    def stream_writer(self, session_id: str) -> StreamWriter:
        """Where a recording session's chunks are appended (durably), by their offsets."""
        return StreamWriter(self.files(session_id).stream)

    def commit_chunk(self, record: ChunkRecord) -> concurrent.futures.Future[None]:
        """Commit a chunk whose bytes ``stream_writer`` has made durable: its row and the
        session's state after it, in the next group commit. The future resolves once committed
        (an ack may be sent then). Blocks while ``max_pending_writes`` commits wait. A refused
        chunk (``record.error``) was never written: only the session's failure is committed."""
        if record.error is not None:  # refused: not part of the stream, only the session's end
            def fail(conn: sqlite3.Connection) -> None:
                conn.execute(
                    "UPDATE sessions SET state='failed', error=COALESCE(error, ?) WHERE id=?",
                    (record.error, record.session_id),
                )

            return self.index.submit(fail)
        row = (
            record.session_id, record.seq, record.offset, record.size, record.sha256, record.received_at,
            record.t_ms, encode_runs(record.runs), record.frames_before, record.frames, record.keyframe,
        )  # fmt: skip
        reader_state = json.dumps(record.reader_state)

        def commit(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO chunks VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
            conn.execute(
                # a session whose video stopped decoding keeps the count that decoded (set_state)
                "UPDATE sessions SET next_seq=?, bytes=?, frames=CASE WHEN state='failed' THEN frames ELSE ? END,"
                " first_ts_ms=?, last_ts_ms=?, reader_state=?, video=COALESCE(?, video) WHERE id=?",
                (
                    record.seq + 1, record.offset + record.size, record.frames_before + record.frames,
                    record.first_ts_ms, record.last_ts_ms, reader_state, record.video, record.session_id,
                ),
            )  # fmt: skip
            if record.init is not None:
                conn.execute("INSERT OR REPLACE INTO session_init VALUES (?, ?)", (record.session_id, record.init))

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
        length = self.get_row(session_id)["bytes"]
        return LocalStream(str(self.files(session_id).stream), length)

    def open_stream(self, session_id: str) -> tuple[BinaryIO, int]:
        """The raw stream opened for reading, and its acknowledged length."""
        length = self.get_row(session_id)["bytes"]
        return open(self.files(session_id).stream, "rb"), length

    # -- the seekable recording -----------------------------------------------------------------
    def is_finalized(self, session_id: str) -> bool:
        return self.files(session_id).recording.exists()

    @contextlib.contextmanager
    def recording_target(self, session_id: str) -> Iterator[Path]:
        """A temporary path to write the seekable recording into; it becomes the session's
        recording (atomically) when the block ends without an error."""
        with replacing(self.files(session_id).recording) as tmp:
            yield tmp

    def install_recording(self, session_id: str, path: Path) -> None:
        """Make a finished file (an import's remux, on this filesystem) the session's recording."""
        os.replace(path, self.files(session_id).recording)

    def open_recording(self, session_id: str) -> tuple[BinaryIO, int] | None:
        """The finalized recording and its size, or None before it exists."""
        path = self.files(session_id).recording
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
        files = self.files(session_id)
        files.snapshots.mkdir(exist_ok=True)
        number = self.index.read(
            lambda c: c.execute("SELECT COUNT(*) FROM snapshots WHERE session_id=?", (session_id,)).fetchone()[0]
        )
        snapshot_id = f"{number:06d}-{secrets.token_hex(3)}"
        write_new_file(files.snapshot(snapshot_id, mime), data)
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
        return str(self.files(session_id).snapshot(snapshot_id, row["mime"]))

    def open_snapshot(self, session_id: str, snapshot_id: str) -> tuple[BinaryIO, int, str]:
        """The stored image opened for reading, its size and its type."""
        row = self.snapshot_row(session_id, snapshot_id)
        f = open(self.files(session_id).snapshot(snapshot_id, row["mime"]), "rb")  # noqa: SIM115
        return f, row["bytes"], row["mime"]

    def write_snapshot_landmarks(self, session_id: str, snapshot_id: str, faces: list[dict[str, Any]]) -> None:
        replace_atomically(
            self.files(session_id).snapshot_landmarks(snapshot_id), json.dumps({"faces": faces}, allow_nan=False).encode()
        )

    def snapshot_landmarks(self, session_id: str, snapshot_id: str) -> bytes | None:
        """``{"faces": [...]}`` as stored, or None while the snapshot is not analysed."""
        self.snapshot_row(session_id, snapshot_id)
        try:
            return self.files(session_id).snapshot_landmarks(snapshot_id).read_bytes()
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

    def stored_landmark_frames(self, session_id: str) -> int:
        """Frames with a stored result (a torn last line, from a crash mid-append, is cut)."""
        return count_frames(self.files(session_id).landmarks)

    def scan_landmarks(self, session_id: str, total: int) -> tuple[list[int], LandmarkCounts]:
        """Frame indices in [0, total) without a result or with a skipped one, and the counters."""
        return scan(self.files(session_id).landmarks, total)

    def landmarks_rewrite(self, session_id: str) -> LandmarkRewrite:
        """A rewrite of some frame ranges (unopened: use ``with`` or ``.__enter__()``)."""
        return LandmarkRewrite(self.files(session_id).landmarks)

    def landmark_tail(self, session_id: str) -> LandmarkTail:
        return LandmarkTail(self.files(session_id).landmarks)

    def landmarks_json(self, session_id: str) -> bytes:
        """``{"session_id", "frames": [...]}`` in index order: the stored lines already are the
        frames' JSON, joined without re-encoding."""
        self.get_row(session_id)
        path = self.files(session_id).landmarks
        lines = path.read_bytes().splitlines() if path.exists() else []
        body = b",".join(line for line in lines if line.endswith(b"}"))
        return b'{"session_id":' + json.dumps(session_id).encode() + b',"frames":[' + body + b"]}"

    def landmarks_meta(self, session_id: str) -> dict[str, Any] | None:
        return landmarks_meta.read(self.files(session_id).landmarks_meta)

    def start_landmarks_meta(self, session_id: str, meta: dict[str, Any]) -> None:
        """Record how live analysis makes this session's landmarks (kept if already recorded)."""
        landmarks_meta.write_if_absent(self.files(session_id).landmarks_meta, meta)

    def write_landmarks_meta(self, session_id: str, meta: dict[str, Any]) -> None:
        landmarks_meta.write(self.files(session_id).landmarks_meta, meta)

    def update_landmarks_meta(self, session_id: str, **changes: Any) -> None:
        landmarks_meta.update(self.files(session_id).landmarks_meta, **changes)

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
        return [(p.name, p.stat().st_size) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.endswith(".tmp")]

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
