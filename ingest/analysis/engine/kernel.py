"""dlib's shape predictor inference, re-implemented to give the same integer points, ~4x faster.

dlib spends most of a face waiting on memory: 15 cascades x 500 trees each add one 136-float leaf
row picked from a 62 MiB table, so every tree is a cache miss. Here, per cascade, the 500 leaf
indices are found first (branch-free descents over a packed node table), then the rows are added
in dlib's order while the rows of tree t+8 are prefetched; rows are padded to 64-byte lines.

Exactness (see README.md, "The landmark engine"): every float32 operation of dlib is done in float32 in the
same order (no fused multiply-add, no fast-math reassociation: ``fastmath`` stays off), the
similarity transform in float64 as dlib accumulates it, leaves added one tree at a time into the
shape, and pixel positions rounded as dlib does, ``floor(x + 0.5)``. The box's unnormalizing
transform is the textbook ``[[w, 0], [0, h]] + (left, top)``; dlib's SVD-based one differs by
~1e-13, which changed no point on the fixtures (the tests compare every point with dlib's).

Compiled once by numba (10-30 s) and cached under the user's cache folder (``NUMBA_CACHE_DIR``,
set here unless the environment sets it): later processes load it in well under a second.
"""

from __future__ import annotations

import os

from ingest.config import cache_dir
from ingest.exceptions import EngineUnavailableError

os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))

try:
    import numba
    import numpy as np
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic
except ImportError as exc:  # pragma: no cover - exercised by the CLI's engine check
    raise EngineUnavailableError(
        f"the numba landmark engine needs numba ({exc.name} is not installed: pip install numba); "
        "or set landmark_engine=dlib"
    ) from None

ROW_ALIGN = 16  # float32s per 64-byte cache line
PREFETCH_AHEAD = 8  # trees: far enough to hide a miss, near enough to stay in L1


@intrinsic
def _prefetch(typingctx, array, flat_index):  # numba's typing signature: untyped by design
    """``llvm.prefetch`` (read, keep in all cache levels) of ``array``'s element at a flat index."""

    def codegen(context, builder, signature, args):
        arrty = signature.args[0]
        ary = context.make_array(arrty)(context, builder, args[0])
        address = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [address, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, flat_index), codegen


_JIT = {"cache": True, "nogil": True, "fastmath": False, "boundscheck": False, "error_model": "numpy"}


@numba.njit(**_JIT)
def count_packed_ints(data: np.ndarray) -> tuple[int, int]:
    """(how many dlib packed ints ``data`` holds, -1) or (count so far, offset of the bad one)."""
    n = data.size
    at = 0
    count = 0
    while at < n:
        size = data[at] & 0x0F
        if size > 8:
            return count, at
        if at + 1 + size > n:
            return count, n
        at += 1 + size
        count += 1
    return count, -1


@numba.njit(**_JIT)
def fill_packed_ints(data: np.ndarray, out: np.ndarray) -> None:
    at = 0
    for k in range(out.size):
        control = data[at]
        size = control & 0x0F
        value = np.uint64(0)
        for b in range(size):
            value |= np.uint64(data[at + 1 + b]) << np.uint64(8 * b)
        signed = np.int64(value)
        out[k] = -signed if control & 0x80 else signed
        at += 1 + size


@numba.njit(**_JIT)
def _mean(shape: np.ndarray) -> tuple:
    """Mean point of an x, y, x, y ... float32 shape, accumulated in float64 as dlib does."""
    points = shape.size // 2
    mx = 0.0
    my = 0.0
    for i in range(points):
        mx += np.float64(shape[2 * i])
        my += np.float64(shape[2 * i + 1])
    return mx / points, my / points


@numba.njit(**_JIT)
def _similarity(initial: np.ndarray, from_dev: np.ndarray, sigma_from: float, shape: np.ndarray) -> tuple:
    """The 2x2 part of dlib's find_similarity_transform(initial -> shape), as float32.

    dlib solves it with an SVD (Umeyama); in 2-D the scaled rotation has the closed form
    [[a, -b], [b, a]] / sigma_from with a = cov00 + cov11, b = cov10 - cov01."""
    points = shape.size // 2
    mx, my = _mean(shape)
    c00 = 0.0
    c01 = 0.0
    c10 = 0.0
    c11 = 0.0
    for i in range(points):
        tx = np.float64(shape[2 * i]) - mx
        ty = np.float64(shape[2 * i + 1]) - my
        fx = from_dev[2 * i]
        fy = from_dev[2 * i + 1]
        c00 += tx * fx
        c01 += tx * fy
        c10 += ty * fx
        c11 += ty * fy
    a = (c00 / points + c11 / points) / sigma_from
    b = (c10 / points - c01 / points) / sigma_from
    return np.float32(a), np.float32(-b), np.float32(b), np.float32(a)


@numba.njit(**_JIT)
def _initial_stats(initial: np.ndarray) -> tuple:
    """Deviations of the initial shape from its mean (float64) and its sigma, as dlib computes them."""
    points = initial.size // 2
    mx, my = _mean(initial)
    dev = np.empty(initial.size, np.float64)
    sigma = 0.0
    for i in range(points):
        dx = np.float64(initial[2 * i]) - mx
        dy = np.float64(initial[2 * i + 1]) - my
        dev[2 * i] = dx
        dev[2 * i + 1] = dy
        sigma += dx * dx + dy * dy
    return dev, sigma / points


