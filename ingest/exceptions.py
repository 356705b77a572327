"""Errors of camingest.

Every error carries the PROTOCOL.md code that a client is sent for it and the HTTP status that
carries it, so the Socket.IO and HTTP layers never guess. Where a built-in fits, the error also
inherits it (PyAV's habit: ``InvalidDataError(FFmpegError, ValueError)``), so generic callers can
catch ``ValueError``.
"""

from __future__ import annotations

import errno
from typing import Any

# the base and the store's own errors are defined below ingest, so that storage raises members
# of this same family without importing ingest (re-exported here)
from storage.errors import IngestError as IngestError
from storage.errors import StoreBusyError as StoreBusyError
from storage.errors import UnknownSessionError as UnknownSessionError
from storage.errors import UnknownSnapshotError as UnknownSnapshotError


class BadRequestError(IngestError, ValueError):
    code = "bad_request"
    http_status = 400


class UnauthorizedError(IngestError, PermissionError):
    """No (or a wrong) access token or session token."""

    code = "unauthorized"
    http_status = 401


class ForbiddenOriginError(UnauthorizedError):
    """A state-changing request from another site's page (CSRF): refused whatever it carries."""

    http_status = 403


class RoleError(UnauthorizedError):
    """A valid token whose role (or grants) does not allow this route or event (HTTP 403)."""

    http_status = 403


class MisdirectedError(IngestError):
    """A Host header the server is not meant to be reached by (DNS rebinding)."""

    code = "misdirected"
    http_status = 421


class NotFoundError(IngestError, LookupError):
    """Something other than a session, chunk or snapshot does not exist (a gallery person, an
    export not made yet)."""

    code = "not_found"
    http_status = 404


class UnknownChunkError(IngestError, LookupError):
    """The session exists; that chunk seq does not (HTTP 404)."""

    code = "unknown_chunk"
    http_status = 404


class GapError(IngestError):
    code = "gap"
    http_status = 409

    def __init__(self, message: str, next_seq: int) -> None:
        super().__init__(message)
        self.next_seq = next_seq


class ConflictError(IngestError):
    code = "conflict"
    http_status = 409


class LookAlikeError(ConflictError):
    """An enrolment that would merge or split people: the face matches someone else, or the name
    belongs to a face this one does not match. Nothing was enrolled; the client may confirm.
    ``matches``: the other people within the threshold; ``same_name``: the distance to the
    person of that name, when their photos do not match; ``lookalike_names``: people whose names
    only look like this one (letters of another script: "Аda" and "Ada")."""

    def __init__(
        self, message: str, matches: list[dict[str, object]], same_name: dict[str, object] | None,
        lookalike_names: list[str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.matches = matches
        self.same_name = same_name
        self.lookalike_names = lookalike_names or []

    def to_dict(self) -> dict[str, Any]:
        result = {**super().to_dict(), "matches": self.matches}
        if self.same_name is not None:
            result["same_name"] = self.same_name
        if self.lookalike_names:
            result["lookalike_names"] = self.lookalike_names
        return result


class TooLargeError(IngestError, ValueError):
    code = "too_large"
    http_status = 413


class UnsupportedError(IngestError):
    code = "unsupported"
    http_status = 415


class InvalidMediaError(IngestError, ValueError):
    """The bytes are not a stream we can read (not WebM, corrupt EBML, undecodable)."""

    code = "invalid_media"
    http_status = 422


class UndecodableError(InvalidMediaError):
    """The video's decoder refused a frame (or gave fewer frames than the headers say): the
    session fails, wherever it was found (live, fill, reprocess). ``frames``: the frames that
    decoded before it, the session's count from then on."""

    def __init__(self, message: str, frames: int | None = None) -> None:
        super().__init__(message)
        self.frames = frames


class SessionClosedError(IngestError):
    code = "session_closed"
    http_status = 409


class CapacityError(IngestError):
    """A documented limit (open sessions overall or per connection, uploads, previews) is
    reached; nothing was stored; the client may retry later (HTTP 503)."""

    code = "busy"
    http_status = 503
    retry_after_s = 5  # HTTP answers say when to try again (Retry-After)


class HelperCrashedError(CapacityError):
    """A helper process of the server (the enrolment process) died while it had the request in
    hand, twice (once it is replaced and the request tried again); a new one is ready."""


class UploadTooSlowError(IngestError, TimeoutError):
    """An upload's body did not keep the documented pace; its slot is freed (HTTP 408)."""

    code = "timeout"
    http_status = 408


class StorageFullError(IngestError, OSError):
    """The disk is full: nothing was stored or acknowledged; retry later (HTTP 507)."""

    code = "storage_full"
    http_status = 507


def storage_error(exc: BaseException, what: str) -> IngestError:
    """The client's error for a failed write of ``what``: ``storage_full`` when the disk is full
    (ENOSPC, EDQUOT: the index says so too), else ``internal`` naming the cause, never the path."""
    full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
    if full:
        return StorageFullError(f"the server's disk is full: the {what} was not stored; retry later")
    return IngestError(f"the server could not store the {what} (an I/O error on its disk); retry later")


class ModelError(IngestError, ValueError):
    """A model file (dlib's landmark model) is missing, truncated or not what it should be. An
    operator's problem, not a client's: clients see ``internal``; the message names the file."""


class EngineUnavailableError(IngestError, RuntimeError):
    """The configured landmark engine cannot run here (numba missing or unsupported)."""
