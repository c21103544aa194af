"""An independent Python transcription of how MIPVerify.jl reads and evaluates a network.

Used by tests/test_mipverify.py as the oracle for files written in the ``mat-mipverify``
layout: it shares no code with ``verify.formats`` or ``verify.network``. Transcribed from
MIPVerify.jl's sources (vtjeng/MIPVerify.jl):

* ``src/utils/import_weights.jl``: ``get_matrix_params`` reads ``"$name/weight"`` as the matrix
  (in, out) and ``dropdims("$name/bias", dims=1)``; ``get_conv_params`` reads ``"$name/weight"``
  as the filter (filter_height, filter_width, in_channels, out_channels) and the bias the same
  way; ``check_size`` asserts the expected sizes.
* ``src/net_components/layers/conv2d.jl``: ``compute_output_parameters`` for ``SamePadding``,
  ``ValidPadding`` and fixed (top, bottom, left, right) padding, and the ``@nloops`` body of
  ``conv2d`` on NHWC inputs (1-based indices, out-of-range input positions skipped = zero padding).
* ``src/net_components/layers/flatten.jl``: ``permutedims(x, perm)[:]`` -- Julia's permutedims
  followed by a column-major flatten.
* ``linear.jl`` (``transpose(matrix) * x .+ bias``), ``normalize.jl`` (mean/std broadcast
  over the last axis), ``relu.jl``.

The layer order and the extra keys (stride, padding, flatten order, input shape) follow the
layout that relu-verify's Julia reader ``julia/src/read_network.jl`` documents.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import scipy.io


# --------------------------------------------------------------------------- reading (MAT.jl)


def matread(path: str) -> dict[str, object]:
    """The variables as MAT.jl's ``matread`` gives them: 1x1 arrays become scalars, char arrays strings."""
    raw = scipy.io.loadmat(path, squeeze_me=False, chars_as_strings=True)
    out: dict[str, object] = {}
    for k, v in raw.items():
        if k.startswith("__"):
            continue
        a = np.asarray(v)
        if a.dtype.kind in "US":
            out[k] = "".join(str(s) for s in a.reshape(-1))
        elif a.size == 1 and a.ndim == 2:
            out[k] = a.reshape(()).item()
        else:
            out[k] = a
    return out


def dropdims_1(a: np.ndarray) -> np.ndarray:
    """Julia's ``dropdims(a, dims=1)``: the first dimension must have size 1."""
    a = np.asarray(a)
    assert a.ndim >= 2 and a.shape[0] == 1, f"dropdims(dims=1) needs a leading singleton, got {a.shape}"
    return a[0]


def check_size(a: np.ndarray, expected: tuple[int, ...]) -> None:
    assert tuple(a.shape) == tuple(expected), f"Input size {a.shape} did not match expected size {expected}."


