"""dlib's shape_predictor model file, read into numpy arrays (and cached as ``.npz``).

The file (``shape_predictor_68_face_landmarks.dat``, 95 MiB) is dlib's own serialization of an
ensemble of regression trees (dlib/image_processing/shape_predictor.h). Every number in it is a
dlib "packed int": a control byte (low nibble = count of magnitude bytes, 0x80 = negative) and
the magnitude little-endian; a float is two of them, mantissa and exponent. The file holds, in
order: ``int version`` (1); ``initial_shape`` (a float column: x, y per point, box-normalised);
``forests`` (cascades of trees; a tree is its splits {idx1, idx2, thresh} as a complete binary
tree, then its leaves, each a float column of 2 x points); ``anchor_idx`` (per cascade, the point
each feature pixel hangs from) and ``deltas`` (its x, y offset from that point).

Decoding ~33 M packed ints is sequential work, so it is compiled (numba); the structure is then
cut out of the flat token array with numpy slicing, one cascade at a time. Reading the file takes
0.3-0.7 s; the arrays are then saved as an uncompressed ``.npz`` under the user's cache folder
(keyed by the model file's size and mtime) and load in ~0.05 s on every later start.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ingest.config import cache_dir
from ingest.exceptions import ModelError

log = logging.getLogger(__name__)
CACHE_FORMAT = 1  # bump when the arrays' layout changes: old cache files are then ignored
_INF, _NINF, _NAN = 32000, 32001, 32002  # dlib's float_details exponents for the special values


@dataclass(frozen=True)
class ShapeModel:
    """A shape predictor as arrays: C cascades of T trees of depth D over F feature pixels, P points."""

    initial_shape: np.ndarray  # (2P,) float32: x0, y0, x1, y1, ...
    anchor_idx: np.ndarray  # (C, F) int32: the point feature pixel f hangs from
    deltas: np.ndarray  # (C, F, 2) float32: its offset from that point, in the initial shape's frame
    split_idx: np.ndarray  # (C, T, 2^D - 1, 2) int32: feature pixels compared at each split node
    split_thresh: np.ndarray  # (C, T, 2^D - 1) float32
    leaves: np.ndarray  # (C, T, 2^D, 2P) float32: what each leaf adds to the shape

    @property
    def points(self) -> int:
        return self.initial_shape.size // 2

    def describe(self) -> dict[str, int]:
        cascades, trees, splits, _ = self.split_idx.shape
        return {
            "points": self.points,
            "cascades": cascades,
            "trees": trees,
            "depth": int(np.log2(splits + 1)),
            "features": self.anchor_idx.shape[1],
        }


def load_model(path: Path | str, cache: Path | None = None) -> ShapeModel:
    """The model at ``path``, from the ``.npz`` cache when it matches the file, else parsed (and
    the cache written; a cache that cannot be written is logged, not an error)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ModelError(f"cannot read the landmark model {path}: {exc.strerror}") from exc
    folder = cache if cache is not None else cache_dir() / "models"
    cached = folder / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}-v{CACHE_FORMAT}.npz"
    if cached.exists():
        try:
            with np.load(cached) as arrays:
                return ShapeModel(**{f.name: arrays[f.name] for f in fields(ShapeModel)})
        except (OSError, ValueError, KeyError) as exc:  # torn or foreign: parse again, rewrite
            log.warning("ignoring the unreadable model cache %s: %s", cached, exc)
    model = parse_model(path)
    _write_cache(cached, model)
    return model


def _write_cache(target: Path, model: ShapeModel) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **{f.name: getattr(model, f.name) for f in fields(ShapeModel)})
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is no secret
            os.replace(tmp, target)  # readers see the whole file or none
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        log.info("landmark model cache not written (%s); the model will be parsed at every start", exc)


def parse_model(path: Path) -> ShapeModel:
    """Parse a dlib shape_predictor file; ``ModelError`` naming the file if it is not one."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ModelError(f"cannot read the landmark model {path}: {exc.strerror}") from exc
    try:
        tokens = decode_packed_ints(data)
        return _structure(_Tokens(tokens))
    except _Corrupt as exc:
        raise ModelError(f"{path} is not a usable dlib shape predictor model: {exc}") from None


class _Corrupt(Exception):
    pass


def decode_packed_ints(data: np.ndarray) -> np.ndarray:
    """Every packed int of ``data`` in order, as int64."""
    from ingest.analysis.engine.kernel import count_packed_ints, fill_packed_ints

    count, error_at = count_packed_ints(data)
    if error_at >= 0:
        if error_at == data.size:
            raise _Corrupt(f"the file is truncated (it ends inside a number; {data.size} bytes)")
        raise _Corrupt(f"byte {error_at} starts a number longer than 8 bytes")
    out = np.empty(count, np.int64)
    fill_packed_ints(data, out)
    return out


class _Tokens:
    """A cursor over the flat token array; every read is bounds-checked (truncation)."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens
        self.at = 0

    def take(self, n: int) -> np.ndarray:
        if n < 0 or self.at + n > self.tokens.size:
            raise _Corrupt("the file is truncated (it ends before the model does)")
        out = self.tokens[self.at : self.at + n]
        self.at += n
        return out

    def int(self, what: str, low: int = 0, high: int = 1 << 40) -> int:
        value = int(self.take(1)[0])
        if not low <= value <= high:
            raise _Corrupt(f"{what} is {value}, expected {low}..{high}")
        return value


