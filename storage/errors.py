"""Errors the store raises, with the PROTOCOL.md code a client is sent for them.

The base class of every camingest error lives here, below ``ingest``, so that the storage layer
can raise errors the server's handlers already know without importing anything from ``ingest``
(``ingest.exceptions`` builds the rest of the family on it). Each class knows its code and the
HTTP status that carries it, so no layer above keeps a table of its own.
"""

from __future__ import annotations

from typing import Any


class IngestError(Exception):
    """Base class; ``code`` is the PROTOCOL.md error code sent to clients, ``http_status`` the
    status of an HTTP answer carrying it."""

    code = "internal"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        """The error as clients get it: ``code`` and ``message`` (subclasses may add fields)."""
        return {"code": self.code, "message": self.message}


class UnknownSessionError(IngestError, LookupError):
    code = "unknown_session"
    http_status = 404


class UnknownSnapshotError(IngestError, LookupError):
    """The session exists; that snapshot id does not (HTTP 404)."""

    code = "unknown_snapshot"
    http_status = 404


class StoreBusyError(IngestError, RuntimeError):
    """Another camingest server holds this data folder's lock."""


class IndexWriteError(OSError):
    """The index could not commit a write (its disk is full, or its file failed): nothing of the
    write was stored. An ``OSError`` with ``ENOSPC`` when the disk is full, so callers handle a
    full disk one way whether the file or the index hit it."""
