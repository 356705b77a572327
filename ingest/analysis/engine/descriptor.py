"""dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``) without dlib's DNN.

The dlib-bin wheel is built without BLAS, so ``face_recognition_model_v1.compute_face_descriptor``
costs ~57 ms a face here (BENCHMARKS.md). This module reads the network's weights out of dlib's own serialized file,
rebuilds the same network as an ONNX graph and runs it with onnxruntime (one thread), giving the
same 128-d vectors (float32 arithmetic in a different order: ~1e-6 apart) at a fraction of the cost.

Self-contained (numpy, cv2, dlib, face_recognition_models, onnx, onnxruntime; of camingest only
its cache folder): the engine is a setting (``descriptor_engine``) chosen by ingest/analysis/identity.py.

    d = Descriptor()                                   # engine="onnxruntime" (default)
    v = d.compute(rgb, (x, y, w, h), points_68x2)      # (128,) float64, as dlib's
    m = d.compute_many(rgb, [(box, points), ...])      # (n, 128): one batched forward pass
    Descriptor(engine="dlib")                          # the switch back to dlib's own network

Engines: onnxruntime (default), opencv, numpy, dlib. The extracted weights (.npz) and the graph
(.onnx) are cached in camingest's cache folder (``models/``, ingest/config.py ``cache_dir``), keyed by
the model file's size and mtime, as the landmark model's arrays are (engine/model.py).

Dependencies: onnxruntime (the engine); onnx only to build the graph when it is not cached.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ingest.config import cache_dir as camingest_cache_dir

log = logging.getLogger(__name__)

CHIP_SIZE = 150  # input_rgb_image_sized<150>
CHIP_PADDING = 0.25  # compute_face_descriptor's default padding
ENGINES = ("onnxruntime", "opencv", "numpy", "dlib")
# bump when the layout of the cached .npz changes
_CACHE_FORMAT = 1

# dlib's anet_type (tools/python/src/face_recognition.cpp, examples/dnn_face_recognition_ex.cpp):
#   loss_metric<fc_no_bias<128,avg_pool_everything<alevel0<alevel1<alevel2<alevel3<alevel4<
#   max_pool<3,3,2,2,relu<affine<con<32,7,7,2,2,input_rgb_image_sized<150>>>>>>>>>>>>
# with alevel4 = 3x ares<32>, alevel3 = ares_down<64> + 3x ares<64>, alevel2 = ares_down<128> +
# 2x ares<128>, alevel1 = ares_down<256> + 2x ares<256>, alevel0 = ares_down<256>.
# (filters, downsampling) of each residual block, in forward order:
BLOCKS: tuple[tuple[int, bool], ...] = (
    ((32, False),) * 3
    + ((64, True),)
    + ((64, False),) * 3
    + ((128, True),)
    + ((128, False),) * 2
    + ((256, True),)
    + ((256, False),) * 2
    + ((256, True),)
)


# ---------------------------------------------------------------------------------------------
# dlib's serialization format (dlib/serialize.h, dlib/cuda/tensor.h, dlib/dnn/*.h)
# ---------------------------------------------------------------------------------------------


class ModelFormatError(ValueError):
    """The file is not the network this module knows (or not a dlib network file at all)."""


class _Reader:
    """Reads dlib's ``serialize`` primitives from a bytes buffer."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def fail(self, what: str) -> ModelFormatError:
        return ModelFormatError(f"{what} at byte {self.pos}")

    def integer(self) -> int:
        # integers: one control byte (bit 7: negative, low 4 bits: byte count), then the
        # magnitude little-endian in that many bytes (ser_helper::pack_int)
        if self.pos >= len(self.data):
            raise self.fail("unexpected end of file")
        ctl = self.data[self.pos]
        size = ctl & 0x0F
        if not 1 <= size <= 8 or ctl & 0x70:
            raise self.fail(f"bad integer control byte {ctl:#x}")
        start = self.pos + 1
        value = int.from_bytes(self.data[start : start + size], "little")
        self.pos = start + size
        return -value if ctl & 0x80 else value

    def real(self) -> float:
        # float/double: float_details, i.e. an int64 mantissa and an int16 exponent (both in the
        # integer format above): value = mantissa * 2**exponent. The control byte never has a bit
        # of 0x70 set; the pre-2013 ASCII format always does (deserialize_floating_point).
        if self.data[self.pos] & 0x70:
            raise self.fail("ASCII floating point (pre-2013 dlib) is not supported")
        mantissa = self.integer()
        exponent = self.integer()
        if exponent >= 32000:  # float_details::is_inf / is_ninf / is_nan
            return {32000: math.inf, 32001: -math.inf}.get(exponent, math.nan)
        return math.ldexp(mantissa, exponent)

    def string(self) -> str:
        n = self.integer()
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("latin-1")

    def flag(self) -> bool:
        # bools are the ASCII characters '0' and '1'
        ch = self.data[self.pos : self.pos + 1]
        if ch not in (b"0", b"1"):
            raise self.fail(f"bad bool {ch!r}")
        self.pos += 1
        return ch == b"1"

    def version(self, allowed: Iterable[int], what: str) -> int:
        v = self.integer()
        if v not in allowed:
            raise self.fail(f"{what}: unexpected version {v}")
        return v

    def tag(self, allowed: Iterable[str], what: str) -> str:
        start = self.pos
        try:
            s: str | None = self.string()
        except (ModelFormatError, IndexError):
            s = None
        if s is None or s not in allowed:
            self.pos = start
            raise self.fail(f"expected {what} ({', '.join(allowed)}), found {s!r}")
        return s

    def tensor(self) -> np.ndarray:
        # resizable_tensor: version 2, num_samples, k, nr, nc, then raw little-endian float32
        self.version((2,), "tensor")
        shape = tuple(self.integer() for _ in range(4))
        n = math.prod(shape)
        if self.pos + 4 * n > len(self.data):
            raise self.fail("tensor past the end of the file")
        array = np.frombuffer(self.data, "<f4", n, self.pos).reshape(shape)
        self.pos += 4 * n
        return array

    def alias_tensor(self) -> tuple[int, int, int, int]:
        # alias_tensor: only a shape (an offset into the layer's params tensor is implied)
        self.version((1,), "alias_tensor")
        a, b, c, d = (self.integer() for _ in range(4))
        return a, b, c, d


