"""The gallery of known people, in the index: people, their enrolment photos and one face descriptor
per photo; so every node of a cluster sees one gallery.

    people          id, name as given (NFC), key (one person per key), created_at
    gallery_images  id, person_id, file (the photo, kept by the store), source, box, descriptor
    gallery_state   one row: generation, incremented by every change in the same transaction

People are named by ids in URLs, never by names: any name a person may have can be removed (by
id, or by its name's key, which takes any stored name, also one enrolled before these rules). A
new name is trimmed and NFC-normalised, 1-100 characters of letters, marks, digits, spaces and
``' - . , ( ) & /``, at least one of them a letter or a digit (no "." or ".." alone); its key
(NFKC, casefolded, spaces collapsed: NFKC rather than NFC, so that compatibility forms fold too)
makes "Ada", "ADA" and the fullwidth "Ａｄａ" one person. Names that only look alike ("Аda" with
a Cyrillic А) are different people: ``lookalikes`` finds them so that enrolment can warn. Nothing here computes descriptors
(ingest/analysis/ does); this module stores them. Removing a person deletes their rows and photos.

Readers in other processes (the analysis workers) get the gallery from their server, which reads
``generation()`` (one small query) to notice changes.
"""

from __future__ import annotations

import datetime as _dt
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.database import Connection
from storage.errors import IngestError
from storage.index import Index
from storage.objects import ObjectStore

DESCRIPTOR_SIZE = 128  # dlib's ResNet face descriptor
MAX_NAME_CHARS = 100
NAME_PUNCTUATION = frozenset("'-.,()&/")
# letters that look like Latin ones in other scripts (the usual confusables in names)
_LOOKALIKES = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s",
    "ԁ": "d", "ɡ": "g", "һ": "h", "ӏ": "l", "ո": "n", "ν": "v", "ο": "o", "α": "a", "ρ": "p", "τ": "t",
    "κ": "k", "ι": "i", "ϲ": "c", "ԛ": "q", "ѡ": "w",
})  # fmt: skip


class GalleryError(IngestError, ValueError):
    """A bad name (``bad_request``), or a person the gallery does not hold (``not_found``)."""

    code = "bad_request"
    http_status = 400

    def __init__(self, message: str, unknown: bool = False) -> None:
        super().__init__(message)
        self.unknown = unknown
        if unknown:
            self.code, self.http_status = "not_found", 404


@dataclass(frozen=True)
class Enrolment:
    """One photo of a person: its bytes, how it was called, the face's box and descriptor."""

    data: bytes
    source: str
    extension: str  # ".jpg", ".png", ".webp"
    box: tuple[int, int, int, int]
    descriptor: np.ndarray


def normal_name(name: str) -> str:
    """Trimmed, inner spaces collapsed, NFC."""
    return " ".join(unicodedata.normalize("NFC", name).split())


def check_name(name: object) -> str:
    """A new person's name as stored: trimmed, NFC, 1-100 characters of letters, marks, digits,
    spaces and ``' - . , ( ) & /``, at least one a letter or a digit."""
    if not isinstance(name, str) or not name.strip():
        raise GalleryError("a person needs a name (1-100 characters)")
    name = normal_name(name)
    if len(name) > MAX_NAME_CHARS:
        raise GalleryError(f"the name is {len(name)} characters long; at most {MAX_NAME_CHARS} are allowed")
    for char in name:
        category = unicodedata.category(char)
        if not (category[0] in "LMN" or char == " " or char in NAME_PUNCTUATION):
            shown = char if category[0] not in "CZ" else f"U+{ord(char):04X}"
            raise GalleryError(
                f"the name holds {shown!r}; a name may hold letters, digits, spaces and ' - . , ( ) & /"
            )
    if not any(unicodedata.category(char)[0] in "LN" for char in name):
        raise GalleryError(f"the name {name!r} has no letter or digit; a name needs at least one")
    return name


def name_key(name: str) -> str:
    """One person per key: compatibility forms and case folded ("Ａｄａ", "ADA" and "ada" agree)."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def skeleton(name: str) -> str:
    """The key with lookalike letters of other scripts read as Latin (for warnings only)."""
    return name_key(name).translate(_LOOKALIKES)


@dataclass(frozen=True)
class GalleryMatrix:
    """Every enrolment photo's descriptor (rows) and whose it is, for nearest-neighbour search."""

    names: tuple[str, ...]
    descriptors: np.ndarray  # (n, 128) float64
    person_ids: tuple[str, ...] = ()

    @classmethod
    def empty(cls) -> GalleryMatrix:
        return cls((), np.zeros((0, DESCRIPTOR_SIZE)), ())


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _bump(conn: Connection) -> None:
    updated = conn.execute("UPDATE gallery_state SET generation = generation + 1 WHERE id = 1").rowcount
    if not updated:
        conn.execute("INSERT INTO gallery_state (id, generation) VALUES (1, 1)")


