"""dlib 68-point face landmarks for every frame of a stream, at about the cost of decoding it.

Fitting 68 points to a box costs ~0.25 ms (engine/predictor.py); finding the boxes is what is
dear: dlib's HOG detector at upsample 1, which finds faces from ~40 px, costs 50-70 ms on a
640x480 frame. So a ``FaceTracker`` finds faces at three costs:

- a **sweep** (full detection at ``upsample``, default 1) on the first frame, every
  ``sweep_every`` frames and after a scene cut: it finds faces of every size and replaces all
  tracks. Sweeps are the tracker's reset points: its state after a sweep depends on nothing
  before it, which is what lets batch jobs (one per sweep period) reproduce live results exactly.
  A session's periodic sweeps are shifted by its own ``sweep_offset`` (``for_session``: a
  function of its id), so that sessions started together do not all sweep on the same frame;
- a **refresh** every ``detect_every`` frames: HOG on the half-size frame (~5-8 ms) finds new
  faces from ~160 px, and each tracked face it did not re-find is looked for in a crop around it,
  scaled so the face is ~100 px wide (~1 ms), so small faces are re-anchored without a full-frame
  search. A tracked face found nowhere is dropped;
- in between, each face is **tracked**: its 68 points are fitted to a box carried over from its
  previous points (the box kept in the detector's geometry relative to them). A fit that jumps in
  size or leaves the frame is lost and looked for in a crop around it the same way.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from ingest.analysis.budget import SweepBudget, TimeBudget
from ingest.analysis.detect import PREDICTOR_FILE, WINDOW, Box, detect_boxes, detect_near, face_dict, iou, xywh
from ingest.analysis.engine.predictor import Predictor, predictor
from ingest.analysis.identity import GallerySource, describe, nearest
from ingest.config import Settings


@dataclass(frozen=True)
class TrackerSettings:
    detect_every: int = 30  # frames between refreshes (half-size detection for new faces)
    anchor_every: int = 5  # frames between re-anchoring faces under 160 px on a detection in a crop around them
    sweep_every: int = 300  # frames between sweeps (full detection at `upsample`); a multiple of detect_every
    # periodic sweeps fall on frames k x sweep_every + sweep_offset (k >= 1), the first one on
    # frame 0: a session's own offset (for_session), in [-sweep_every / 2, sweep_every / 2)
    sweep_offset: int = 0
    upsample: int = 1  # HOG upsampling of sweeps: 1 finds faces from ~40 px, 0 from ~80 px (4x cheaper)
    scene_cut: float = 18.0  # mean absolute difference (0-255) of 64x48 thumbnails that counts as a cut
    # (measured on the scene fixture: its cuts score 23-26, fast motion at most 12)
    match_iou: float = 0.3  # a detection this close to a tracked face replaces its box
    # searches in a row that may fail before a face is given up (HOG misses a face for a few
    # frames when it turns or blurs; the fit stays on it). A face whose anchor failed is looked
    # for again on every frame until it is found or given up (then looked for at every anchor).
    max_misses: int = 3
    engine: str = "numba"  # landmark engine: numba (dlib's model, same points) or dlib
    # identification (analysis/identity.py): a face's descriptor is computed when its track
    # starts and every `identify_every` frames (~3 s at 30 fps); live workers get the gallery
    # from their server, batch jobs carry theirs
    identify_every: int = 90
    identity_threshold: float = 0.6
    identify: bool = False
    # share of a live worker's time descriptors may take (analysis/budget.py)
    identify_share: float = 0.15
    # share of a live worker's time sweeps may take on the frame they are due while other work
    # waits for it (analysis/budget.py SweepBudget; beyond it a quick pass now, the sweep when
    # there is time, the frames provisional until the next sweep on time: filled after stop;
    # 0: no live sweeps). Batch: every sweep on time.
    sweep_share: float = 0.3
    sweep_burst_s: float = 0.1  # what the budget holds: ~2 sweeps at 640x480 at once
    descriptor_engine: str = "onnxruntime"  # engine/descriptor.py: onnxruntime, opencv, numpy or dlib

    def __post_init__(self) -> None:
        if self.anchor_every < 1 or self.detect_every < 1 or self.sweep_every < self.detect_every or self.sweep_every % self.detect_every:
            raise ValueError(
                f"sweep_every ({self.sweep_every}) must be a positive multiple of detect_every ({self.detect_every})"
            )
        if not -(self.sweep_every // 2) <= self.sweep_offset < self.sweep_every - self.sweep_every // 2:
            raise ValueError(f"sweep_offset ({self.sweep_offset}) must be within half of sweep_every ({self.sweep_every})")

    def for_session(self, session_id: str) -> TrackerSettings:
        """These settings with the session's own sweep offset: a stable function of its id, so
        that its live analysis, its fills and its reprocessing sweep on the same frames, and
        sessions started together sweep on different ones (20 sessions' sweeps at once are
        ~1.5 s of a core, which no real-time lag survives)."""
        offset = zlib.crc32(session_id.encode()) % self.sweep_every - self.sweep_every // 2
        return replace(self, sweep_offset=offset)

    def sweeps_on(self, position: int) -> bool:
        """Whether frame ``position`` of a stream is a sweep (the tracker's reset point)."""
        since = position - self.sweep_offset
        return position == 0 or (since >= self.sweep_every and since % self.sweep_every == 0)

    def sweep_frames(self, total: int, step: int) -> list[int]:
        """Where a stream of ``total`` frames is cut into jobs of about ``step`` frames (a multiple
        of sweep_every), each starting on a sweep: 0, then every ``step`` frames from the first
        periodic sweep."""
        return [0, *range(self.sweep_every + self.sweep_offset, total, step)]

    @classmethod
    def from_settings(cls, settings: Settings) -> TrackerSettings:
        """The tracker's part of the server's settings (live workers, fills, batch, snapshots)."""
        return cls(
            detect_every=settings.detect_every,
            anchor_every=settings.anchor_every,
            sweep_every=settings.sweep_every,
            upsample=settings.detect_upsample,
            engine=settings.landmark_engine,
            identify_every=settings.identify_every,
            identity_threshold=settings.identity_threshold,
            identify_share=settings.identify_share,
            sweep_share=settings.sweep_share,
            sweep_burst_s=settings.sweep_burst_s,
            descriptor_engine=settings.descriptor_engine,
            identify=True,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "detector": "dlib.get_frontal_face_detector (HOG)",
            "predictor": PREDICTOR_FILE,
            "engine": self.engine,
            "detect_every": self.detect_every,
            "anchor_every": self.anchor_every,
            "sweep_every": self.sweep_every,
            "sweep_offset": self.sweep_offset,
            "upsample": self.upsample,
            "scene_cut": self.scene_cut,
            "identify_every": self.identify_every,
            "identity_threshold": self.identity_threshold,
            "descriptor_engine": self.descriptor_engine,
        }




@dataclass
class _Identity:
    descriptor: np.ndarray
    described_at: int  # frame position of the descriptor
    generation: object  # of the gallery it was matched against
    identity: dict[str, Any] | None


@dataclass
class _Track:
    box: Box
    # the detector box relative to the points: its centre's offset from their mean, in units of
    # its side. Between anchors the box keeps the detector's size and follows the points' mean:
    # deriving the size from the fitted points too would feed a fit's error back into the next
    # box, and small faces would shrink or slide away within a few frames.
    offset: tuple[float, float]
    points: np.ndarray
    misses: int = 0  # searches in a row that found no face here
    ident: _Identity | None = None  # who it is, carried along the track between descriptors

    @property
    def small(self) -> bool:
        """Too small for the half-size refresh to see, and the quickest to drift: anchored often."""
        return self.box[2] - self.box[0] < 2 * WINDOW


def _extent(points: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def _offset(box: Box, points: np.ndarray) -> tuple[float, float]:
    side = max(box[2] - box[0], 1)
    mx, my = points.mean(axis=0)
    return (((box[0] + box[2]) / 2 - float(mx)) / side, ((box[1] + box[3]) / 2 - float(my)) / side)


def _box_from(track: _Track) -> Box:
    side = track.box[2] - track.box[0]
    mx, my = track.points.mean(axis=0)
    cx, cy = float(mx) + track.offset[0] * side, float(my) + track.offset[1] * side
    left, top = round(cx - side / 2), round(cy - side / 2)
    return (left, top, left + side, top + (track.box[3] - track.box[1]))


class FaceTracker:
    """Landmarks for consecutive frames of one stream (one instance per session)."""

    def __init__(
        self,
        settings: TrackerSettings | None = None,
        engine: Predictor | None = None,
        gallery: GallerySource | None = None,
        budget: TimeBudget | None = None,
        sweep_budget: SweepBudget | None = None,
    ) -> None:
        """``gallery``: who faces are identified against (none: not identified); ``budget``: the
        share of a live worker's time descriptors may take (batch: none, every due face);
        ``sweep_budget``: the share sweeps may take (batch: none, every sweep on time)."""
        self.settings = settings or TrackerSettings()
        self.engine = engine or predictor(self.settings.engine)
        self.budget = budget
        self.sweep_budget = sweep_budget
        # A sweep the budget put off: the frames since a quick pass stood in for it, up to the
        # next sweep done on the frame it was due, are not what batch gives (its tracker swept
        # on time) and are marked provisional; the fill after stop gives them their final result.
        self._sweep_owed = False
        self.provisional = False
        self.gallery = gallery
        self.descriptors = 0  # computed, for the benchmarks
        self._tracks: list[_Track] = []
        # where faces were lost since the last sweep: searched again at every anchor, so a small
        # face that HOG missed for a moment is found again without waiting for the next sweep
        self._lost: list[Box] = []
        self._frames = 0  # frames seen, for streams processed without indices
        self._thumb: np.ndarray | None = None
        self.sweeps = 0
        self.quick_passes = 0  # sweeps put off by the budget
        self.refreshes = 0
        self.searches = 0  # crops searched around a face

    def reset(self) -> None:
        """Forget the faces: the next frame is not a continuation (frames were skipped)."""
        self._tracks, self._lost = [], []
        self._thumb = None  # the next frame sweeps (a cut): due on it

    def _scene_cut(self, gray: np.ndarray) -> bool:
        # every 4th pixel first: a tenth of the cost of resizing the whole frame, same scores
        thumb = cv2.resize(gray[::4, ::4], (64, 48), interpolation=cv2.INTER_AREA).astype(np.int16)
        previous, self._thumb = self._thumb, thumb
        return previous is None or float(np.abs(thumb - previous).mean()) > self.settings.scene_cut

    def process(
        self, gray: np.ndarray, index: int | None = None, rgb: Callable[[], np.ndarray] | None = None
    ) -> list[dict[str, Any]]:
        """Faces of the next frame. With ``index`` (the frame's index in its stream) sweeps,
        refreshes and anchors fall on multiples of their periods: a tracker started on a sweep
        frame (batch re-processing, one job per sweep period) then reproduces the live results
        exactly. ``rgb`` gives the frame in colour (only called when a face is identified)."""
        position = self._frames if index is None else index
        self._locate(gray, position)
        if self.gallery is not None and rgb is not None:
            self._identify(position, rgb)
        return self._faces()

    def _identify(self, position: int, rgb: Callable[[], np.ndarray]) -> None:
        """Descriptors for tracks that are new or due (only while the gallery holds someone);
        identities re-matched from the descriptors a track has when the gallery changed."""
        assert self.gallery is not None
        generation, matrix = self.gallery.current()
        if not matrix.names:  # nobody to recognise: no descriptor costs anything, no face is "unknown"
            for track in self._tracks:
                track.ident = None
            return
        threshold = self.settings.identity_threshold
        image = None
        # faces without a name yet first, then those due again (the budget may not cover all)
        for track in sorted(self._tracks, key=lambda t: t.ident is not None):
            ident = track.ident
            if ident is None or position - ident.described_at >= self.settings.identify_every:
                if self.budget is not None and not self.budget.available():
                    continue  # keeps what it has; identified on a later frame
                image = rgb() if image is None else image
                start = time.perf_counter()
                descriptor = describe(image, xywh(track.box), track.points, self.settings.descriptor_engine)
                if self.budget is not None:
                    self.budget.spend(time.perf_counter() - start)
                self.descriptors += 1
                track.ident = _Identity(descriptor, position, generation, nearest(matrix, descriptor, threshold))
            elif ident.generation != generation:
                ident.identity = nearest(matrix, ident.descriptor, threshold)
                ident.generation = generation

    def _locate(self, gray: np.ndarray, position: int) -> None:
        image = np.ascontiguousarray(gray)
        self._frames += 1
        settings = self.settings
        seen_before = self._thumb is not None
        cut = self._scene_cut(image)  # always: the next frame compares with this one
        scheduled = settings.sweeps_on(position)
        if cut or scheduled:
            if self._may_sweep():
                self._sweep(image)
                self._sweep_owed = False
                # a reset on time: what batch has from here, unless the "cut" is only that this
                # tracker saw no frame before (a live worker restarted mid-stream, or frames let
                # go): batch tracked through those, so these are not its results until a sweep
                # it shares, and the fill after stop gives them theirs
                self.provisional = not (seen_before or scheduled)
            else:
                self._quick_pass(image)
            return
        if self._sweep_owed and self._may_sweep():
            self._sweep(image)  # late: still provisional until a sweep on time
            self._sweep_owed = False
            return
        if self._tracks:
            self._track(image)
        if position % settings.detect_every == 0:
            self._refresh(image)
        elif position % settings.anchor_every == 0:
            self._anchor(image, lambda t: t.misses > 0 or t.small, [], search_lost=True)
        elif any(t.misses for t in self._tracks):
            self._anchor(image, lambda t: t.misses > 0, [], search_lost=False)

    def _faces(self) -> list[dict[str, Any]]:
        faces = [face_dict(t.box, t.points) for t in self._tracks]
        for face, track in zip(faces, self._tracks, strict=True):
            if track.ident is not None:  # identified: a name, or null ("unknown") when nobody matched
                face["identity"] = dict(track.ident.identity) if track.ident.identity else None
        return faces

    def _fit(self, image: np.ndarray, boxes: list[Box]) -> np.ndarray:
        return self.engine.fit(image, np.array(boxes, dtype=np.int64).reshape(-1, 4))

    def _new_tracks(self, image: np.ndarray, boxes: list[Box]) -> list[_Track]:
        """Tracks for detections that are not already tracked faces (nor found twice)."""
        unique: list[Box] = []
        for box in boxes:
            if all(iou(box, kept) < 0.5 for kept in unique) and all(iou(box, t.box) < 0.5 for t in self._tracks):
                unique.append(box)
        points = self._fit(image, unique)
        return [_Track(box, _offset(box, p), p) for box, p in zip(unique, points, strict=True)]

    def _may_sweep(self) -> bool:
        return self.sweep_budget is None or self.sweep_budget.available()

    def _sweep(self, image: np.ndarray) -> None:
        self.sweeps += 1
        start = time.perf_counter()
        self._tracks, self._lost = [], []
        self._tracks = self._new_tracks(image, detect_boxes(image, self.settings.upsample))
        if self.sweep_budget is not None:
            self.sweep_budget.spend(time.perf_counter() - start)

    def _quick_pass(self, image: np.ndarray) -> None:
        """In place of a sweep the budget has no time for: the faces HOG finds on the half-size
        frame (from ~160 px, ~4 ms at 640x480 against ~50 for a sweep) replace all tracks; the
        sweep is owed (done on the first later frame the budget allows) and the frames are
        provisional until a sweep on time."""
        self.quick_passes += 1
        self._sweep_owed = self.provisional = True
        self._tracks, self._lost = [], []
        self._tracks = self._new_tracks(image, self._half_size_boxes(image))

    def _refresh(self, image: np.ndarray) -> None:
        """New faces from ~160 px on the half-size frame; every tracked face is re-anchored (on
        a detection of the half-size frame, else in a crop around it)."""
        self.refreshes += 1
        self._anchor(image, lambda t: True, self._half_size_boxes(image), search_lost=True)

    @staticmethod
    def _half_size_boxes(image: np.ndarray) -> list[Box]:
        """Faces from ~160 px: HOG (upsample 0) on the frame at half size, in the frame's geometry."""
        height, width = image.shape
        if min(height, width) < 2 * WINDOW:
            return []
        half = cv2.resize(image, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
        return [(2 * b[0], 2 * b[1], 2 * b[2] + 1, 2 * b[3] + 1) for b in detect_boxes(half, 0)]

    def _anchor(self, image: np.ndarray, due: Callable[[_Track], bool], found: list[Box], search_lost: bool) -> None:
        """Re-anchor the ``due`` faces on a detection (from ``found``, else in a crop around
        them); with ``search_lost``, also look again where faces were lost. Detections that are
        no tracked face become new tracks."""
        kept: list[_Track] = []
        anchored: list[_Track] = []
        for track in self._tracks:
            if not due(track):
                kept.append(track)
                continue
            box = max(found, key=lambda b: iou(b, track.box), default=None)
            if box is None or iou(box, track.box) < self.settings.match_iou:
                self.searches += 1
                box = detect_near(image, track.box)
            if box is not None:
                anchored.append(_Track(box, track.offset, track.points, ident=track.ident))
            elif track.misses < self.settings.max_misses:
                kept.append(_Track(track.box, track.offset, track.points, track.misses + 1, track.ident))
            else:
                self._lost.append(track.box)
        for track, points in zip(anchored, self._fit(image, [t.box for t in anchored]), strict=True):
            track.points, track.offset = points, _offset(track.box, points)
        self._tracks = kept + anchored
        if search_lost:
            for lost in self._lost:
                self.searches += 1
                box = detect_near(image, lost)
                if box is not None:
                    found.append(box)
            self._lost = [b for b in self._lost if all(iou(b, f) < self.settings.match_iou for f in found)]
        self._tracks += self._new_tracks(image, found)

    def _track(self, image: np.ndarray) -> None:
        height, width = image.shape
        boxes = [_box_from(t) for t in self._tracks]
        kept: list[_Track] = []
        for track, box, points in zip(self._tracks, boxes, self._fit(image, boxes), strict=True):
            if self._plausible(points, track, width, height):
                kept.append(_Track(box, track.offset, points, track.misses, track.ident))
            else:
                self._lost.append(box)  # looked for again at the next anchor
        self._tracks = kept

    @staticmethod
    def _plausible(points: np.ndarray, track: _Track, width: int, height: int) -> bool:
        """Did the fit stay on a face? Size must not jump, and the face must stay in frame."""
        _, _, w, h = _extent(points)
        _, _, w0, h0 = _extent(track.points)
        if not (0.7 < w / max(w0, 1.0) < 1.4 and 0.7 < h / max(h0, 1.0) < 1.4):
            return False
        cx, cy = points.mean(axis=0)
        return 0 <= cx < width and 0 <= cy < height