# the kinds of node of the network, outermost first, as dlib nests them (add_layer, add_tag_layer,
# add_skip_layer); serialize(add_layer) writes its version, then its subnetwork, then its own layer:
# the file holds every version header outermost-first, then every layer innermost-first.
@dataclass(frozen=True)
class _Node:
    kind: str  # con, affine, relu, max_pool, avg_pool, add_prev, fc, tag, skip
    args: tuple[int, ...] = ()


def _forward_nodes() -> list[_Node]:
    """dlib's layers in forward order (innermost first), tags and skips included."""
    nodes = [_Node("con", (32, 7, 7, 2, 2)), _Node("affine"), _Node("relu"), _Node("max_pool", (3, 3, 2, 2))]
    for filters, down in BLOCKS:
        stride = 2 if down else 1
        # block = affine<con<N,3,3,1,1,relu<affine<con<N,3,3,stride,stride,SUBNET>>>>>
        block = [
            _Node("con", (filters, 3, 3, stride, stride)),
            _Node("affine"),
            _Node("relu"),
            _Node("con", (filters, 3, 3, 1, 1)),
            _Node("affine"),
        ]
        if down:
            # residual_down = add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<..,2,tag1<SUBNET>>>>>>
            nodes += [
                _Node("tag"),
                *block,
                _Node("tag"),
                _Node("skip"),
                _Node("avg_pool", (2, 2, 2, 2)),
                _Node("add_prev"),
            ]
        else:
            # residual = add_prev1<block<..,1,tag1<SUBNET>>>
            nodes += [_Node("tag"), *block, _Node("add_prev")]
        nodes.append(_Node("relu"))
    nodes += [_Node("avg_pool", (0, 0, 1, 1)), _Node("fc", (128,))]
    return nodes


