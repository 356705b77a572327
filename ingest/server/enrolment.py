"""The gallery as the server manages it: enrolment (a face found and described in each photo,
ingest/analysis/stills.py), listing, removal. Storage is storage/gallery.py.

A descriptor holds the GIL and detection on a large photo takes a while, so the server enrols in
a separate process (one at a time; another request meanwhile is ``busy``), never on its event
loop or in its threads. This object owns that process.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from ingest.analysis.identity import distances_by_name
from ingest.analysis.stills import enrol_photos
from ingest.config import Settings
from ingest.exceptions import BadRequestError, CapacityError, IngestError, LookAlikeError, NotFoundError
from storage.gallery import Enrolment, Gallery, GalleryError, check_name


def as_ingest_error(exc: GalleryError) -> IngestError:
    """A gallery refusal with its protocol code: an unknown person is 404, a bad name 400."""
    return NotFoundError(str(exc)) if exc.unknown else BadRequestError(str(exc))


def check_photo_count(count: int, limit: int) -> None:
    if not count:
        raise BadRequestError("send at least one photo (form field 'file')")
    if count > limit:
        raise BadRequestError(f"{count} photos sent; at most {limit} per request (max_photos_per_request)")


def check_look_alikes(gallery: Gallery, name: str, photos: list[Enrolment], threshold: float, how: str) -> None:
    """Refuse (``LookAlikeError``) an enrolment that would silently merge or split people: a
    new person whose face matches someone already enrolled (recordings would name either), or
    a name already taken by a face this one does not match (two people, one name). More photos
    of a person that match them pass. ``how``: what the client does to confirm (blocking: the
    gallery is read)."""
    matrix = gallery.matrix()
    for photo in photos:
        distances = distances_by_name(matrix, photo.descriptor)
        own = distances.get(name)
        if own is not None and own <= threshold:
            continue  # another photo of the same person
        near = sorted((d, other) for other, d in distances.items() if other != name and d <= threshold)
        matches: list[dict[str, object]] = [{"name": other, "distance": d} for d, other in near]
        same_name: dict[str, object] | None = None if own is None else {"name": name, "distance": own}
        if near:
            distance, other = near[0]
            raise LookAlikeError(
                f"this face looks like {other} (distance {distance:.2f}, a match below {threshold:g}): enrolled as "
                f"{name} it would be named either; add it to {other}, or {how} to enrol a new person anyway",
                matches, same_name,
            )  # fmt: skip
        if own is not None:
            raise LookAlikeError(
                f"the gallery already holds {name}, whose photos do not look like this face (distance {own:.2f}, "
                f"more than {threshold:g}): two people would share one name; choose another name, or {how} to add "
                f"it to {name} anyway",
                matches, same_name,
            )  # fmt: skip


class EnrolmentService:
    def __init__(self, settings: Settings) -> None:
        self.gallery = Gallery(Path(settings.data_dir))
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self._busy = asyncio.Lock()

    def checked_name(self, name: object) -> str:
        """No I/O: on the loop."""
        try:
            return check_name(name)
        except GalleryError as exc:
            raise as_ingest_error(exc) from None

    async def add(self, name: str, photos: list[tuple[bytes, str]], confirm: bool = False) -> dict[str, Any]:
        """Enrol ``photos`` of ``name``; one that would merge or split people is refused with
        the match (409) unless ``confirm``."""
        check_photo_count(len(photos), self.settings.max_photos_per_request)
        name = self.checked_name(name)
        if self._busy.locked():
            raise CapacityError("another enrolment is being analysed; try again in a moment")
        async with self._busy:
            if self._pool is None:  # started on first use: the server need not pay for it
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            loop = asyncio.get_running_loop()
            settings = self.settings
            enrolled, refusal = await loop.run_in_executor(
                self._pool, enrol_photos, photos, settings.landmark_engine, settings.max_snapshot_pixels,
                settings.max_enrol_analysis_pixels, settings.descriptor_engine,
            )  # fmt: skip
        if refusal is not None:
            raise refusal
        if not confirm:
            threshold = self.settings.identity_threshold
            await asyncio.to_thread(check_look_alikes, self.gallery, name, enrolled, threshold, "send confirm=1")
        count = await asyncio.to_thread(self.gallery.add, name, enrolled)
        return {"name": name, "images": count}

    async def people(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.gallery.people)

    async def photo(self, name: str) -> tuple[bytes, str]:
        """The person's first photo (as uploaded) and its type."""
        try:
            data, extension, _ = await asyncio.to_thread(self.gallery.photo, name)
        except GalleryError as exc:
            raise as_ingest_error(exc) from None
        return data, {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}.get(extension, "image/jpeg")

    async def remove(self, name: str) -> int:
        try:
            return await asyncio.to_thread(self.gallery.remove, name)
        except GalleryError as exc:
            raise as_ingest_error(exc) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
