"""The gallery of known people: names, their enrolment photos and one face descriptor per photo.

    DATA/gallery/gallery.sqlite3    people (name) and images (file, descriptor, face box)
    DATA/gallery/images/<id>.<ext>  the enrolment photos as uploaded
    DATA/gallery/generation         rewritten (atomically) on every change

Readers in other processes (the analysis workers) notice a change by the generation file's
identity (``os.replace`` gives it a new inode and mtime) with one ``stat`` and reload the
descriptors then, so a gallery change applies to the next frames without a restart.
Removing a person deletes their rows and their photos. Nothing here computes descriptors
(ingest/analysis/identity.py does); this module only stores them.
"""

from __future__ import annotations

import os
import sqlite3
import unicodedata
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DESCRIPTOR_SIZE = 128  # dlib's ResNet face descriptor
MAX_NAME_CHARS = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS people (
    name       TEXT PRIMARY KEY,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS images (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL REFERENCES people(name) ON DELETE CASCADE,
    file       TEXT NOT NULL,          -- under images/
    source     TEXT NOT NULL,          -- the file name it was uploaded as
    box        TEXT NOT NULL,          -- the face in it: x,y,w,h
    descriptor BLOB NOT NULL,          -- 128 float64, little-endian
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
"""


class GalleryError(ValueError):
    """A bad name, or a person the gallery does not hold (``unknown`` is True then)."""

    def __init__(self, message: str, unknown: bool = False) -> None:
        super().__init__(message)
        self.unknown = unknown


@dataclass(frozen=True)
class Enrolment:
    """One photo of a person: its bytes, how it was called, the face's box and descriptor."""

    data: bytes
    source: str
    extension: str  # ".jpg", ".png", ".webp"
    box: tuple[int, int, int, int]
    descriptor: np.ndarray


def check_name(name: object) -> str:
    """A person's name as stored: trimmed, 1-100 characters, no control characters."""
    if not isinstance(name, str) or not name.strip():
        raise GalleryError("a person needs a name (1-100 characters)")
    name = unicodedata.normalize("NFC", name.strip())
    if len(name) > MAX_NAME_CHARS:
        raise GalleryError(f"the name is {len(name)} characters long; at most {MAX_NAME_CHARS} are allowed")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise GalleryError("the name holds control characters; use letters, digits, spaces and punctuation")
    return name


@dataclass(frozen=True)
class GalleryMatrix:
    """Every enrolment photo's descriptor (rows) and whose it is, for nearest-neighbour search."""

    names: tuple[str, ...]
    descriptors: np.ndarray  # (n, 128) float64

    @classmethod
    def empty(cls) -> GalleryMatrix:
        return cls((), np.zeros((0, DESCRIPTOR_SIZE)))


class Gallery:
    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "gallery"
        self.images = self.root / "images"
        self.db_path = self.root / "gallery.sqlite3"
        self.generation_path = self.root / "generation"

    def exists(self) -> bool:
        """Whether anyone was ever enrolled here (the gallery's file exists)."""
        return self.db_path.exists()

    def _connect(self) -> sqlite3.Connection:
        self.images.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.db_path, timeout=10)
        db.execute("PRAGMA foreign_keys = ON")
        db.executescript(_SCHEMA)
        return db

    def _changed(self) -> None:
        tmp = self.generation_path.with_suffix(".tmp")
        tmp.write_text(uuid.uuid4().hex)
        os.replace(tmp, self.generation_path)

    def add(self, name: str, photos: list[Enrolment]) -> int:
        """Enrol ``photos`` of ``name`` (a new person, or more photos of one); returns how many
        photos the person has now."""
        name = check_name(name)
        written: list[Path] = []
        try:
            with closing(self._connect()) as db, db:
                db.execute("INSERT OR IGNORE INTO people (name) VALUES (?)", (name,))
                for photo in photos:
                    image_id = uuid.uuid4().hex
                    path = self.images / f"{image_id}{photo.extension}"
                    path.write_bytes(photo.data)
                    written.append(path)
                    descriptor = np.asarray(photo.descriptor, dtype="<f8")
                    if descriptor.shape != (DESCRIPTOR_SIZE,):
                        raise GalleryError(f"a descriptor has shape {descriptor.shape}, not ({DESCRIPTOR_SIZE},)")
                    db.execute(
                        "INSERT INTO images (id, name, file, source, box, descriptor) VALUES (?, ?, ?, ?, ?, ?)",
                        (image_id, name, path.name, photo.source[:200], ",".join(map(str, photo.box)), descriptor.tobytes()),
                    )
                count = db.execute("SELECT COUNT(*) FROM images WHERE name = ?", (name,)).fetchone()[0]
        except BaseException:
            for path in written:  # the transaction rolled back: no photo without its row
                path.unlink(missing_ok=True)
            raise
        self._changed()
        return count

    def people(self) -> list[dict[str, object]]:
        if not self.db_path.exists():
            return []
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT p.name, COUNT(i.id), p.created_at FROM people p LEFT JOIN images i ON i.name = p.name "
                "GROUP BY p.name ORDER BY p.name COLLATE NOCASE"
            ).fetchall()
        return [{"name": name, "images": count, "created_at": created} for name, count, created in rows]

    def photo(self, name: str) -> tuple[bytes, str, tuple[int, int, int, int]]:
        """The person's first enrolment photo as uploaded, its extension and the face's box."""
        name = check_name(name)
        row = None
        if self.db_path.exists():
            with closing(self._connect()) as db:
                row = db.execute(
                    "SELECT file, box FROM images WHERE name = ? ORDER BY created_at, id LIMIT 1", (name,)
                ).fetchone()
        if row is None:
            raise GalleryError(f"the gallery holds no person named {name!r}", unknown=True)
        file, box = row
        x, y, w, h = (int(v) for v in box.split(","))
        return (self.images / file).read_bytes(), Path(file).suffix, (x, y, w, h)

    def remove(self, name: str) -> int:
        """Forget ``name``: rows and photos; returns how many photos were deleted."""
        name = check_name(name)
        if not self.db_path.exists():
            raise GalleryError(f"the gallery holds no person named {name!r}", unknown=True)
        with closing(self._connect()) as db, db:
            files = [row[0] for row in db.execute("SELECT file FROM images WHERE name = ?", (name,))]
            if db.execute("DELETE FROM people WHERE name = ?", (name,)).rowcount == 0:
                raise GalleryError(f"the gallery holds no person named {name!r}", unknown=True)
        for file in files:
            (self.images / file).unlink(missing_ok=True)
        self._changed()
        return len(files)

    def matrix(self) -> GalleryMatrix:
        if not self.db_path.exists():
            return GalleryMatrix.empty()
        with closing(self._connect()) as db:
            rows = db.execute("SELECT name, descriptor FROM images ORDER BY name, id").fetchall()
        if not rows:
            return GalleryMatrix.empty()
        descriptors = np.frombuffer(b"".join(blob for _, blob in rows), dtype="<f8").reshape(len(rows), DESCRIPTOR_SIZE)
        return GalleryMatrix(tuple(name for name, _ in rows), descriptors.astype(np.float64))

    def generation(self) -> tuple[int, int] | None:
        """Changes whenever the gallery does (one stat); None before the first enrolment."""
        try:
            st = self.generation_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns)
