"""The payloads of Socket.IO events and the bodies of HTTP routes: each field checked for its type
with the contract's error naming it (``bad_request``; a session id that is not ours is
``unknown_session``, a token that is not the session's ``unauthorized``, as PROTOCOL.md has it),
before anything touches a session; and the acks built from errors. Shared by the acked protocol
(events.py), the classic dialects (classic.py, classic_images.py) and the routes.

What JSON itself may hold (no NaN, no lone surrogates, bounded nesting) is checked before this,
where the text is parsed (strict_json.py): a handler never sees such a value."""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from typing import Any

from ingest.exceptions import BadRequestError, GapError, IngestError, TooLargeError, UnsupportedError
from ingest.media.image_headers import EXTENSIONS
from ingest.server.strict_json import JSONRefusedError, StrictJSON

Ack = dict[str, Any]
MAX_MIME_CHARS = 200
# JSON's names for the types a client sends (what a message says it got)
_JSON_TYPES = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
               dict: "an object", type(None): "null", bytes: "binary data", bytearray: "binary data"}  # fmt: skip


def json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def require_dict(data: object, what: str = "payload") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadRequestError(f"{what} must be an object, got {json_type(data)}")
    return data


def optional_time(payload: dict[str, Any], field: str = "t_ms") -> float | None:
    t_ms = payload.get(field)
    if t_ms is None:
        return None
    if isinstance(t_ms, bool) or not isinstance(t_ms, int | float) or not math.isfinite(t_ms):
        raise BadRequestError(f"{field} must be a finite number, got {json_type(t_ms)}")
    return float(t_ms)


def require_str(payload: dict[str, Any], field: str, max_chars: int = MAX_MIME_CHARS) -> str:
    value = payload.get(field)
    if not isinstance(value, str) or not value or len(value) > max_chars:
        got = f"{len(value)} characters" if isinstance(value, str) and value else json_type(value)
        raise BadRequestError(f"{field} must be a non-empty string of at most {max_chars} characters, got {got}")
    return value


def require_seq(payload: dict[str, Any], field: str = "seq") -> int:
    seq = payload.get(field)
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise BadRequestError(f"{field} must be a non-negative integer, got {json_type(seq)}")
    if seq < 0:
        raise BadRequestError(f"{field} must be a non-negative integer, got {seq}")
    return seq


def find_binary(value: object, where: str) -> str | None:
    """The first binary attachment inside ``value`` (a field's name: ``meta.photo``), if any."""
    if isinstance(value, bytes | bytearray):
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = find_binary(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}")
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class StartRequest:
    """``start``: a new session (``mime``, ``meta``) or a resumed one (``resume``, unchecked
    here: its session id and token are the session's to judge)."""

    mime: str
    meta: dict[str, Any]
    resume: dict[str, Any] | None


def start_request(payload: dict[str, Any], max_meta_bytes: int) -> StartRequest:
    resume = payload.get("resume")
    if resume is not None:
        return StartRequest("", {}, require_dict(resume, "resume"))
    mime = require_str(payload, "mime")
    meta = payload.get("meta")
    meta = {} if meta is None else require_dict(meta, "meta")
    binary = find_binary(meta, "meta")
    if binary is not None:
        raise BadRequestError(f"{binary} is binary data; meta holds JSON values only (it is stored and listed as JSON)")
    size = len(STRICT.dumps(meta))
    if size > max_meta_bytes:
        raise TooLargeError(f"meta of {size} bytes of JSON exceeds {max_meta_bytes} bytes (max_meta_bytes)")
    return StartRequest(mime, meta, None)


@dataclass(frozen=True)
class ChunkRequest:
    seq: int
    t_ms: float | None
    data: bytes


def chunk_request(payload: dict[str, Any], max_bytes: int) -> ChunkRequest:
    return ChunkRequest(require_seq(payload), optional_time(payload), require_bytes(payload, max_bytes, "chunk"))


@dataclass(frozen=True)
class SnapshotRequest:
    mime: str
    t_ms: float | None
    data: bytes


def snapshot_request(payload: dict[str, Any], max_bytes: int) -> SnapshotRequest:
    data = require_bytes(payload, max_bytes, "snapshot")
    mime = payload.get("mime")
    if not isinstance(mime, str):
        raise BadRequestError(f"mime must be one of {', '.join(EXTENSIONS)}, got {json_type(mime)}")
    return SnapshotRequest(mime, optional_time(payload), data)


# -- HTTP bodies ----------------------------------------------------------------------------------
STRICT = StrictJSON(64)  # for dumps (no NaN); bodies are read with the configured depth


def json_body(text: str | bytes, max_depth: int, example: str) -> Any:
    """A route's JSON body (UTF-8), read strictly (strict_json.py); ``bad_request`` naming the field."""
    try:
        return StrictJSON(max_depth).loads(text)
    except JSONRefusedError as exc:
        raise BadRequestError(exc.describe(whole="the body")) from None
    except ValueError:
        raise BadRequestError(f"the body is not JSON; send one like {example}") from None


@dataclass(frozen=True)
class ExportRequest:
    overlay: str
    format: str


def export_request(body: object) -> ExportRequest:
    """``POST .../exports``: ``{"overlay"?: str, "format"?: str}`` (their values are checked by
    the export)."""
    body = require_dict(body, "the body")
    fields = {}
    for field, default in (("overlay", "landmarks"), ("format", "mp4")):
        value = body.get(field, default)
        if not isinstance(value, str):
            raise BadRequestError(f"{field} must be a string, got {json_type(value)}")
        fields[field] = value
    return ExportRequest(fields["overlay"], fields["format"])


def require_bytes(payload: dict[str, Any], limit: int, what: str) -> bytes:
    data = payload.get("data")
    if not isinstance(data, bytes | bytearray):
        raise BadRequestError(f"data must be a binary attachment, got {json_type(data)}")
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
