"""Image headers read without decoding: type from magic bytes, dimensions from the header.

Snapshots are checked with this before anything decodes them, so a 50000x50000 PNG of a few
hundred bytes (an image bomb) is refused at the cost of reading 30 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ingest.exceptions import InvalidMediaError
from storage.files import IMAGE_EXTENSIONS

EXTENSIONS = IMAGE_EXTENSIONS  # the image types accepted (and stored), with their file extensions
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG Start-Of-Frame markers (all but DHT C4, JPG C8 and DAC CC carry the frame size).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True)
class ImageInfo:
    mime: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def image_type(data: bytes) -> str | None:
    """JPEG, PNG or WebP by the file's magic number (its first bytes); None for anything else."""
    if data.startswith(PNG_SIGNATURE):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def probe_image(data: bytes) -> ImageInfo:
    """Type and size of a JPEG, PNG or WebP file; ``InvalidMediaError`` for anything else."""
    mime = image_type(data)
    if mime == "image/png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InvalidMediaError("PNG without an IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        return _checked("image/png", width, height)
    if mime == "image/jpeg":
        return _jpeg(data)
    if mime == "image/webp":
        return _webp(data)
    raise InvalidMediaError("not a JPEG, PNG or WebP image (unknown magic bytes)")


def _checked(mime: str, width: int, height: int) -> ImageInfo:
    if width <= 0 or height <= 0:
        raise InvalidMediaError(f"{mime} declares an empty size {width}x{height}")
    return ImageInfo(mime, width, height)


def _jpeg(data: bytes) -> ImageInfo:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise InvalidMediaError(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return _checked("image/jpeg", width, height)
        if marker == 0xDA:
            break  # scan data before any frame header
        pos += 2 + length
    raise InvalidMediaError("JPEG without a frame header (SOF)")


def _webp(data: bytes) -> ImageInfo:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return _checked("image/webp", width, height)
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return _checked("image/webp", 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF))
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return _checked("image/webp", width & 0x3FFF, height & 0x3FFF)
    raise InvalidMediaError("WebP without a readable VP8/VP8L/VP8X header")
