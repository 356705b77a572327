"""The lipstick try-on: one image of a page's camera in, its faces and the image with the lips
recoloured out, as the tutorial's server answers it (a JPEG data URL, quality 40).

Runs in an analysis worker: decode, detect + 68 points (the engine of everything else), the
export's ``lips`` overlay (``ingest.media.overlay.draw_lips``: one implementation), encode. The
server checked the image's header (type, declared pixels) before sending it; detection runs on
a copy of at most ``max_pixels`` (points scaled back), the drawing on the image itself.
"""

from __future__ import annotations

import base64
from typing import Any

import cv2
import numpy as np

from ingest.analysis.detect import detect_faces
from ingest.analysis.stills import Still
from ingest.exceptions import InvalidMediaError
from ingest.media.image_headers import ImageInfo, image_type
from ingest.media.overlay import draw_lips

RESPONSE_QUALITY = 40  # the tutorial's server: cv2.imencode(".jpg", frame, [IMWRITE_JPEG_QUALITY, 40])
DATA_URL_PREFIX = "data:image/jpeg;base64,"


def recolour_lips(data: bytes, upsample: int, engine: str, max_pixels: int) -> tuple[list[dict[str, Any]], str]:
    """(faces in the image's pixels, the recoloured image as a ``data:image/jpeg;base64,`` URL);
    ``InvalidMediaError`` if the image does not decode."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InvalidMediaError("the image does not decode; it may be damaged or truncated")
    height, width = bgr.shape[:2]
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    if height * width > max_pixels:
        shrink = (max_pixels / (height * width)) ** 0.5
        size = (max(int(width * shrink), 1), max(int(height * shrink), 1))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    still = Still(ImageInfo(image_type(data) or "image", width, height), gray)  # as decoded (EXIF turned)
    faces = [still.to_original(face) for face in detect_faces(gray, upsample, engine)]
    draw_lips(bgr, faces)
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, RESPONSE_QUALITY])
    if not ok:  # pragma: no cover - OpenCV encodes any 8-bit BGR image
        raise InvalidMediaError("the recoloured image could not be encoded")
    return faces, DATA_URL_PREFIX + base64.b64encode(jpeg.tobytes()).decode("ascii")