def _floats(pairs: np.ndarray) -> np.ndarray:
    """(..., 2) mantissa/exponent pairs -> float32 (exactly: each value was a float32)."""
    mantissa, exponent = pairs[..., 0], pairs[..., 1]
    if np.abs(exponent[(exponent < _INF) | (exponent > _NAN)]).max(initial=0) > 1100:
        raise _Corrupt("a float has an impossible exponent")
    with np.errstate(over="ignore"):
        values = np.ldexp(mantissa.astype(np.float64), np.clip(exponent, -1100, 1100).astype(np.int32))
    values = np.where(exponent == _INF, np.inf, values)
    values = np.where(exponent == _NINF, -np.inf, values)
    values = np.where(exponent == _NAN, np.nan, values)
    return values.astype(np.float32)


def _structure(t: _Tokens) -> ShapeModel:
    version = t.int("the format version", 0, 1 << 20)
    if version != 1:
        raise _Corrupt(f"format version {version}, expected 1")
    rows, cols = -t.int("initial shape rows", -(1 << 20), 0), -t.int("initial shape columns", -1, -1)
    if rows < 2 or rows % 2 or cols != 1:
        raise _Corrupt(f"the initial shape is {rows}x{cols}, expected a column of x, y pairs")
    initial = _floats(t.take(2 * rows).reshape(rows, 2))
    cascades = t.int("the cascade count", 1, 1000)
    split_idx, split_thresh, leaves = [], [], []
    shape: tuple[int, int] | None = None  # (trees, splits) of the first cascade; all must match
    for c in range(cascades):
        trees = t.int(f"cascade {c}'s tree count", 1, 100_000)
        first = t.tokens[t.at : t.at + 1]
        splits = int(first[0]) if first.size else -1
        if shape is None:
            shape = (trees, splits)
        if (trees, splits) != shape or splits < 1 or (splits + 1) & splits:
            raise _Corrupt(f"cascade {c} has {trees} trees of {splits} splits; expected {shape[0]} of {shape[1]}")
        # a tree: [splits] splits x (idx1, idx2, mantissa, exponent) [leaves] leaves x (-rows, -1, rows x 2)
        nleaves = splits + 1
        stride = 1 + 4 * splits + 1 + nleaves * (2 + 2 * rows)
        block = t.take(trees * stride).reshape(trees, stride)
        head = block[:, 0]
        body = block[:, 1 : 1 + 4 * splits].reshape(trees, splits, 4)
        leaf_count = block[:, 1 + 4 * splits]
        leaf = block[:, 2 + 4 * splits :].reshape(trees, nleaves, 2 + 2 * rows)
        if (head != splits).any() or (leaf_count != nleaves).any():
            raise _Corrupt(f"cascade {c}: trees of different shapes")
        if (leaf[:, :, 0] != -rows).any() or (leaf[:, :, 1] != -1).any():
            raise _Corrupt(f"cascade {c}: leaves of the wrong size")
        split_idx.append(body[:, :, :2])
        split_thresh.append(_floats(body[:, :, 2:]))
        leaves.append(_floats(leaf[:, :, 2:].reshape(trees, nleaves, rows, 2)).reshape(trees, nleaves, rows))
    anchors = _per_cascade(t, cascades, "anchor", 1)
    deltas = _floats(_per_cascade(t, cascades, "delta", 4).reshape(cascades, -1, 2, 2))
    if t.at != t.tokens.size:
        raise _Corrupt(f"{t.tokens.size - t.at} numbers follow the model")
    features = anchors.shape[1]
    idx = np.stack(split_idx)
    if (anchors < 0).any() or (anchors >= rows // 2).any():
        raise _Corrupt("an anchor names a point the model does not have")
    if (idx < 0).any() or (idx >= features).any():
        raise _Corrupt("a split names a feature pixel the model does not have")
    return ShapeModel(
        initial_shape=initial,
        anchor_idx=anchors.astype(np.int32),
        deltas=deltas,
        split_idx=idx.astype(np.int32),
        split_thresh=np.stack(split_thresh),
        leaves=np.stack(leaves),
    )


def _per_cascade(t: _Tokens, cascades: int, what: str, width: int) -> np.ndarray:
    count = t.int(f"the {what} list count", cascades, cascades)
    rows: list[np.ndarray] = []
    for c in range(count):
        n = t.int(f"cascade {c}'s {what} count", 1, 1_000_000)
        if rows and n != rows[0].shape[0]:
            raise _Corrupt(f"cascade {c} has {n} {what}s, cascade 0 has {rows[0].shape[0]}")
        rows.append(t.take(n * width).reshape(n, width))
    return np.stack(rows)[..., 0] if width == 1 else np.stack(rows)
