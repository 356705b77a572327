"""The gallery as the server manages it: enrolment (a face found and described in each photo,
ingest/analysis/stills.py), listing, removal. Storage is storage/gallery.py.

A descriptor holds the GIL and detection on a large photo takes a while, so the server enrols in
a separate process (one at a time; another request meanwhile is ``busy``), never on its event
loop or in its threads. This object owns that process.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from ingest.analysis.stills import enrol_photos
from ingest.config import Settings
from ingest.exceptions import BadRequestError, CapacityError
from storage.gallery import Gallery, GalleryError, check_name


def check_photo_count(count: int, limit: int) -> None:
    if not count:
        raise BadRequestError("send at least one photo (form field 'file')")
    if count > limit:
        raise BadRequestError(f"{count} photos sent; at most {limit} per request (max_photos_per_request)")


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

    async def add(self, name: str, photos: list[tuple[bytes, str]]) -> dict[str, Any]:
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
        person = await asyncio.to_thread(self.gallery.add, name, enrolled)
        await self.on_change()
        return person

    async def people(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.gallery.people)

    async def remove(self, person: str) -> dict[str, Any]:
        """Remove the person whose id is ``person`` (or, as PROTOCOL v1.1 has it, whose name)."""
        removed = await asyncio.to_thread(self._remove, person)
        await self.on_change()
        return removed

    def _remove(self, person: str) -> dict[str, Any]:
        try:
            return self.gallery.remove(person)
        except GalleryError as exc:
            if not exc.unknown:
                raise
        try:
            found = self.gallery.find(person)
        except GalleryError:
            found = None
        if found is None:
            raise GalleryError(f"the gallery holds no person {person[:100]!r} (neither an id nor a name)", unknown=True)
        return self.gallery.remove(found["id"])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
