"""The session store: one folder per session under the data folder, indexed in SQLite.

Layout (documented in README.md):

    DATA/index.sqlite3                 sessions, chunks, snapshots (WAL)
    DATA/sessions/<id>/stream.webm     the acknowledged chunks, concatenated, as sent
    DATA/sessions/<id>/landmarks.jsonl one JSON line per analysed frame, in index order
    DATA/sessions/<id>/recording.webm  the finalized, seekable recording (after stop)
    DATA/sessions/<id>/snapshots/<snapshot_id>.<ext>

Durability: a chunk's bytes are written and fdatasync'ed into stream.webm first, then its index
row is committed; only then is it acknowledged. A crash between the two leaves bytes past the
indexed end of stream.webm, which ``recover()`` trims, so files and index always agree.
Everything here is blocking; the server calls it from threads.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.errors import UnknownSessionError
from storage.index import Index
from storage.landmarks import LandmarkCounts

SESSION_ID_RE = re.compile(r"\A[0-9]{8}-[0-9]{6}-[0-9a-f]{8}\Z")
SNAPSHOT_ID_RE = re.compile(r"\A[0-9]{6}-[0-9a-f]{6}\Z")
STATES = ("recording", "stopped", "failed")


def validate_session_id(session_id: object) -> str:
    """The id, if it has the server's form; nothing else ever reaches a path."""
    if not isinstance(session_id, str) or not SESSION_ID_RE.match(session_id):
        raise UnknownSessionError(f"unknown session {str(session_id)[:80]!r}")
    return session_id


