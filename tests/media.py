"""Reference figures computed independently of the server: decoded frames, full detection."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ingest.analysis.detect import inter_ocular
from ingest.media.decode import DecodedFrame, UnitDecoder
from ingest.media.webm import WebMReader, build_unit


def decoded_frames(chunks: list[bytes]) -> Iterator[DecodedFrame]:
    reader, decoder = WebMReader(), UnitDecoder()
    for chunk in chunks:
        unit = reader.feed(chunk)
        if len(unit):
            yield from decoder.decode(build_unit(bytes(reader.init), unit.clusters))
    yield from decoder.flush()


def match_faces(reference: list[dict], found: list[dict]) -> list[float | None]:
    """Per reference face: mean point error of the closest found face over the inter-ocular
    distance, or None when no found face is within 25% (a miss)."""
    errors: list[float | None] = []
    for ref in reference:
        points = np.array(ref["points"], dtype=float)
        iod = inter_ocular(points)
        best = min(
            (float(np.linalg.norm(np.array(f["points"], dtype=float) - points, axis=1).mean()) / iod for f in found),
            default=None,
        )
        errors.append(best if best is not None and best < 0.25 else None)
    return errors