class Gallery:
    """The gallery's rows in ``index`` and its photos in ``images`` (a folder of the data folder),
    and in object storage too when there is one (then any node can show them)."""

    def __init__(self, index: Index, images: Path, objects: ObjectStore | None = None) -> None:
        self.index = index
        self.images = images
        self.objects = objects

    def _photo_key(self, file: str) -> str:
        assert self.objects is not None
        return f"{self.objects.location.prefix}gallery/{Path(file).name}"

    def keep_photo(self, file: str, data: bytes) -> Path:
        """Store an enrolment photo's bytes (before its row: a crash leaves a file, swept at start-up)."""
        self.images.mkdir(parents=True, exist_ok=True)
        path = self.images / Path(file).name
        path.write_bytes(data)
        if self.objects is not None:
            self.objects.put(self._photo_key(file), data)
        return path

    def add(self, name: str, photos: list[Enrolment]) -> dict[str, Any]:
        """Enrol ``photos`` of ``name`` (a new person, or more photos of the person with that
        name's key); returns the person (id, name, images)."""
        name = check_name(name)
        key = name_key(name)
        written: list[Path] = []
        rows = []
        try:
            for photo in photos:
                descriptor = np.asarray(photo.descriptor, dtype="<f8")
                if descriptor.shape != (DESCRIPTOR_SIZE,):
                    raise GalleryError(f"a descriptor has shape {descriptor.shape}, not ({DESCRIPTOR_SIZE},)")
                image_id = uuid.uuid4().hex
                path = self.keep_photo(f"{image_id}{photo.extension}", photo.data)
                written.append(path)
                rows.append((image_id, path.name, photo.source[:200], ",".join(map(str, photo.box)), descriptor.tobytes()))

            def insert(conn: Connection) -> dict[str, Any]:
                person = conn.execute("SELECT id, name FROM people WHERE key = ?", (key,)).fetchone()
                if person is None:
                    person = {"id": uuid.uuid4().hex[:12], "name": name}
                    conn.execute(
                        "INSERT INTO people (id, name, key, created_at) VALUES (?, ?, ?, ?)",
                        (person["id"], name, key, _now()),
                    )
                for image_id, file, source, box, blob in rows:
                    conn.execute(
                        "INSERT INTO gallery_images (id, person_id, file, source, box, descriptor, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (image_id, person["id"], file, source, box, blob, _now()),
                    )
                _bump(conn)
                count = conn.execute(
                    "SELECT COUNT(*) AS n FROM gallery_images WHERE person_id = ?", (person["id"],)
                ).fetchone()
                return {"id": person["id"], "name": person["name"], "images": count["n"] if count else 0}

            return self.index.write(insert)
        except BaseException:
            for path in written:  # the transaction rolled back: no photo without its row
                path.unlink(missing_ok=True)
            raise

    def people(self) -> list[dict[str, Any]]:
        rows = self.index.read(
            lambda c: c.execute(
                "SELECT p.id, p.name, p.created_at, COUNT(i.id) AS images FROM people p"
                " LEFT JOIN gallery_images i ON i.person_id = p.id GROUP BY p.id, p.name, p.created_at"
                " ORDER BY p.key, p.id"
            ).fetchall()
        )
        return [{"id": r["id"], "name": r["name"], "images": r["images"], "created_at": r["created_at"]} for r in rows]

    def person(self, person_id: str) -> dict[str, Any]:
        row = self.index.read(lambda c: c.execute("SELECT id, name FROM people WHERE id = ?", (person_id,)).fetchone())
        if row is None:
            raise GalleryError(f"the gallery holds no person with id {str(person_id)[:40]!r}", unknown=True)
        return dict(row)

    def find(self, name: str) -> dict[str, Any] | None:
        """The person whose name has ``name``'s key (the same person), if any. Any name is
        looked for, also one ``check_name`` refuses now (enrolled before it, or imported)."""
        if not isinstance(name, str):
            return None
        key = name_key(normal_name(name))
        row = self.index.read(lambda c: c.execute("SELECT id, name FROM people WHERE key = ?", (key,)).fetchone())
        return None if row is None else dict(row)

    def lookalikes(self, name: str) -> list[str]:
        """Names of other people that only look like ``name`` (another script's letters)."""
        key, shape = name_key(check_name(name)), skeleton(name)
        rows = self.index.read(lambda c: c.execute("SELECT name, key FROM people").fetchall())
        return sorted(r["name"] for r in rows if r["key"] != key and skeleton(r["name"]) == shape)

    def photos(self, person_id: str) -> list[dict[str, Any]]:
        """The person's enrolment photos (id, file, source, box)."""
        self.person(person_id)
        rows = self.index.read(
            lambda c: c.execute(
                "SELECT id, file, source, box, created_at FROM gallery_images WHERE person_id = ? ORDER BY created_at, id",
                (person_id,),
            ).fetchall()
        )
        return [dict(r) for r in rows]

    def photo_path(self, person_id: str, image_id: str) -> Path:
        for photo in self.photos(person_id):
            if photo["id"] == image_id:
                path = self.images / Path(photo["file"]).name
                if not path.exists() and self.objects is not None:  # enrolled on another node
                    self.images.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(self.objects.get(self._photo_key(photo["file"])))
                return path
        raise GalleryError(f"person {person_id} has no photo {str(image_id)[:40]!r}", unknown=True)

    def remove(self, person_id: str) -> dict[str, Any]:
        """Forget the person: rows and photos; returns the person with ``images_removed``."""
        person = self.person(person_id)

        def delete(conn: Connection) -> list[str]:
            files = [r["file"] for r in conn.execute("SELECT file FROM gallery_images WHERE person_id = ?",
                                                     (person_id,)).fetchall()]  # fmt: skip
            conn.execute("DELETE FROM gallery_images WHERE person_id = ?", (person_id,))
            if conn.execute("DELETE FROM people WHERE id = ?", (person_id,)).rowcount == 0:
                raise GalleryError(f"the gallery holds no person with id {person_id!r}", unknown=True)
            _bump(conn)
            return files

        files = self.index.write(delete)
        for file in files:
            (self.images / Path(file).name).unlink(missing_ok=True)
            if self.objects is not None:
                self.objects.delete_prefix(self._photo_key(file))
        return {**person, "images_removed": len(files)}

    def matrix(self) -> GalleryMatrix:
        rows = self.index.read(
            lambda c: c.execute(
                "SELECT p.id, p.name, i.descriptor FROM gallery_images i JOIN people p ON p.id = i.person_id"
                " ORDER BY p.key, i.id"
            ).fetchall()
        )
        if not rows:
            return GalleryMatrix.empty()
        blob = b"".join(bytes(r["descriptor"]) for r in rows)
        descriptors = np.frombuffer(blob, dtype="<f8").reshape(len(rows), DESCRIPTOR_SIZE).astype(np.float64)
        return GalleryMatrix(tuple(r["name"] for r in rows), descriptors, tuple(r["id"] for r in rows))

    def generation(self) -> int:
        """Changes whenever the gallery does (one small query); 0 before the first change."""
        row = self.index.read(lambda c: c.execute("SELECT generation FROM gallery_state WHERE id = 1").fetchone())
        return int(row["generation"]) if row else 0

    def orphan_objects(self) -> list[str]:
        """Keys of photos in object storage without a row (a crash between the upload of a photo
        and its row; blocking: lists the bucket). Only a node alone may remove them: on a
        cluster, another node's enrolment may be between the two."""
        if self.objects is None:
            return []
        known = {r["file"] for r in self.index.read(lambda c: c.execute("SELECT file FROM gallery_images").fetchall())}
        return [key for key, _ in self.objects.keys(self._photo_key("")) if key.rsplit("/", 1)[-1] not in known]

    def remove_object(self, key: str) -> None:
        assert self.objects is not None
        self.objects.delete_prefix(key)  # one key: photo names are unique ids

    def orphan_photos(self) -> list[Path]:
        """Photo files without a row (a crash between the file and its row): to be removed."""
        if not self.images.is_dir():
            return []
        known = {r["file"] for r in self.index.read(lambda c: c.execute("SELECT file FROM gallery_images").fetchall())}
        return [p for p in self.images.iterdir() if p.is_file() and p.name not in known]