def new_session_id() -> str:
    now = _dt.datetime.now(_dt.UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _unix(iso: str) -> float:
    return _dt.datetime.fromisoformat(iso).timestamp()  # 3.11 reads the trailing Z


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class SessionPaths:
    root: Path

    @property
    def stream(self) -> Path:
        return self.root / "stream.webm"

    @property
    def landmarks(self) -> Path:
        return self.root / "landmarks.jsonl"

    @property
    def recording(self) -> Path:
        return self.root / "recording.webm"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"


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
    return result


_SUMMARY_SQL = """
SELECT s.*,
       (SELECT COUNT(*) FROM chunks c WHERE c.session_id = s.id) AS n_chunks,
       (SELECT COUNT(*) FROM snapshots p WHERE p.session_id = s.id) AS n_snapshots
FROM sessions s
"""


class SessionStore:
    def __init__(self, data_dir: Path, max_pending_writes: int = 1024) -> None:
        self.data_dir = Path(data_dir)
        self.sessions_dir = self.data_dir / "sessions"
        self.index = Index(self.data_dir / "index.sqlite3", max_pending=max_pending_writes)
        self._lock_fd: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self, recover: bool = True) -> list[str]:
        """Open the index. With ``recover`` (the server: it takes the data folder's lock first,
        as repairs must not race a running server) also repair what a crash may have left;
        returns one line per repair."""
        self.sessions_dir.mkdir(parents=True, exist_ok=True)
        if recover:
            self._lock_fd = os.open(self.data_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                self._lock_fd = None
                raise RuntimeError(f"another camingest server is using {self.data_dir}") from None
        self.index.open()
        return self.recover() if recover else []

    def close(self) -> None:
        self.index.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def recover(self) -> list[str]:
        """Trim stream.webm files to the indexed length (bytes of a chunk that was written but
        never committed, so never acked) and fail sessions whose file lost acked bytes."""
        notes: list[str] = []
        rows = self.index.read(lambda c: c.execute("SELECT id, bytes, state FROM sessions").fetchall())
        for row in rows:
            path = self.paths(row["id"]).stream
            size = path.stat().st_size if path.exists() else 0
            if size > row["bytes"]:
                with open(path, "r+b") as f:
                    f.truncate(row["bytes"])
                    os.fsync(f.fileno())
                notes.append(f"{row['id']}: trimmed {size - row['bytes']} unacknowledged bytes")
            elif size < row["bytes"]:
                message = f"stream.webm has {size} bytes, the index acknowledged {row['bytes']}"
                self.index.write(
                    lambda c, sid=row["id"], m=message: c.execute(
                        "UPDATE sessions SET state='failed', error=? WHERE id=?", (m, sid)
                    )
                )
                notes.append(f"{row['id']}: {message}")
        return notes

    # -- sessions -----------------------------------------------------------------------------
    def paths(self, session_id: str) -> SessionPaths:
        return SessionPaths(self.sessions_dir / validate_session_id(session_id))

    def create(self, mime: str, meta: dict[str, Any]) -> tuple[dict[str, Any], str]:
        session_id, token = new_session_id(), secrets.token_urlsafe(24)
        paths = self.paths(session_id)
        paths.root.mkdir(parents=True)
        paths.stream.touch()
        _fsync_dir(paths.root)
        _fsync_dir(self.sessions_dir)
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
        result["finalized"] = self.paths(session_id).recording.exists()
        return result

    def list_summaries(self) -> list[dict[str, Any]]:
        rows = self.index.read(lambda c: c.execute(_SUMMARY_SQL + " ORDER BY s.created_at DESC, s.id DESC").fetchall())
        return [summary(r, r["n_chunks"], r["n_snapshots"]) for r in rows]

    def set_state(self, session_id: str, state: str, error: str | None = None) -> None:
        assert state in STATES
        stopped_at = utc_now() if state != "recording" else None
        self.index.write(
            lambda c: c.execute(
                "UPDATE sessions SET state=?, error=COALESCE(?, error), stopped_at=COALESCE(stopped_at, ?) WHERE id=?",
                (state, error, stopped_at, session_id),
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

    def unfinalized(self) -> list[str]:
        """Stopped sessions with chunks but no seekable recording.webm (a crash between stop and
        finalize), oldest first."""
        rows = self.index.read(
            lambda c: c.execute("SELECT id FROM sessions WHERE state='stopped' AND bytes>0 ORDER BY created_at").fetchall()
        )
        return [row["id"] for row in rows if not self.paths(row["id"]).recording.exists()]

    def set_landmarks_error(self, session_id: str, message: str) -> None:
        """Filling this session's landmarks cannot complete (its stream does not decode): said in
        its summary, and not tried again at every restart."""
        self.index.write(
            lambda c: c.execute("UPDATE sessions SET landmarks_error=? WHERE id=?", (message, session_id))
        )

    def count_landmarks(self, session_id: str, counts: LandmarkCounts) -> None:
        """Add to the session's landmark counters (not awaited: derived data, group-committed)."""
        self.index.submit(
            lambda c: c.execute(
                "UPDATE sessions SET landmark_frames=landmark_frames+?, face_frames=face_frames+?,"
                " skipped_frames=skipped_frames+? WHERE id=?",
                (counts.frames, counts.with_faces, counts.skipped, session_id),
            )
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
        paths = self.paths(session_id)
        self.index.write(lambda c: c.execute("DELETE FROM sessions WHERE id=?", (session_id,)))
        shutil.rmtree(paths.root, ignore_errors=True)

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
        row = self.index.read(
            lambda c: c.execute(
                "SELECT * FROM snapshots WHERE session_id=? AND snapshot_id=?", (session_id, snapshot_id)
            ).fetchone()
        )
        if row is None:
            raise UnknownSessionError(f"session {session_id} has no snapshot {snapshot_id!r}")
        return dict(row)

    def init_segment(self, session_id: str) -> bytes | None:
        row = self.index.read(
            lambda c: c.execute("SELECT init FROM session_init WHERE session_id=?", (session_id,)).fetchone()
        )
        return None if row is None else bytes(row["init"])

    def chunk_runs(self, session_id: str, row: dict[str, Any]) -> list[tuple[int, bytes]]:
        """The blocks a stored chunk completed, by cluster timecode, read from the locations
        kept in its index row (no re-parsing): with the init segment, ``ingest.webm.build_unit``
        makes them a standalone WebM."""
        return [
            (timecode, b"".join(self.read_stream(session_id, offset, length) for offset, length in spans))
            for timecode, spans in json.loads(row["units"])
        ]

    def read_stream(self, session_id: str, offset: int, length: int) -> bytes:
        with open(self.paths(session_id).stream, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise OSError(f"stream.webm of {session_id} is shorter than its index")
        return data


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(fd: int, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` and flush it to the disk before returning."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
    os.fdatasync(fd)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
