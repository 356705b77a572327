"""Errors of camingest.

Every error carries the PROTOCOL.md code that a client is sent for it, so the Socket.IO and HTTP
layers never guess. Where a built-in fits, the error also inherits it (PyAV's habit:
``InvalidDataError(FFmpegError, ValueError)``), so generic callers can catch ``ValueError``.
"""

from __future__ import annotations

import errno

# the base and the store's own error are defined below ingest, so that storage raises members of
# this same family without importing ingest (re-exported here)
from storage.errors import IngestError as IngestError
from storage.errors import UnknownSessionError as UnknownSessionError


class BadRequestError(IngestError, ValueError):
    code = "bad_request"


class UnauthorizedError(IngestError, PermissionError):
    code = "unauthorized"


class NotFoundError(IngestError, LookupError):
    """Something other than a session, chunk or snapshot does not exist (a gallery person)."""

    code = "not_found"


class UnknownChunkError(IngestError, LookupError):
    """The session exists; that chunk seq does not (HTTP 404)."""

    code = "unknown_chunk"


class UnknownSnapshotError(IngestError, LookupError):
    """The session exists; that snapshot id does not (HTTP 404)."""

    code = "unknown_snapshot"


class GapError(IngestError):
    code = "gap"

    def __init__(self, message: str, next_seq: int) -> None:
        super().__init__(message)
        self.next_seq = next_seq


class ConflictError(IngestError):
    code = "conflict"


class TooLargeError(IngestError, ValueError):
    code = "too_large"


class UnsupportedError(IngestError):
    code = "unsupported"


class InvalidMediaError(IngestError, ValueError):
    """The bytes are not a stream we can read (not WebM, corrupt EBML, undecodable)."""

    code = "invalid_media"


class SessionClosedError(IngestError):
    code = "session_closed"


class CapacityError(IngestError):
    """A documented limit (open sessions overall or per connection, uploads, previews) is
    reached; nothing was stored; the client may retry later (HTTP 503)."""

    code = "busy"


class UploadTooSlowError(IngestError, TimeoutError):
    """An upload's body did not keep the documented pace; its slot is freed (HTTP 408)."""

    code = "timeout"


class StorageFullError(IngestError, OSError):
    """The disk is full: nothing was stored or acknowledged; retry later (HTTP 507)."""

    code = "storage_full"


def storage_error(exc: BaseException, what: str) -> IngestError:
    """The client's error for a failed write of ``what``: ``storage_full`` when the disk is full
    (ENOSPC, EDQUOT, SQLite's SQLITE_FULL), else ``internal`` naming the cause, never the path."""
    full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or getattr(exc, "sqlite_errorcode", None) == 13
    if full:
        return StorageFullError(f"the server's disk is full: the {what} was not stored; retry later")
    return IngestError(f"the server could not store the {what} (an I/O error on its disk); retry later")


class ModelError(IngestError, ValueError):
    """A model file (dlib's landmark model) is missing, truncated or not what it should be. An
    operator's problem, not a client's: clients see ``internal``; the message names the file."""


class EngineUnavailableError(IngestError, RuntimeError):
    """The configured landmark engine cannot run here (numba missing or unsupported)."""
