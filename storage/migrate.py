"""``camingest migrate``: a data folder's sessions (and gallery) copied into another store: a
PostgreSQL index and S3-compatible object storage.

Per session: its rows (session, chunks, init segment, snapshots) are copied into the target
index as they are, its raw stream goes up as one segment of all its chunks (the key names them,
as live segments' do), read back and compared by SHA-256 before ``durable_seq`` says it is
there, and its derived files (recording, landmarks, meta, snapshots) follow. A session already
complete in the target is checked and skipped: an interrupted run is started again and goes on
where it stopped. Nothing of the source is changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from storage.database import Connection
from storage.objects import segment_name
from storage.replication import DERIVED
from storage.store import SessionStore

TABLES = ("chunks", "session_init", "snapshots")


@dataclass
class MigrationReport:
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already complete in the target
    people: int = 0


def _insert(conn: Connection, table: str, row: dict[str, Any]) -> None:
    columns = list(row)
    quoted = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("?" for _ in columns)
    conn.execute(f"INSERT INTO {table} ({quoted}) VALUES ({marks}) ON CONFLICT DO NOTHING",
                 [bytes(v) if isinstance(v, memoryview) else v for v in row.values()])  # fmt: skip


def _rows(store: SessionStore, table: str, where: str = "", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    return store.index.read(lambda c: c.execute(f"SELECT * FROM {table} {where}", params).fetchall())


def complete_in(target: SessionStore, source_row: dict[str, Any]) -> bool:
    rows = _rows(target, "sessions", "WHERE id = ?", (source_row["id"],))
    if not rows:
        return False
    row = rows[0]
    return row["durable_seq"] == source_row["next_seq"] - 1 and row["uploaded_gen"] >= row["changed_gen"] > 0


def copy_session(source: SessionStore, target: SessionStore, session_id: str, progress: Callable[[int], None]) -> None:
    assert target.objects is not None, "the target of a migration is object storage"
    objects = target.objects
    row = _rows(source, "sessions", "WHERE id = ?", (session_id,))[0]
    stream = source.files(session_id).stream
    data = stream.read_bytes()[: row["bytes"]] if stream.exists() else b""
    if len(data) != row["bytes"]:
        raise OSError(f"session {session_id}: its stream holds {len(data)} of its {row['bytes']} acknowledged bytes")
    related = {table: _rows(source, table, "WHERE session_id = ?", (session_id,)) for table in TABLES}
    finalized = source.is_finalized(session_id)

    def insert(conn: Connection) -> None:
        _insert(conn, "sessions", {**row, "durable_seq": -1, "segment_plan": None, "changed_gen": 1,
                                   "uploaded_gen": 0, "finalized": int(finalized)})  # fmt: skip
        for table, rows in related.items():
            for related_row in rows:
                _insert(conn, table, related_row)

    target.index.write(insert)
    if row["next_seq"] > 0:
        key = objects.location.session_key(session_id, segment_name(0, row["next_seq"] - 1))
        objects.put(key, data)
        if hashlib.sha256(objects.get(key)).digest() != hashlib.sha256(data).digest():
            raise OSError(f"session {session_id}: the uploaded segment does not read back as sent")
        target.index.write(lambda c: c.execute("UPDATE sessions SET durable_seq=? WHERE id=?",
                                               (row["next_seq"] - 1, session_id)))  # fmt: skip
    progress(len(data))
    files = source.files(session_id)
    uploads = [(files.root / name, name) for name in DERIVED]
    if files.snapshots.is_dir():
        uploads += [(p, f"snapshots/{p.name}") for p in sorted(files.snapshots.iterdir()) if p.is_file()]
    for path, name in uploads:
        if path.exists():
            local = path.read_bytes()
            key = objects.location.session_key(session_id, name)
            objects.put(key, local)
            if hashlib.sha256(objects.get(key)).digest() != hashlib.sha256(local).digest():
                raise OSError(f"session {session_id}: {name} does not read back as sent")
            progress(len(local))
    target.index.write(lambda c: c.execute("UPDATE sessions SET uploaded_gen=changed_gen WHERE id=?", (session_id,)))


def copy_gallery(source: SessionStore, target: SessionStore) -> int:
    people = _rows(source, "people")
    images = _rows(source, "gallery_images")

    def insert(conn: Connection) -> None:
        for person in people:
            _insert(conn, "people", person)
        for image in images:
            _insert(conn, "gallery_images", image)
        if people:
            conn.execute("UPDATE gallery_state SET generation = generation + 1 WHERE id = 1")
            if conn.execute("SELECT id FROM gallery_state WHERE id = 1").fetchone() is None:
                conn.execute("INSERT INTO gallery_state (id, generation) VALUES (1, 1)")

    target.index.write(insert)
    for image in images:
        path = source.gallery.images / image["file"]
        if path.exists():
            target.gallery.keep_photo(image["file"], path.read_bytes())
    return len(people)


def sizes(source: SessionStore) -> int:
    """Bytes a migration of ``source`` moves (for a progress bar)."""
    total = 0
    for row in _rows(source, "sessions"):
        root = source.files(row["id"]).root
        total += sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0
    return total


def migrate(source: SessionStore, target: SessionStore, progress: Callable[[int], None]) -> MigrationReport:
    report = MigrationReport()
    for row in _rows(source, "sessions", "ORDER BY created_at, id"):
        if complete_in(target, row):
            report.skipped.append(row["id"])
            root = source.files(row["id"]).root
            progress(sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0)
            continue
        copy_session(source, target, row["id"], progress)
        report.copied.append(row["id"])
    report.people = copy_gallery(source, target)
    return report
