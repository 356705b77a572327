"""The gallery as the server manages it: enrolment (a face found and described in each photo,
ingest/analysis/stills.py), listing, removal. Storage is storage/gallery.py.

A descriptor holds the GIL and detection on a large photo takes a while, so the server enrols in
a separate process (one at a time; another request meanwhile is ``busy``), never on its event
loop or in its threads. This object owns that process. The one slot is taken before a request's
body is read (``slot``): a request that would wait is answered ``busy`` without its photos
being received, so parallel enrolments cost one body's memory at most (``max_enrol_bytes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ingest.analysis.identity import distances_by_name
from ingest.analysis.stills import enrol_photos
from ingest.background import exit_with_parent
from ingest.config import Settings
from ingest.exceptions import BadRequestError, CapacityError, HelperCrashedError, LookAlikeError
from storage.gallery import Enrolment, Gallery, GalleryError, check_name

log = logging.getLogger("camingest")


def check_photo_count(count: int, limit: int) -> None:
    if not count:
        raise BadRequestError("send at least one photo (form field 'file')")
    if count > limit:
        raise BadRequestError(f"{count} photos sent; at most {limit} per request (max_photos_per_request)")


def check_look_alikes(gallery: Gallery, name: str, photos: list[Enrolment], threshold: float, how: str) -> None:
    """Refuse (``LookAlikeError``) an enrolment that would silently merge or split people: a
    new person whose face matches someone already enrolled (recordings would name either), or
    a name already taken by a face this one does not match (two people, one name), or a new
    name that only looks like an enrolled one ("Аda" with a Cyrillic А beside "Ada": a removal
    or a filter by the one misses the other). More photos of a person that match them pass.
    ``how``: what the client does to confirm (blocking: the gallery is read)."""
    matrix = gallery.matrix()
    known = gallery.find(name)
    name = known["name"] if known is not None else name  # as enrolled: "ADA" adds to "Ada"
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
    similar = gallery.lookalikes(name) if known is None else []
    if similar:
        foreign = ", ".join(f"{c} ({unicodedata.name(c, f'U+{ord(c):04X}').lower()})" for c in dict.fromkeys(name)
                            if c.isalpha() and not unicodedata.name(c, "").startswith("LATIN"))  # fmt: skip
        raise LookAlikeError(
            f"the name {name} looks like {similar[0]}, who is enrolled, but is another name"
            f"{f' (it holds {foreign})' if foreign else ''}: a search or a removal by one would miss the other; "
            f"choose another name, or {how} to enrol {name} as another person",
            [], None, similar,
        )  # fmt: skip


class EnrolmentService:
    def __init__(self, settings: Settings, gallery: Gallery, on_change: Callable[[], Awaitable[None]]) -> None:
        self.gallery = gallery
        self.settings = settings
        self.on_change = on_change  # the analysis workers get the new gallery before we answer
        self._pool: ProcessPoolExecutor | None = None
        self._busy = asyncio.Lock()

    def checked_name(self, name: object) -> str:
        """No I/O: on the loop."""
        return check_name(name)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """The one enrolment slot, for receiving a request's photos and analysing them; ``busy``
        at once if it is taken (nothing of the request is read then)."""
        if self._busy.locked():
            raise CapacityError("another enrolment is being received or analysed (one runs at a time); try again in a moment")
        async with self._busy:
            yield

    async def add(self, name: str, photos: list[tuple[bytes, str]], confirm: bool = False) -> dict[str, Any]:
        """Enrol ``photos`` of ``name`` (in the ``slot``, taken by the caller); one that would
        merge or split people is refused with the match (409) unless ``confirm``."""
        check_photo_count(len(photos), self.settings.max_photos_per_request)
        name = self.checked_name(name)
        assert self._busy.locked(), "enrolments run in the slot"
        enrolled, refusal = await self._analyse(photos)
        if refusal is not None:
            raise refusal
        if not confirm:
            threshold = self.settings.identity_threshold
            await asyncio.to_thread(check_look_alikes, self.gallery, name, enrolled, threshold, "send confirm=1")
        person = await asyncio.to_thread(self.gallery.add, name, enrolled)
        await self.on_change()
        return person

    async def _analyse(self, photos: list[tuple[bytes, str]]) -> tuple[list[Enrolment], Any]:
        """``enrol_photos`` in the enrolment process. A process that died (killed, out of
        memory, a crash in native code) breaks its pool: a new one is started and the photos
        are tried once more there; a second death answers ``busy`` (a new process is ready)."""
        settings = self.settings
        for attempt in (1, 2):
            if self._pool is None:  # started on first use: the server need not pay for it
                self._pool = await asyncio.to_thread(
                    ProcessPoolExecutor, 1, mp_context=multiprocessing.get_context("spawn"), initializer=exit_with_parent
                )  # fmt: skip
            try:
                # submitted from a thread: the pool spawns its process on the first submit
                job = await asyncio.to_thread(
                    self._pool.submit, enrol_photos, photos, settings.landmark_engine, settings.max_snapshot_pixels,
                    settings.max_enrol_analysis_pixels, settings.descriptor_engine,
                )  # fmt: skip
                return await asyncio.wrap_future(job)
            except BrokenProcessPool:
                log.warning("enrolment: its process died; a new one is started (attempt %d of 2)", attempt)
                broken, self._pool = self._pool, None
                await asyncio.to_thread(broken.shutdown, False, cancel_futures=True)
        raise HelperCrashedError("the enrolment process died twice while analysing these photos; "
                                 "a new one is ready: try again")  # fmt: skip

    async def people(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.gallery.people)

    async def photo(self, person: str) -> tuple[bytes, str]:
        """The first photo (as uploaded) of the person whose id (or name) is ``person``, and its type."""
        data, extension = await asyncio.to_thread(self._photo, person)
        return data, {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}.get(extension, "image/jpeg")

    def _photo(self, person: str) -> tuple[bytes, str]:
        found = self._find(person)
        photos = self.gallery.photos(found["id"])
        if not photos:
            raise GalleryError(f"{found['name']} has no photo", unknown=True)
        path = self.gallery.photo_path(found["id"], photos[0]["id"])
        return path.read_bytes(), path.suffix

    def _find(self, person: str) -> dict[str, Any]:
        """The person whose id is ``person``, else whose name has its key."""
        try:
            return self.gallery.person(person)
        except GalleryError as exc:
            if not exc.unknown:
                raise
        try:
            found = self.gallery.find(person)
        except GalleryError:
            found = None
        if found is None:
            raise GalleryError(f"the gallery holds no person {person[:100]!r} (neither an id nor a name)", unknown=True)
        return found

    async def remove(self, person: str) -> dict[str, Any]:
        """Remove the person whose id is ``person`` (or, as PROTOCOL v1.1 has it, whose name)."""
        removed = await asyncio.to_thread(lambda: self.gallery.remove(self._find(person)["id"]))
        await self.on_change()
        return removed

    def close(self) -> None:
        """Blocking (it wakes the pool's manager thread through a pipe): run it in a thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
