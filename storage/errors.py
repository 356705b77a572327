"""Errors the store raises, with the PROTOCOL.md code a client is sent for them.

The base class of every camingest error lives here, below ``ingest``, so that the storage layer
can raise errors the server's handlers already know without importing anything from ``ingest``
(``ingest.exceptions`` builds the rest of the family on it).
"""

from __future__ import annotations


class IngestError(Exception):
    """Base class; ``code`` is the PROTOCOL.md error code sent to clients."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class UnknownSessionError(IngestError, LookupError):
    code = "unknown_session"
