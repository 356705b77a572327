"""The payloads of Socket.IO events: each field checked with the contract's error naming it, and
the acks built from errors. Shared by the acked protocol (events.py) and the classic dialects
(classic.py)."""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any

from ingest.exceptions import BadRequestError, GapError, IngestError, TooLargeError, UnsupportedError
from ingest.media.image_headers import EXTENSIONS

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


MAX_DATA_URL_HEADER = 100  # "data:image/jpeg;base64," and parameters a browser may add
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")


def base64_chars(max_bytes: int) -> int:
    """Characters of base64 that carry at most ``max_bytes``."""
    return 4 * -(-max_bytes // 3)


def split_data_url(text: str, max_bytes: int) -> tuple[str, str]:
    """(mime, base64 text) of an image data URL ("data:image/jpeg;base64,...", what
    canvas.toDataURL gives), its length checked before anything decodes it."""
    limit = MAX_DATA_URL_HEADER + base64_chars(max_bytes)
    if len(text) > limit:
        raise TooLargeError(
            f"image data URL of {len(text)} characters is longer than the {limit} that max_snapshot_bytes={max_bytes} allows"
        )
    comma = text.find(",", 0, MAX_DATA_URL_HEADER)
    if not text.startswith("data:") or comma < 0:
        shown = text[:32] + ("..." if len(text) > 32 else "")
        raise BadRequestError(
            f'image is not a data URL: expected "data:image/jpeg;base64,..." (canvas.toDataURL("image/jpeg")), got {shown!r}'
        )
    header = text[5:comma]
    mime, *params = header.split(";")
    mime = mime.strip().lower()
    if mime not in EXTENSIONS:
        raise UnsupportedError(f"image data URL of type {mime or 'none'!r}; send one of {', '.join(EXTENSIONS)}")
    if "base64" not in (p.strip().lower() for p in params):
        raise BadRequestError(f'image data URL "data:{header}," is not base64; send "data:{mime};base64,..."')
    return mime, text[comma + 1 :]


def decode_base64(text: str) -> bytes:
    """The bytes of a data URL's base64 (strict: its alphabet and padding), or what is wrong with it."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        bad = _NOT_BASE64.search(text)
        if bad is not None:
            raise BadRequestError(
                f"image data URL: character {bad.group()!r} at position {bad.start()} of its base64 is not base64 "
                "(A-Z, a-z, 0-9, +, / and = padding)"
            ) from None
        if len(text) % 4:
            raise BadRequestError(
                f"image data URL: its base64 has {len(text)} characters, not a multiple of 4 (cut short, or its = padding removed)"
            ) from None
        padding = text.find("=")
        if 0 <= padding < len(text.rstrip("=")):
            raise BadRequestError(
                f"image data URL: its base64 has = padding at position {padding}, before its end (two URLs joined?)"
            ) from None
        raise BadRequestError(f"image data URL: its base64 does not decode ({exc})") from None


def error_ack(exc: IngestError) -> Ack:
    ack: Ack = {"ok": False, "error": exc.to_dict()}
    if isinstance(exc, GapError):
        ack["next_seq"] = exc.next_seq
    return ack


INTERNAL_ACK: Ack = {"ok": False, "error": {"code": "internal", "message": "internal server error"}}
