"""The payloads of Socket.IO events: each field checked with the contract's error naming it, and
the acks built from errors. Shared by the acked protocol (events.py) and the classic dialects
(classic.py)."""

from __future__ import annotations

import math
from typing import Any

from ingest.exceptions import BadRequestError, GapError, IngestError, TooLargeError

Ack = dict[str, Any]
MAX_MIME_CHARS = 200


def require_dict(data: object, what: str = "payload") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadRequestError(f"{what} must be an object, got {type(data).__name__}")
    return data


def optional_time(payload: dict[str, Any], field: str = "t_ms") -> float | None:
    t_ms = payload.get(field)
    if t_ms is None:
        return None
    if isinstance(t_ms, bool) or not isinstance(t_ms, int | float) or not math.isfinite(t_ms):
        raise BadRequestError(f"{field} must be a finite number")
    return float(t_ms)


def require_bytes(payload: dict[str, Any], limit: int, what: str) -> bytes:
    data = payload.get("data")
    if not isinstance(data, bytes | bytearray):
        raise BadRequestError(f"data must be a binary attachment, got {type(data).__name__}")
    if len(data) > limit:
        raise TooLargeError(f"{what} of {len(data)} bytes exceeds the limit of {limit} bytes")
    return bytes(data)


def error_ack(exc: IngestError) -> Ack:
    ack: Ack = {"ok": False, "error": exc.to_dict()}
    if isinstance(exc, GapError):
        ack["next_seq"] = exc.next_seq
    return ack


INTERNAL_ACK: Ack = {"ok": False, "error": {"code": "internal", "message": "internal server error"}}