def import_legacy(gallery: Gallery, legacy: Path) -> int:
    """Move a data folder's gallery of before the index (``gallery/gallery.sqlite3``, people by
    name) into the index, once: the file is renamed afterwards. Returns the people imported."""
    import sqlite3
    from contextlib import closing

    if not legacy.exists():
        return 0
    with closing(sqlite3.connect(legacy)) as db:
        people = db.execute("SELECT name, created_at FROM people").fetchall()
        images = db.execute("SELECT id, name, file, source, box, descriptor, created_at FROM images").fetchall()

    def insert(conn: Connection) -> int:
        ids: dict[str, str] = {}
        for name, created in people:
            key = name_key(name)
            row = conn.execute("SELECT id FROM people WHERE key = ?", (key,)).fetchone()
            if row is None:
                row = {"id": uuid.uuid4().hex[:12]}
                conn.execute("INSERT INTO people (id, name, key, created_at) VALUES (?, ?, ?, ?)",
                             (row["id"], name, key, created or _now()))  # fmt: skip
            ids[name] = row["id"]
        for image_id, name, file, source, box, blob, created in images:
            if conn.execute("SELECT 1 AS x FROM gallery_images WHERE id = ?", (image_id,)).fetchone() is None:
                conn.execute(
                    "INSERT INTO gallery_images (id, person_id, file, source, box, descriptor, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (image_id, ids[name], file, source, box, bytes(blob), created or _now()),
                )
        _bump(conn)
        return len(ids)

    count = gallery.index.write(insert)
    try:
        legacy.rename(legacy.with_name(legacy.name + ".imported"))
    except FileNotFoundError:  # another process imported it at the same moment (rows by id: once)
        return 0
    return count
