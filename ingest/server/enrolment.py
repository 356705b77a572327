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

from ingest.analysis.stills import enrol_photos
from ingest.config import Settings
from ingest.exceptions import BadRequestError, CapacityError, IngestError, NotFoundError
from storage.gallery import Gallery, GalleryError, check_name


def as_ingest_error(exc: GalleryError) -> IngestError:
    """A gallery refusal with its protocol code: an unknown person is 404, a bad name 400."""
    return NotFoundError(str(exc)) if exc.unknown else BadRequestError(str(exc))


def check_photo_count(count: int, limit: int) -> None:
    if not count:
        raise BadRequestError("send at least one photo (form field 'file')")
    if count > limit:
        raise BadRequestError(f"{count} photos sent; at most {limit} per request (max_photos_per_request)")


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

    async def add(self, name: str, photos: list[tuple[bytes, str]]) -> dict[str, Any]:
        check_photo_count(len(photos), self.settings.max_photos_per_request)
        name = self.checked_name(name)
        if self._busy.locked():
            raise CapacityError("another enrolment is being analysed; try again in a moment")
        async with self._busy:
            if self._pool is None:  # started on first use: the server need not pay for it
                self._pool = await asyncio.to_thread(ProcessPoolExecutor, 1, mp_context=multiprocessing.get_context("spawn"))
            settings = self.settings
            # submitted from a thread: the pool spawns its process on the first submit
            job = await asyncio.to_thread(
                self._pool.submit, enrol_photos, photos, settings.landmark_engine, settings.max_snapshot_pixels,
                settings.max_enrol_analysis_pixels,
            )  # fmt: skip
            enrolled, refusal = await asyncio.wrap_future(job)
        if refusal is not None:
            raise refusal
        count = await asyncio.to_thread(self.gallery.add, name, enrolled)
        return {"name": name, "images": count}

    async def people(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.gallery.people)

    async def remove(self, name: str) -> int:
        try:
            return await asyncio.to_thread(self.gallery.remove, name)
        except GalleryError as exc:
            raise as_ingest_error(exc) from None

    def close(self) -> None:
        """Blocking (it wakes the pool's manager thread through a pipe): run it in a thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
