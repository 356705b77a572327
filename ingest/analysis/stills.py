"""Faces in still images (snapshots, enrolment photos), at a bounded cost.

One policy for both: the header is read first (type and declared size, refused before anything
decodes it), then the image is decoded *reduced* when it is larger than the analysis needs
(JPEG's own 1/2, 1/4, 1/8 scaling inside the decoder: cheap; other formats are resized after
decoding) and resized to fit ``max_pixels``; faces are found there and their boxes and points
scaled back to the image's own pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ingest.analysis.detect import detect_faces
from ingest.analysis.identity import GallerySource, describe, nearest
from ingest.exceptions import InvalidMediaError, TooLargeError
from ingest.media.image_headers import EXTENSIONS, ImageInfo, image_type, probe_image
from storage.gallery import Enrolment

_REDUCED = {
    False: (cv2.IMREAD_GRAYSCALE, cv2.IMREAD_REDUCED_GRAYSCALE_2, cv2.IMREAD_REDUCED_GRAYSCALE_4,
            cv2.IMREAD_REDUCED_GRAYSCALE_8),
    True: (cv2.IMREAD_COLOR, cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_COLOR_4, cv2.IMREAD_REDUCED_COLOR_8),
}  # fmt: skip


@dataclass(frozen=True)
class Still:
    """An image decoded for analysis: at most ``max_pixels``, gray or BGR."""

    info: ImageInfo  # as its header declares it
    image: np.ndarray

    @property
    def gray(self) -> np.ndarray:
        return self.image if self.image.ndim == 2 else cv2.cvtColor(self.image, cv2.COLOR_BGR2GRAY)

    @property
    def scale(self) -> tuple[float, float]:
        """Original pixels per analysed pixel, (x, y)."""
        return self.info.width / self.image.shape[1], self.info.height / self.image.shape[0]

    def to_original(self, face: dict[str, Any]) -> dict[str, Any]:
        """A face found in the analysed image, in the original image's pixels."""
        sx, sy = self.scale
        if sx == sy == 1:
            return face
        x, y, w, h = face["box"]
        out: dict[str, Any] = {
            "box": [round(x * sx), round(y * sy), round(w * sx), round(h * sy)],
            "points": [[round(px * sx), round(py * sy)] for px, py in face["points"]],
        }
        if "identity" in face:
            out["identity"] = face["identity"]
        return out


def load_still(data: bytes, info: ImageInfo, max_pixels: int, colour: bool) -> Still:
    """Decode ``data`` (whose header said ``info``) at most ``max_pixels`` large; colour only
    when a face will be described (JPEG's luma alone decodes faster). ``InvalidMediaError`` if
    it does not decode."""
    flags = _REDUCED[colour]
    flag = flags[0]
    for factor, reduced in ((8, flags[3]), (4, flags[2]), (2, flags[1])):
        if info.pixels / (factor * factor) >= max_pixels:
            flag = reduced
            break
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None:
        raise InvalidMediaError("the image does not decode; it may be damaged")
    height, width = image.shape[:2]
    if height * width > max_pixels:
        shrink = (max_pixels / (height * width)) ** 0.5
        size = (max(int(width * shrink), 1), max(int(height * shrink), 1))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return Still(info, image)


def faces_in_snapshot(
    data: bytes,
    upsample: int,
    engine: str,
    max_pixels: int,
    gallery: GallerySource | None = None,
    identity_threshold: float = 0.6,
    descriptor_engine: str = "onnxruntime",
) -> list[dict[str, Any]]:
    """Faces of a stored snapshot (its header was checked when it was stored), identified when
    ``gallery`` holds people."""
    matrix = gallery.current()[1] if gallery is not None else None
    identify = matrix is not None and bool(matrix.names)
    still = load_still(data, probe_image(data), max_pixels, colour=identify)
    faces = detect_faces(still.gray, upsample, engine)
    if faces and identify:
        assert matrix is not None
        rgb = cv2.cvtColor(still.image, cv2.COLOR_BGR2RGB)
        for face in faces:
            descriptor = describe(rgb, face["box"], face["points"], descriptor_engine)
            face["identity"] = nearest(matrix, descriptor, identity_threshold)
    return [still.to_original(face) for face in faces]


def enrolment(
    data: bytes, source: str, upsample: int = 1, engine: str = "numba", max_pixels: int = 40_000_000,
    analysis_pixels: int = 4_000_000, descriptor_engine: str = "onnxruntime",
) -> Enrolment:  # fmt: skip
    """The face of one enrolment photo. Refuses (``InvalidMediaError`` naming ``source``) what
    is not a JPEG/PNG/WebP image, a photo without a face, and one with several faces (saying
    which one would be taken: a cropped photo makes it certain); ``TooLargeError`` for a header
    that declares more than ``max_pixels`` (checked before decoding, as for snapshots)."""
    mime = image_type(data)
    if mime is None:
        raise InvalidMediaError(f"{source} is not a photo; send a JPEG, PNG or WebP image of the person's face")
    try:
        info = probe_image(data)
    except InvalidMediaError as exc:
        raise InvalidMediaError(f"{source}: {exc.message}") from None
    if info.pixels > max_pixels:
        raise TooLargeError(
            f"{source} declares {info.width}x{info.height} = {info.pixels} pixels, more than max_snapshot_pixels={max_pixels}"
        )
    try:
        still = load_still(data, info, analysis_pixels, colour=True)
    except InvalidMediaError:
        raise InvalidMediaError(f"{source} does not decode as an image; it may be damaged") from None
    faces = detect_faces(still.gray, upsample, engine)
    if not faces:
        raise InvalidMediaError(f"{source}: no face found; use a photo where the face is clearly visible, from the front")
    largest = max(faces, key=lambda f: f["box"][2] * f["box"][3])
    if len(faces) > 1:
        x, y, w, h = still.to_original(largest)["box"]
        raise InvalidMediaError(
            f"{source}: {len(faces)} faces found; the largest ({w}x{h} px at x={x}, y={y}) would be taken. "
            "Crop the photo to the one person and send it again"
        )
    rgb = cv2.cvtColor(still.image, cv2.COLOR_BGR2RGB)
    descriptor = describe(rgb, largest["box"], largest["points"], descriptor_engine)
    x, y, w, h = still.to_original(largest)["box"]
    return Enrolment(data, source, f".{EXTENSIONS[mime]}", (x, y, w, h), descriptor)


def enrol_photos(
    photos: list[tuple[bytes, str]], engine: str, max_pixels: int, analysis_pixels: int,
    descriptor_engine: str = "onnxruntime",
) -> tuple[list[Enrolment], InvalidMediaError | TooLargeError | None]:  # fmt: skip
    """Each photo's face (all or nothing): the enrolments, or the first refusal. Runs in a
    process of its own in the server (a descriptor holds the GIL)."""
    out = []
    for data, source in photos:
        try:
            out.append(enrolment(data, source, engine=engine, max_pixels=max_pixels, analysis_pixels=analysis_pixels,
                                 descriptor_engine=descriptor_engine))  # fmt: skip
        except (InvalidMediaError, TooLargeError) as exc:
            return [], exc
    return out, None