def parse_dlib_model(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every parameter of dlib's face recognition network, read from its serialized file.

    Returns arrays: ``avg_rgb`` (3,), ``conv{i}_w`` (out, in, kh, kw), ``conv{i}_b`` (out,),
    ``conv_geom`` (n, 4: stride_y, stride_x, pad_y, pad_x), ``affine{i}_g``/``affine{i}_b`` (c,),
    ``fc_w`` (256, 128), in forward order. Checks every layer against the expected architecture."""
    r = _Reader(Path(path).read_bytes())
    # add_loss_layer: version 1, the loss (loss_metric_: margin, distance threshold), the network
    r.version((1,), "add_loss_layer")
    if r.tag(("loss_metric_", "loss_metric_2"), "loss_metric_") == "loss_metric_2":
        r.real()
        r.real()

    forward = _forward_nodes()
    versions: list[int] = []
    for i, node in enumerate(reversed(forward)):
        innermost = i == len(forward) - 1
        if node.kind in ("tag", "skip"):
            versions.append(r.version((1,), f"add_{node.kind}_layer"))
        else:
            # the add_layer whose subnetwork is the input layer is another specialization
            versions.append(r.version((2, 3) if innermost else (1, 2), "add_layer"))
    versions.reverse()

    out: dict[str, np.ndarray] = {}
    r.tag(("input_rgb_image_sized",), "input layer")
    out["avg_rgb"] = np.array([r.real(), r.real(), r.real()], np.float32)
    if (r.integer(), r.integer()) != (CHIP_SIZE, CHIP_SIZE):
        raise r.fail("the input layer is not 150x150")

    convs: list[tuple[np.ndarray, np.ndarray]] = []
    geoms: list[tuple[int, int, int, int]] = []
    affines: list[tuple[np.ndarray, np.ndarray]] = []
    for i, (node, version) in enumerate(zip(forward, versions, strict=True)):
        if node.kind in ("tag", "skip"):
            continue  # no state of their own
        if node.kind == "con":
            w, b, geom = _read_con(r, node)
            convs.append((w, b))
            geoms.append(geom)
        elif node.kind == "affine":
            affines.append(_read_affine(r))
        elif node.kind == "relu":
            if r.tag(("relu_", "relu_2"), "relu_") == "relu_2" and r.flag():
                raise r.fail("disabled relu_ (fused into the conv) is not supported")
        elif node.kind in ("max_pool", "avg_pool"):
            r.tag((f"{node.kind}_2",), f"{node.kind}_")
            pool = tuple(r.integer() for _ in range(6))
            # padding defaults to 0 for a stride != 1 (max_pool_/avg_pool_ template defaults)
            if pool != (*node.args, 0, 0):
                raise r.fail(f"{node.kind} {pool} is not {node.args}")
        elif node.kind == "add_prev":
            r.tag(("add_prev_",), "add_prev_")
        elif node.kind == "fc":
            out["fc_w"] = _read_fc(r, node)
        # add_layer's own state after its layer: three bools, x_grad, cached_output and (version
        # 2) params_grad; the input specialization: grad_final and (version 3) the sample expansion
        for _ in range(3):
            r.flag()
        r.tensor()
        r.tensor()
        if i == 0:
            r.tensor()
            if version == 3:
                r.integer()
        elif version == 2:
            r.tensor()
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} bytes left over after the network")

    for j, (w, b) in enumerate(convs):
        out[f"conv{j}_w"] = w
        out[f"conv{j}_b"] = b
    out["conv_geom"] = np.array(geoms, np.int64)
    for j, (g, b) in enumerate(affines):
        out[f"affine{j}_g"] = g
        out[f"affine{j}_b"] = b
    return out


def _read_con(r: _Reader, node: _Node) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    version = r.tag(("con_4", "con_5", "con_6"), "con_")
    params = r.tensor().reshape(-1)
    num_filters, nr, nc, stride_y, stride_x, pad_y, pad_x = (r.integer() for _ in range(7))
    filters = r.alias_tensor()
    biases = r.alias_tensor()
    for _ in range(4):  # learning rate and weight decay multipliers
        r.real()
    use_bias = r.flag() if version in ("con_5", "con_6") else True
    if version == "con_6" and r.flag():
        raise r.fail("con_ with a fused relu is not supported")
    if (num_filters, nr, nc, stride_y, stride_x) != node.args:
        raise r.fail(f"con {(num_filters, nr, nc, stride_y, stride_x)} is not {node.args}")
    # con_'s padding defaults to filter/2 for stride 1 ("same") and 0 for stride 2 (so the 7x7/2
    # stem maps 150 -> 72 and a 3x3/2 conv 35 -> 17); the file records it, we use what it says
    n_w = math.prod(filters)
    w = params[:n_w].reshape(filters).copy()  # (out, in, kh, kw): dlib's filter layout is ONNX's
    # con_5 and later may have no bias (then params holds only the filters)
    b = params[n_w : n_w + math.prod(biases)].copy() if use_bias else np.zeros(num_filters, np.float32)
    if w.shape[0] != num_filters or b.shape != (num_filters,):
        raise r.fail("con_ parameters do not match its filters")
    return w, b, (stride_y, stride_x, pad_y, pad_x)


def _read_affine(r: _Reader) -> tuple[np.ndarray, np.ndarray]:
    version = r.tag(("affine_", "affine_2", "bn_con2", "bn_fc2"), "affine_")
    if version.startswith("bn_"):
        # a network saved while training (bn_con): dlib converts it to affine_ on load; this
        # file was not saved that way, and supporting it would be the conversion below
        raise r.fail("batch-norm layers (a training snapshot) are not supported")
    params = r.tensor().reshape(-1)
    gamma = r.alias_tensor()
    beta = r.alias_tensor()
    mode = r.integer()
    if version == "affine_2" and r.flag():
        raise r.fail("disabled affine_ (fused into the conv) is not supported")
    if mode != 0:  # CONV_MODE: one gamma and beta per channel
        raise r.fail("affine_ in FC_MODE where CONV_MODE was expected")
    n = math.prod(gamma)
    if math.prod(beta) != n or params.size != 2 * n:
        raise r.fail("affine_ parameters do not match gamma/beta")
    return params[:n].copy(), params[n:].copy()


def _read_fc(r: _Reader, node: _Node) -> np.ndarray:
    version = r.tag(("fc_2", "fc_3"), "fc_")
    num_outputs = r.integer()
    num_inputs = r.integer()
    params = r.tensor()
    weights = r.alias_tensor()
    r.alias_tensor()  # biases
    bias_mode = r.integer()
    for _ in range(4):
        r.real()
    if version == "fc_3":
        r.flag()
    if num_outputs != node.args[0] or bias_mode != 1:  # FC_NO_BIAS
        raise r.fail("fc_ is not fc_no_bias<128>")
    # weights: (num_inputs, num_outputs), output = input @ weights (fc_::forward's gemm)
    return params.reshape(-1)[: math.prod(weights)].reshape(num_inputs, num_outputs).copy()


# ---------------------------------------------------------------------------------------------
# the weight cache
# ---------------------------------------------------------------------------------------------


def default_model_path() -> str:
    import face_recognition_models

    return str(face_recognition_models.face_recognition_model_location())


def cache_dir() -> Path:
    """Where the weights and graph are cached (never the repo), beside the landmark model's."""
    return camingest_cache_dir() / "models"


def cache_path(model_path: str | os.PathLike[str], suffix: str = ".npz") -> Path:
    st = os.stat(model_path)
    # keyed by size and mtime: a replaced model file gets a new cache entry
    return cache_dir() / f"{Path(model_path).stem}-{st.st_size}-{st.st_mtime_ns}-v{_CACHE_FORMAT}{suffix}"


def load_weights(model_path: str | os.PathLike[str] | None = None, use_cache: bool = True) -> dict[str, np.ndarray]:
    """The network's weights (``parse_dlib_model``): from the cache if it has them, else parsed
    and cached."""
    path = str(model_path or default_model_path())
    target = cache_path(path)
    if use_cache:
        try:
            with np.load(target) as npz:
                return {k: npz[k] for k in npz.files}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("ignoring the unreadable descriptor model cache %s: %s", target, exc)
    weights = parse_dlib_model(path)
    if use_cache:
        _write_atomically(target, lambda f: np.savez(f, allow_pickle=False, **weights))
    return weights


def load_onnx(model_path: str | os.PathLike[str] | None = None, use_cache: bool = True) -> bytes:
    """The network as a serialized ONNX model (``build_onnx``), cached like the weights: a
    worker that finds it cached needs neither the .dat file's parse nor the onnx package."""
    path = str(model_path or default_model_path())
    target = cache_path(path, ".onnx")
    if use_cache:
        with contextlib.suppress(FileNotFoundError):
            return target.read_bytes()
    model = build_onnx(load_weights(path, use_cache))
    if use_cache:
        _write_atomically(target, lambda f: f.write(model))
    return model


def _write_atomically(target: Path, write: Any) -> None:
    # written next to its final name then renamed: concurrent workers never see half a file, and
    # two writing at once each rename a complete one. A cache that cannot be written (read-only
    # home) is no reason to fail: the next start parses again.
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is no secret
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        log.info("descriptor model cache %s not written (%s); it is rebuilt at every start", target, exc)


# ---------------------------------------------------------------------------------------------
# the network as an ONNX graph
# ---------------------------------------------------------------------------------------------


def build_onnx(weights: dict[str, np.ndarray], opset: int = 17) -> bytes:
    """dlib's network as a serialized ONNX model: input ``chips`` (n, 150, 150, 3) uint8 RGB face
    chips (``chips``), output ``descriptors`` (n, 128) float32, dlib's input normalization included."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []
    counter = iter(range(10**6))

    def name(prefix: str) -> str:
        return f"{prefix}_{next(counter)}"

    def const(array: np.ndarray, prefix: str) -> str:
        n = name(prefix)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), n))
        return n

    def op(kind: str, inputs: list[str], **attrs: Any) -> str:
        out = name(kind.lower())
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    geoms = weights["conv_geom"]
    conv_i = iter(range(len(geoms)))
    affine_i = iter(range(10**6))

    def conv(x: str, size: int) -> tuple[str, int]:
        j = next(conv_i)
        w = weights[f"conv{j}_w"]
        sy, sx, py, px = (int(v) for v in geoms[j])
        y = op(
            "Conv",
            [x, const(w, "w"), const(weights[f"conv{j}_b"], "b")],
            kernel_shape=list(w.shape[2:]),
            strides=[sy, sx],
            pads=[py, px, py, px],
        )
        # dlib's output size: 1 + (in + 2*pad - filter) / stride, rounded down, as ONNX's
        return y, 1 + (size + 2 * py - w.shape[2]) // sy

    def affine(x: str) -> str:
        # affine_ in CONV_MODE: x * gamma[c] + beta[c]; kept apart from the conv (as dlib computes
        # it) and left to onnxruntime to fold into the conv
        j = next(affine_i)
        g = weights[f"affine{j}_g"].reshape(1, -1, 1, 1)
        b = weights[f"affine{j}_b"].reshape(1, -1, 1, 1)
        return op("Add", [op("Mul", [x, const(g, "g")]), const(b, "beta")])

    # input_rgb_image_sized::to_tensor: planar float32, (pixel - mean) / 256; the subtraction is
    # float32 as dlib's, and multiplying by 1/256 is exact: bit for bit dlib's input tensor
    x = op("Transpose", [op("Cast", ["chips"], to=TensorProto.FLOAT)], perm=[0, 3, 1, 2])
    x = op("Sub", [x, const(weights["avg_rgb"].astype(np.float32).reshape(1, 3, 1, 1), "avg_rgb")])
    x = op("Mul", [x, const(np.array(1 / 256, np.float32), "scale")])
    x, size = conv(x, CHIP_SIZE)
    x = op("Relu", [affine(x)])
    # max_pool<3,3,2,2>: padding 0 for stride 2 (dlib's default), 72 -> 35
    x = op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0])
    size = 1 + (size - 3) // 2
    channels = int(weights["conv0_w"].shape[0])
    for filters, down in BLOCKS:
        skip, skip_size, skip_channels = x, size, channels
        y, size = conv(x, size)
        y = op("Relu", [affine(y)])
        y, size = conv(y, size)
        y = affine(y)
        if down:
            # the skip is avg_pool<2,2,2,2> of the block's input (padding 0), 35 -> 17 ...
            skip = op("AveragePool", [skip], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0])
            skip_size = 1 + (skip_size - 2) // 2
        # add_prev_ adds tensors of different shapes: the output takes the larger of each
        # dimension and each input counts as zero outside itself (cpu::add). Two cases here: the
        # skip has fewer channels (32 -> 64 ...), and at 8x8 -> the conv gives 3x3 but the
        # avg_pool 4x4, so the block's output is padded at the bottom and right.
        out_size = max(size, skip_size)
        if size < out_size:
            pad = const(np.array([0, 0, 0, 0, 0, 0, out_size - size, out_size - size], np.int64), "pad")
            y = op("Pad", [y, pad])
        if skip_size < out_size:
            pad = const(np.array([0, 0, 0, 0, 0, 0, out_size - skip_size, out_size - skip_size], np.int64), "pad")
            skip = op("Pad", [skip, pad])
        if skip_channels < filters:
            pad = const(np.array([0, 0, 0, 0, 0, filters - skip_channels, 0, 0], np.int64), "pad")
            skip = op("Pad", [skip, pad])
        elif skip_channels > filters:
            raise ModelFormatError("a block with fewer channels than its input")
        x = op("Relu", [op("Add", [y, skip])])
        size, channels = out_size, filters
    # avg_pool_everything then fc_no_bias<128>; loss_metric's output is the fc output as it is
    # (to_label copies it: no normalization)
    x = op("Flatten", [op("GlobalAveragePool", [x])], axis=1)
    nodes.append(helper.make_node("MatMul", [x, const(weights["fc_w"], "fc")], ["descriptors"]))

    graph = helper.make_graph(
        nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("chips", TensorProto.UINT8, ["n", CHIP_SIZE, CHIP_SIZE, 3])],
        [helper.make_tensor_value_info("descriptors", TensorProto.FLOAT, ["n", 128])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="camingest")
    model.ir_version = 8  # readable by onnxruntime >= 1.10 and OpenCV's importer
    onnx.checker.check_model(model)
    return model.SerializeToString()


# ---------------------------------------------------------------------------------------------
# chips (what dlib does before the network; its input normalization is in the graph)
# ---------------------------------------------------------------------------------------------


def full_object_detection(box_xywh: Sequence[float], points: np.ndarray | Sequence[Sequence[float]]) -> Any:
    """dlib's shape from a box (x, y, w, h) and 68 points, as ``ingest.identity.describe`` builds it."""
    import dlib

    x, y, w, h = (int(v) for v in box_xywh)
    return dlib.full_object_detection(
        dlib.rectangle(x, y, x + w - 1, y + h - 1), [dlib.point(int(px), int(py)) for px, py in points]
    )


def chips(rgb: np.ndarray, shapes: Sequence[Any]) -> np.ndarray:
    """(n, 150, 150, 3) uint8 face chips, exactly compute_face_descriptor's: dlib's own
    get_face_chip_details(shape, 150, 0.25) + extract_image_chips (python's get_face_chips)."""
    import dlib

    rgb = np.ascontiguousarray(rgb)
    if len(shapes) == 1:
        return dlib.get_face_chip(rgb, shapes[0], size=CHIP_SIZE, padding=CHIP_PADDING)[None]
    return np.stack(dlib.get_face_chips(rgb, _detections(shapes), size=CHIP_SIZE, padding=CHIP_PADDING))


def _detections(shapes: Sequence[Any]) -> Any:
    import dlib

    detections = dlib.full_object_detections()
    detections.extend(shapes)
    return detections


# ---------------------------------------------------------------------------------------------
# engines
# ---------------------------------------------------------------------------------------------


class _OrtEngine:
    def __init__(self, onnx_bytes: bytes, threads: int) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # one process per core: never spin a core waiting for work that will not come
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"chips": x})[0]


