"""The gallery as the server and the command line manage it: enrolment (a face found and
described in each photo), listing, removal. Storage is storage/gallery.py; descriptors are
ingest/identity.py.

A descriptor holds the GIL for ~20-150 ms and detection on a large photo for more, so the
server enrols in a separate process (one at a time; another request meanwhile is ``busy``),
never on its event loop or in its threads.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from ingest.exceptions import (
    BadRequestError,
    CapacityError,
    IngestError,
    InvalidMediaError,
    NotFoundError,
    TooLargeError,
)
from storage.gallery import Enrolment, Gallery, GalleryError, check_name

MAX_PHOTOS_PER_REQUEST = 10


def enrol_photos(
    photos: list[tuple[bytes, str]], engine: str, max_pixels: int
) -> tuple[list[Enrolment], IngestError | None]:
    """Each photo's face (all or nothing): the enrolments, or the first refusal."""
    from ingest.identity import enrolment

    out = []
    for data, source in photos:
        try:
            out.append(enrolment(data, source, engine=engine, max_pixels=max_pixels))
        except (InvalidMediaError, TooLargeError) as exc:
            return [], exc
    return out, None


def as_ingest_error(exc: GalleryError) -> IngestError:
    """A gallery refusal with its protocol code: an unknown person is 404, a bad name 400."""
    return NotFoundError(str(exc)) if exc.unknown else BadRequestError(str(exc))


class GalleryService:
    def __init__(self, data_dir: Path, engine: str, max_pixels: int) -> None:
        self.gallery = Gallery(data_dir)
        self.engine = engine
        self.max_pixels = max_pixels  # declared by a photo's header (max_snapshot_pixels)
        self._pool: ProcessPoolExecutor | None = None
        self._busy = asyncio.Lock()

    async def add(self, name: str, photos: list[tuple[bytes, str]]) -> dict[str, Any]:
        if not photos:
            raise BadRequestError("send at least one photo (form field 'file')")
        if len(photos) > MAX_PHOTOS_PER_REQUEST:
            raise BadRequestError(f"{len(photos)} photos sent; at most {MAX_PHOTOS_PER_REQUEST} per request")
        try:
            name = check_name(name)  # no I/O: on the loop
        except GalleryError as exc:
            raise as_ingest_error(exc) from None
        if self._busy.locked():
            raise CapacityError("another enrolment is being analysed; try again in a moment")
        async with self._busy:
            if self._pool is None:  # started on first use: the server need not pay for it
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            loop = asyncio.get_running_loop()
            enrolled, refusal = await loop.run_in_executor(self._pool, enrol_photos, photos, self.engine, self.max_pixels)
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
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