@numba.njit(**_JIT)
def fit_boxes(
    image: np.ndarray,  # (h, w) uint8, C-contiguous
    boxes: np.ndarray,  # (n, 4) int64: left, top, right, bottom (dlib.rectangle, inclusive)
    initial: np.ndarray,  # (2P,) float32
    anchors: np.ndarray,  # (C, F) int32
    deltas: np.ndarray,  # (C, F, 2) float32
    nodes: np.ndarray,  # (C, T, S) int32: idx1 | idx2 << 16
    thresh: np.ndarray,  # (C, T, S) float32
    leaves: np.ndarray,  # (C, T, S + 1, R) float32, R = 2P rounded up to a cache line
    out: np.ndarray,  # (n, P, 2) int32
) -> None:
    height, width = image.shape
    cascades, trees, splits = thresh.shape
    features = anchors.shape[1]
    coords = initial.size
    row = leaves.shape[3]
    per_tree = leaves.shape[2] * row
    per_cascade = trees * per_tree
    from_dev, sigma_from = _initial_stats(initial)
    shape = np.empty(coords, np.float32)
    pixels = np.empty(features, np.float32)
    leaf_at = np.empty(trees, np.int64)  # flat offset of each tree's chosen leaf row
    for b in range(boxes.shape[0]):
        scale_x = np.float64(boxes[b, 2] - boxes[b, 0])
        scale_y = np.float64(boxes[b, 3] - boxes[b, 1])
        left = np.float64(boxes[b, 0])
        top = np.float64(boxes[b, 1])
        shape[:] = initial
        for c in range(cascades):
            m00, m01, m10, m11 = _similarity(initial, from_dev, sigma_from, shape)
            for f in range(features):
                anchor = np.uint64(anchors[c, f])
                dx = deltas[c, f, 0]
                dy = deltas[c, f, 1]
                px = (m00 * dx + m01 * dy) + shape[np.uint64(2) * anchor]
                py = (m10 * dx + m11 * dy) + shape[np.uint64(2) * anchor + np.uint64(1)]
                qx = np.floor(scale_x * np.float64(px) + left + 0.5)
                qy = np.floor(scale_y * np.float64(py) + top + 0.5)
                if 0.0 <= qx <= width - 1 and 0.0 <= qy <= height - 1:  # dlib: get_rect(img).contains(p)
                    pixels[f] = np.float32(image[np.uint64(qy), np.uint64(qx)])
                else:
                    pixels[f] = np.float32(0)
            base = c * per_cascade
            for t in range(trees):
                node = np.int64(0)
                while node < splits:
                    packed = np.uint32(nodes[c, t, node])
                    diff = pixels[packed & np.uint32(0xFFFF)] - pixels[packed >> np.uint32(16)]
                    node = 2 * node + 2 - np.int64(diff > thresh[c, t, node])  # dlib: > goes left
                leaf_at[t] = base + t * per_tree + (node - splits) * row
            flat = leaves.reshape(-1)
            for t in range(min(PREFETCH_AHEAD, trees)):
                for k in range(0, row, ROW_ALIGN):
                    _prefetch(flat, leaf_at[t] + k)
            for t in range(trees):
                if t + PREFETCH_AHEAD < trees:
                    ahead = leaf_at[t + PREFETCH_AHEAD]
                    for k in range(0, row, ROW_ALIGN):
                        _prefetch(flat, ahead + k)
                at = np.uint64(leaf_at[t])  # unsigned: numba then emits no negative-index fix-up,
                for k in range(np.uint64(coords)):  # and LLVM vectorizes the add
                    shape[k] += flat[at + k]
        for i in range(coords // 2):
            out[b, i, 0] = np.int32(np.floor(scale_x * np.float64(shape[2 * i]) + left + 0.5))
            out[b, i, 1] = np.int32(np.floor(scale_y * np.float64(shape[2 * i + 1]) + top + 0.5))


def aligned_rows(leaves: np.ndarray) -> np.ndarray:
    """(C, T, L, 2P) leaves copied into rows padded to whole 64-byte lines, the base aligned too."""
    c, t, n, coords = leaves.shape
    row = -(-coords // ROW_ALIGN) * ROW_ALIGN
    raw = np.empty(c * t * n * row + ROW_ALIGN, np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    out = raw[skip : skip + c * t * n * row].reshape(c, t, n, row)
    out[..., coords:] = 0
    out[..., :coords] = leaves
    return out


def compile_kernels() -> None:
    """Compile (or load from the cache) every kernel on tiny dummy arrays of the real types."""
    fill_packed_ints(np.zeros(2, np.uint8), np.empty(count_packed_ints(np.zeros(2, np.uint8))[0], np.int64))
    initial = np.zeros(4, np.float32)
    initial[2] = initial[3] = 1
    fit_boxes(
        np.zeros((8, 8), np.uint8), np.array([[1, 1, 6, 6]], np.int64), initial, np.zeros((1, 1), np.int32),
        np.zeros((1, 1, 2), np.float32), np.zeros((1, 1, 1), np.int32), np.zeros((1, 1, 1), np.float32),
        aligned_rows(np.zeros((1, 1, 2, 4), np.float32)), np.empty((1, 2, 2), np.int32),
    )  # fmt: skip