class _OpenCvEngine:
    def __init__(self, onnx_bytes: bytes, threads: int) -> None:
        import cv2

        cv2.setNumThreads(threads)  # process-wide: OpenCV has no per-net thread count
        self.net = cv2.dnn.readNetFromONNX(np.frombuffer(onnx_bytes, np.uint8))
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.net.setInput(x)
        return self.net.forward()


class _NumpyEngine:
    """im2col + matmul with numpy's BLAS (OpenBLAS in the numpy wheels; its thread count is
    the process's, set OPENBLAS_NUM_THREADS=1 before importing numpy for one thread)."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.w = weights
        self.avg_rgb = weights["avg_rgb"]
        geoms = weights["conv_geom"]
        self.convs = []
        for j in range(len(geoms)):
            w = weights[f"conv{j}_w"]
            g = weights[f"affine{j}_g"]
            # the affine folded into the conv (float32 rounding differs by ~1e-7 relative)
            wm = (w * g.reshape(-1, 1, 1, 1)).reshape(w.shape[0], -1).T.copy()
            b = weights[f"conv{j}_b"] * g + weights[f"affine{j}_b"]
            self.convs.append((wm, b.astype(np.float32), w.shape[2], *(int(v) for v in geoms[j])))

    def _conv(self, x: np.ndarray, j: int) -> np.ndarray:
        wm, b, k, sy, _sx, p, _px = self.convs[j]
        n, h, w_, c = x.shape
        if p:
            x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        oh = 1 + (h + 2 * p - k) // sy
        ow = 1 + (w_ + 2 * p - k) // sy
        s = x.strides
        cols = np.lib.stride_tricks.as_strided(
            x, (n, oh, ow, k, k, c), (s[0], s[1] * sy, s[2] * sy, s[1], s[2], s[3]), writeable=False
        ).reshape(n * oh * ow, k * k * c)
        return (cols @ wm + b).reshape(n, oh, ow, -1)

    def __call__(self, chips_nhwc: np.ndarray) -> np.ndarray:
        # NHWC throughout: an im2col row (kh, kw, in) is then contiguous runs of the input
        x = chips_nhwc.astype(np.float32)
        x -= self.avg_rgb
        x *= np.float32(1 / 256)
        x = np.maximum(self._conv(x, 0), 0)
        n, h, _, c = x.shape
        oh = 1 + (h - 3) // 2
        pooled = np.full((n, oh, oh, c), -np.inf, np.float32)
        for dy in range(3):
            for dx in range(3):
                np.maximum(pooled, x[:, dy : dy + 2 * oh : 2, dx : dx + 2 * oh : 2], out=pooled)
        x = pooled
        j = 1
        for filters, down in BLOCKS:
            y = np.maximum(self._conv(x, j), 0)
            y = self._conv(y, j + 1)
            j += 2
            skip = x
            if down:
                s2 = skip.shape[1] // 2
                skip = skip[:, : 2 * s2, : 2 * s2].reshape(n, s2, 2, s2, 2, -1).mean(axis=(2, 4), dtype=np.float32)
            size = max(y.shape[1], skip.shape[1])
            out = np.zeros((n, size, size, filters), np.float32)
            out[:, : y.shape[1], : y.shape[2]] += y
            out[:, : skip.shape[1], : skip.shape[2], : skip.shape[3]] += skip
            x = np.maximum(out, 0)
        return x.mean(axis=(1, 2), dtype=np.float32) @ self.w["fc_w"]


def _fold_for_numpy(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # conv filters as (out, kh, kw, in) so that flattening matches NHWC im2col columns
    w = dict(weights)
    for j in range(len(weights["conv_geom"])):
        w[f"conv{j}_w"] = weights[f"conv{j}_w"].transpose(0, 2, 3, 1)
    return w


@cache
def _dlib_model(model_path: str) -> Any:
    import dlib

    return dlib.face_recognition_model_v1(model_path)


def dlib_descriptor(
    rgb: np.ndarray,
    box_xywh: Sequence[float],
    points_68x2: np.ndarray | Sequence[Sequence[float]],
    model_path: str | None = None,
) -> np.ndarray:
    """The reference: dlib's own ``compute_face_descriptor`` (128,) float64."""
    shape = full_object_detection(box_xywh, points_68x2)
    model = _dlib_model(model_path or default_model_path())
    return np.array(model.compute_face_descriptor(np.ascontiguousarray(rgb), shape))


