"""The boundary between the server and its analysis worker processes, in one place.

Messages are frozen dataclasses pickled over a ``multiprocessing`` pipe. Every request but
``Drop`` and ``Exit`` is answered by exactly one reply carrying the request's key; a failure is a
``Failure`` whose ``kind`` says what happened (the stream, a bug, a dead worker), never a text to
be recognised.

    server -> worker                          worker -> server
    AnalyseUnit (a live session's chunk)      Frames (its frames, each landmarked or skipped)
    Flush (end of a live session)             Frames (the decoder's last frames)
    Drop (forget a session)                   -
    SetGallery (who faces are)                -
    AnalyseImage (a snapshot)                 ImageFaces
    RecolourImage (a try-on page's image)     Recoloured (its faces, the recoloured JPEG)
    RunJob (a frame range of a stored stream) JobFrames
    Exit                                      -
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ingest.exceptions import IngestError, InvalidMediaError, UndecodableError
from storage.gallery import GalleryMatrix

if TYPE_CHECKING:
    from ingest.batch.jobs import Job

WORKER_CRASHED = "the analysis worker crashed"


@dataclass(frozen=True)
class Failure:
    kind: Literal["invalid_media", "internal", "crashed"]
    message: str
    frames: int | None = None  # a video that does not decode: the frames that did before it

    def error(self) -> IngestError:
        """The exception a waiting caller gets."""
        if self.kind == "invalid_media":
            return UndecodableError(self.message, self.frames) if self.frames is not None else InvalidMediaError(self.message)
        if self.kind == "crashed":
            return WorkerCrashedError(self.message)
        return IngestError(self.message)


class WorkerCrashedError(IngestError):
    """The worker process died while it had the request in hand (killed, out of memory, a crash
    in native code); a new worker has taken its place."""


CRASHED = Failure("crashed", WORKER_CRASHED)


# -- requests ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AnalyseUnit:
    session_id: str
    seq: int
    unit: bytes
    analyse: bool  # False: decode for the decoder's state, send the frames back as skipped
    decoder: dict[str, Any] = field(default_factory=dict)  # UnitDecoder options of a resumed session


@dataclass(frozen=True)
class Flush:
    session_id: str
    seq: int = -1


@dataclass(frozen=True)
class Drop:
    session_id: str


@dataclass(frozen=True)
class AnalyseImage:
    request_id: int
    path: str
    max_pixels: int

    @property
    def key(self) -> tuple[str, int]:
        """Shared with its reply: what the server tracks while the request is in a worker."""
        return ("image", self.request_id)

    def failed(self, failure: Failure) -> ImageFaces:
        return ImageFaces(self.request_id, [], failure)


@dataclass(frozen=True)
class RecolourImage:
    """An image of the lipstick try-on page (its header checked by the server): found faces,
    lips recoloured, encoded as a JPEG data URL, in one round trip."""

    request_id: int
    data: bytes
    upsample: int
    max_pixels: int  # detection runs on a copy at most this large (points scaled back)

    @property
    def key(self) -> tuple[str, int]:
        return ("recolour", self.request_id)

    def failed(self, failure: Failure) -> Recoloured:
        return Recoloured(self.request_id, [], "", failure)


@dataclass(frozen=True)
class RunJob:
    job_id: int
    job: Job

    @property
    def key(self) -> tuple[str, int]:
        return ("job", self.job_id)

    def failed(self, failure: Failure) -> JobFrames:
        return JobFrames(self.job_id, [], failure)


@dataclass(frozen=True)
class SetGallery:
    """Who faces are identified against from now on (sent at start and on every change)."""

    generation: int
    matrix: GalleryMatrix


@dataclass(frozen=True)
class Exit:
    pass


Request = AnalyseUnit | Flush | Drop | AnalyseImage | RecolourImage | RunJob | SetGallery | Exit


# -- replies -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frames:
    session_id: str
    seq: int
    frames: list[dict[str, Any]]
    failure: Failure | None = None


@dataclass(frozen=True)
class ImageFaces:
    request_id: int
    faces: list[dict[str, Any]]
    failure: Failure | None = None

    @property
    def key(self) -> tuple[str, int]:
        return ("image", self.request_id)


@dataclass(frozen=True)
class Recoloured:
    request_id: int
    faces: list[dict[str, Any]]
    data_url: str  # "data:image/jpeg;base64,...": what the page sets as its <img> src
    failure: Failure | None = None

    @property
    def key(self) -> tuple[str, int]:
        return ("recolour", self.request_id)


@dataclass(frozen=True)
class JobFrames:
    job_id: int
    frames: list[dict[str, Any]]
    failure: Failure | None = None

    @property
    def key(self) -> tuple[str, int]:
        return ("job", self.job_id)


Reply = Frames | ImageFaces | Recoloured | JobFrames


def answered(request: Request) -> bool:
    """Whether the worker sends exactly one reply to ``request``."""
    return isinstance(request, AnalyseUnit | Flush | AnalyseImage | RecolourImage | RunJob)