def get_matrix_params(d: dict, name: str, expected_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    matrix = np.asarray(d[f"{name}/weight"], dtype=np.float64)
    bias = dropdims_1(np.asarray(d[f"{name}/bias"], dtype=np.float64))
    check_size(matrix, expected_size)
    check_size(bias, (expected_size[-1],))
    return matrix, bias


def get_conv_params(d: dict, name: str, expected_size: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    filt = np.asarray(d[f"{name}/weight"], dtype=np.float64)
    bias = dropdims_1(np.asarray(d[f"{name}/bias"], dtype=np.float64))
    check_size(filt, expected_size)
    check_size(bias, (expected_size[-1],))
    return filt, bias


# --------------------------------------------------------------------------- layer semantics


Padding = object  # "same" | "valid" | int | (y, x) | (top, bottom, left, right)


def compute_padding_values(padding) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        return (padding, padding, padding, padding)
    p = tuple(int(v) for v in padding)
    if len(p) == 2:
        return (p[0], p[0], p[1], p[1])
    assert len(p) == 4
    return p  # type: ignore[return-value]


def compute_output_parameters(in_h: int, in_w: int, f_h: int, f_w: int, stride: int, padding):
    """((out_height, out_width), (filter_height_offset, filter_width_offset)) as conv2d.jl computes them."""
    if padding == "same":
        out_h = math.ceil(in_h / stride)
        out_w = math.ceil(in_w / stride)
        pad_h = max((out_h - 1) * stride + f_h - in_h, 0)
        pad_w = max((out_w - 1) * stride + f_w - in_w, 0)
        return (out_h, out_w), (pad_h // 2, pad_w // 2)
    if padding == "valid":
        return (math.ceil((in_h + 1 - f_h) / stride), math.ceil((in_w + 1 - f_w) / stride)), (0, 0)
    top, bottom, left, right = compute_padding_values(padding)
    out_h = math.floor((in_h + top + bottom - f_h) / stride) + 1
    out_w = math.floor((in_w + left + right - f_w) / stride) + 1
    return (out_h, out_w), (top, left)


def conv2d_loops(x: np.ndarray, filt: np.ndarray, bias: np.ndarray, stride: int, padding) -> np.ndarray:
    """The @nloops body of MIPVerify's conv2d, index for index (1-based), for small inputs."""
    batch, in_h, in_w, in_c = x.shape
    f_h, f_w, f_in, f_out = filt.shape
    assert in_c == f_in
    (out_h, out_w), (off_h, off_w) = compute_output_parameters(in_h, in_w, f_h, f_w, stride, padding)
    out = np.zeros((batch, out_h, out_w, f_out))
    for i1 in range(1, batch + 1):
        for i2 in range(1, out_h + 1):
            for i3 in range(1, out_w + 1):
                for i4 in range(1, f_out + 1):
                    s = bias[i4 - 1]
                    for j1 in range(1, f_h + 1):
                        for j2 in range(1, f_w + 1):
                            for j3 in range(1, f_in + 1):
                                xx = (i2 - 1) * stride + j1 - off_h
                                yy = (i3 - 1) * stride + j2 - off_w
                                if 1 <= xx <= in_h and 1 <= yy <= in_w:  # checkbounds: zero padding
                                    s += x[i1 - 1, xx - 1, yy - 1, j3 - 1] * filt[j1 - 1, j2 - 1, j3 - 1, i4 - 1]
                    out[i1 - 1, i2 - 1, i3 - 1, i4 - 1] = s
    return out


def conv2d(x: np.ndarray, filt: np.ndarray, bias: np.ndarray, stride: int, padding) -> np.ndarray:
    """The same sum, vectorised over output positions (0-based: input row = i2*stride + j1 - off_h)."""
    batch, in_h, in_w, in_c = x.shape
    f_h, f_w, f_in, f_out = filt.shape
    assert in_c == f_in
    (out_h, out_w), (off_h, off_w) = compute_output_parameters(in_h, in_w, f_h, f_w, stride, padding)
    out = np.broadcast_to(bias, (batch, out_h, out_w, f_out)).copy()
    rows0 = np.arange(out_h) * stride - off_h
    cols0 = np.arange(out_w) * stride - off_w
    for j1 in range(f_h):
        rows = rows0 + j1
        rv = (rows >= 0) & (rows < in_h)
        for j2 in range(f_w):
            cols = cols0 + j2
            cv = (cols >= 0) & (cols < in_w)
            ri, ci = np.nonzero(rv)[0], np.nonzero(cv)[0]
            patch = np.zeros((batch, out_h, out_w, in_c))
            patch[:, ri[:, None], ci[None, :]] = x[:, rows[ri][:, None], cols[ci][None, :]]
            out += patch @ filt[j1, j2]
    return out


def flatten(x: np.ndarray, perm: list[int]) -> np.ndarray:
    """``permutedims(x, perm)[:]``: permute (1-based perm), then read in column-major order."""
    return np.transpose(x, [p - 1 for p in perm]).reshape(-1, order="F")


def matmul(x: np.ndarray, matrix: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return matrix.T @ x + bias


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    shape = (1,) * (x.ndim - 1) + (len(mean),)
    return (x - mean.reshape(shape)) / std.reshape(shape)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


# --------------------------------------------------------------------------- the network


@dataclass(frozen=True)
class Layer:
    kind: str  # normalize | conv | relu | flatten | linear
    params: tuple


def _ints(v) -> list[int]:
    return [int(a) for a in np.asarray(v).reshape(-1)]


def _floats(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float64).reshape(-1)


def _numbered(keys, prefix: str) -> list[int]:
    pat = re.compile(rf"^{prefix}(\d+)/weight$")
    return sorted(int(m.group(1)) for k in keys if (m := pat.match(k)))


def read_layers(d: dict) -> tuple[list[Layer], list[int]]:
    """[Normalize] (Conv2d ReLU)* [Flatten] (Linear ReLU)* Linear, and the input shape (C, H, W) or (d,)."""
    input_shape = _ints(d["input_shape"])
    order = str(d.get("flatten_order", "NCHW")).strip()
    layers: list[Layer] = []
    if "normalize/mean" in d:
        layers.append(Layer("normalize", (_floats(d["normalize/mean"]), _floats(d["normalize/std"]))))
    for i in _numbered(d, "conv"):
        w = np.asarray(d[f"conv{i}/weight"], dtype=np.float64)
        filt, bias = get_conv_params(d, f"conv{i}", tuple(w.shape))
        stride = _ints(d[f"conv{i}/stride"])[0]
        padding = tuple(_ints(d[f"conv{i}/padding"]))
        layers += [Layer("conv", (filt, bias, stride, padding)), Layer("relu", ())]
    if len(input_shape) == 3:
        layers.append(Layer("flatten", ([1, 4, 3, 2] if order == "NHWC" else [1, 3, 2, 4],)))
    names = [f"fc{j}" for j in _numbered(d, "fc")] + [h for h in ("logits", "softmax") if f"{h}/weight" in d]
    for k, name in enumerate(names):
        w = np.asarray(d[f"{name}/weight"], dtype=np.float64)
        layers.append(Layer("linear", get_matrix_params(d, name, tuple(w.shape))))
        if k + 1 < len(names):
            layers.append(Layer("relu", ()))
    return layers, input_shape


def to_mipverify_input(x_chw: np.ndarray) -> np.ndarray:
    """One input (C, H, W) -> MIPVerify's (1, H, W, C); vectors stay vectors."""
    x = np.asarray(x_chw, dtype=np.float64)
    return x if x.ndim == 1 else x.transpose(1, 2, 0)[None]


def forward(layers: list[Layer], x: np.ndarray) -> np.ndarray:
    """MIPVerify's ``x |> nn`` for one input already in MIPVerify's layout."""
    for layer in layers:
        if layer.kind == "normalize":
            x = normalize(x, *layer.params)
        elif layer.kind == "conv":
            x = conv2d(x, *layer.params)
        elif layer.kind == "relu":
            x = relu(x)
        elif layer.kind == "flatten":
            x = flatten(x, layer.params[0])
        elif layer.kind == "linear":
            assert x.ndim == 1, "Linear() layers work only on one-dimensional input"
            x = matmul(x, *layer.params)
        else:
            raise AssertionError(layer.kind)
    return x


def logits_from_file(path: str, inputs_chw: np.ndarray) -> np.ndarray:
    """Logits (N, classes) for a batch of inputs in relu-verify's layout (N, C, H, W) or (N, d)."""
    layers, _ = read_layers(matread(path))
    return np.stack([forward(layers, to_mipverify_input(x)) for x in inputs_chw])