class Descriptor:
    """dlib's face descriptor, computed by ``engine`` (onnxruntime unless told otherwise)."""

    def __init__(self, model_path: str | None = None, engine: str | None = None, threads: int = 1) -> None:
        self.model_path = model_path or default_model_path()
        self.engine = engine or "onnxruntime"
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        self._run: Any = None
        if self.engine == "dlib":
            self._dlib = _dlib_model(self.model_path)
            return
        if self.engine == "numpy":
            self._run = _NumpyEngine(_fold_for_numpy(load_weights(self.model_path)))
            return
        make = _OpenCvEngine if self.engine == "opencv" else _OrtEngine
        try:
            self._run = make(load_onnx(self.model_path), threads)
        except Exception:
            # a cached graph that does not load (damaged, or from an incompatible onnx): rebuild it
            model = load_onnx(self.model_path, use_cache=False)
            _write_atomically(cache_path(self.model_path, ".onnx"), lambda f: f.write(model))
            self._run = make(model, threads)

    def compute(
        self, rgb: np.ndarray, box_xywh: Sequence[float], points_68x2: np.ndarray | Sequence[Sequence[float]]
    ) -> np.ndarray:
        """The (128,) float64 descriptor of the face at ``box_xywh`` with its 68 points."""
        return self.compute_many(rgb, [(box_xywh, points_68x2)])[0]

    def compute_many(
        self, rgb: np.ndarray, faces: Sequence[tuple[Sequence[float], np.ndarray | Sequence[Sequence[float]]]]
    ) -> np.ndarray:
        """(n, 128) float64 descriptors of ``faces`` [(box_xywh, points_68x2), ...] of one image,
        in one forward pass."""
        if not faces:
            return np.zeros((0, 128))
        shapes = [full_object_detection(box, points) for box, points in faces]
        return self.compute_shapes(rgb, shapes)

    def compute_shapes(self, rgb: np.ndarray, shapes: Sequence[Any]) -> np.ndarray:
        """(n, 128) float64 descriptors of dlib ``full_object_detection``s of one image."""
        rgb = np.ascontiguousarray(rgb)
        if self.engine == "dlib":
            return np.array(self._dlib.compute_face_descriptor(rgb, _detections(shapes))).reshape(-1, 128)
        return self.compute_chips(chips(rgb, shapes))

    def compute_chips(self, chips_nhwc: np.ndarray) -> np.ndarray:
        """(n, 128) float64 descriptors of (n, 150, 150, 3) uint8 RGB face chips."""
        if self.engine == "dlib":
            return np.array(self._dlib.compute_face_descriptor(list(chips_nhwc))).reshape(-1, 128)
        return np.asarray(self._run(np.ascontiguousarray(chips_nhwc, np.uint8)), np.float64).reshape(-1, 128)
