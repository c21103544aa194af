"""``.mat`` files in the layout of the MMR repository (Croce, Andriushchenko, Hein, AISTATS 2019).

github.com/max-andr/provable-robustness-max-linear-regions saves TensorFlow weights with
``scipy.io.savemat``:

* CNNs (``cnn_lenet_small``, ``cnn_lenet_large``): ``weights_conv{i}`` (kh, kw, in, out = HWIO),
  ``biases_conv{i}`` (1, out), then ``weights_fc{j}`` (in, out), ``biases_fc{j}`` (1, out); the
  last ``fc`` layer gives the logits. Convolutions use TF 'SAME' padding; the last conv output
  is flattened in NHWC order (TF ``reshape``).
* ``fc1`` nets: ``U`` (in, hidden), ``bU``, ``W`` (hidden, out), ``bW``.
* Deeper MLPs: ``weight_{i}``, ``bias_{i}`` for i = 0, 1, ... (the TF variable names).

Inputs are images in [0, 1], NHWC in TF; our Network input is NCHW, so the layout only shows
in the ``Flatten("NHWC")`` layer. A ReLU follows every layer except the last.

Conv strides are not stored. Files we write add optional keys (ignored by the MMR code):
``strides`` (1, n_conv) ints, ``input_shape`` (1, 3) = C, H, W, ``input_range`` (1, 2) and
``flatten_order`` ('NHWC'). Without them the strides come from ``arch=`` or are inferred as the
one choice of stride 1 or 2 per conv that makes the last conv output fit the first dense layer.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..network import Network, same_padding
from ._common import (
    PathLike,
    as_array,
    compact,
    fail,
    mat_floats,
    mat_ints,
    mat_string,
    numbered,
    read_mat,
    reorder_flat_rows,
    vector,
    write_atomic_with,
)
from ._tfnet import build_conv_fc_net, split_chain

EXTRA_KEYS = ("strides", "input_shape", "input_range", "flatten_order")
_KEY = re.compile(r"^(weights_conv\d+|biases_conv\d+|weights_fc\d+|biases_fc\d+|U|bU|W|bW|weight_\d+|bias_\d+)$")


def is_mmr(keys: list[str]) -> bool:
    return any(_KEY.match(k) for k in keys)


def load(path: PathLike, *, arch: str | None = None) -> Network:
    return from_dict(read_mat(path), path, arch=arch)


def from_dict(d: dict[str, np.ndarray], path: PathLike, *, arch: str | None = None) -> Network:
    keys = list(d)
    unknown = [k for k in keys if not _KEY.match(k) and k not in EXTRA_KEYS]
    if unknown:
        raise fail(path, f"unexpected keys for the MMR .mat layout: {', '.join(sorted(unknown)[:8])}")
    conv_ids = numbered(keys, "weights_conv")
    fc_ids = numbered(keys, "weights_fc")
    mlp_ids = numbered(keys, "weight_")
    families = [name for name, present in (("weights_fc*", fc_ids), ("U/W", "U" in d or "W" in d), ("weight_*", mlp_ids)) if present]
    if len(families) != 1:
        if not families:
            raise fail(path, "no dense layer keys (weights_fc1, U/W or weight_0) in the MMR .mat layout")
        raise fail(path, f"mixes dense layer key families {', '.join(families)}")
    _check_numbering(path, conv_ids, "weights_conv")
    conv_w = [_get(d, path, f"weights_conv{i}") for i in conv_ids]
    conv_b = [vector(_get(d, path, f"biases_conv{i}"), f"biases_conv{i}") for i in conv_ids]
    if fc_ids:
        _check_numbering(path, fc_ids, "weights_fc")
        names = [(f"weights_fc{j}", f"biases_fc{j}") for j in fc_ids]
    elif mlp_ids:
        _check_numbering(path, mlp_ids, "weight_", start=0)
        names = [(f"weight_{j}", f"bias_{j}") for j in mlp_ids]
    else:
        names = [("U", "bU"), ("W", "bW")]
    if conv_ids and not fc_ids:
        raise fail(path, "conv layers need weights_fc* dense layers after them")
    fc_w = [_get(d, path, w) for w, _ in names]
    fc_b = [vector(_get(d, path, b), b) for _, b in names]
    stray = set(k for k in keys if k.startswith("biases_conv")) - {f"biases_conv{i}" for i in conv_ids}
    stray |= set(k for k in keys if k.startswith("biases_fc")) - {f"biases_fc{j}" for j in fc_ids}
    stray |= set(k for k in keys if k.startswith("bias_")) - {f"bias_{j}" for j in mlp_ids}
    if stray:
        raise fail(path, f"biases without weights: {', '.join(sorted(stray))}")
    try:
        strides = mat_ints(d["strides"], "strides") if "strides" in d else None
        input_shape = mat_ints(d["input_shape"], "input_shape") if "input_shape" in d else None
        rng = mat_floats(d["input_range"]) if "input_range" in d else [0.0, 1.0]
        order = mat_string(d["flatten_order"]) if "flatten_order" in d else "NHWC"
    except Exception as e:
        raise fail(path, f"bad extra key: {e}") from None
    if len(rng) != 2:
        raise fail(path, f"input_range must hold two numbers, got {rng}")
    if order not in ("NHWC", "NCHW"):
        raise fail(path, f"flatten_order must be NHWC or NCHW, got {order!r}")
    return build_conv_fc_net(
        path, conv_hwio=conv_w, conv_bias=conv_b, fc_in_out=fc_w, fc_bias=fc_b, input_shape=input_shape,
        strides=strides, paddings=None, arch=arch, flatten_order=order, input_range=(rng[0], rng[1]),
        name=Path(path).stem,
    )


def _get(d: dict[str, np.ndarray], path: PathLike, key: str) -> np.ndarray:
    if key not in d:
        raise fail(path, f"missing key {key!r}")
    try:
        return as_array(d[key], key)
    except Exception as e:
        raise fail(path, str(e)) from None


def _check_numbering(path: PathLike, ids: list[int], prefix: str, start: int = 1) -> None:
    if ids and ids != list(range(start, start + len(ids))):
        raise fail(path, f"{prefix}* keys are numbered {ids}, expected {start}..{start + len(ids) - 1}")


def to_dict(net: Network) -> dict[str, np.ndarray]:
    parts = split_chain(net.layers, "MMR .mat")
    if parts.normalize is not None:
        raise ModelError("the MMR .mat layout has no input normalisation layer; use mat-mipverify, .h5, .pt or .onnx")
    out: dict[str, np.ndarray] = {}
    shape: tuple[int, ...] = net.input_shape
    strides = []
    for i, conv in enumerate(parts.convs, 1):
        s = conv.stride
        k = conv.kernel_size
        if s[0] != s[1] or conv.padding != same_padding((shape[1], shape[2]), k, s):
            raise ModelError(f"conv {i} ({conv.describe()}) does not use TF 'SAME' padding with a square stride, "
                             "which the MMR layout assumes; use mat-mipverify, .h5, .pt or .onnx")
        strides.append(s[0])
        out[f"weights_conv{i}"] = compact(conv.weight.numpy().transpose(2, 3, 1, 0))
        out[f"biases_conv{i}"] = compact(conv.bias.numpy()[None, :])
        shape = conv.out_shape(shape)
    ws = [l.weight.numpy() for l in parts.linears]
    if len(shape) == 3 and parts.flatten is not None:
        ws[0] = reorder_flat_rows(ws[0], (shape[0], shape[1], shape[2]), parts.flatten.order, "NHWC")
    bs = [l.bias.numpy()[None, :] for l in parts.linears]
    if parts.convs:
        names = [(f"weights_fc{j}", f"biases_fc{j}") for j in range(1, len(ws) + 1)]
    elif len(ws) == 2:
        names = [("U", "bU"), ("W", "bW")]
    else:
        names = [(f"weight_{j}", f"bias_{j}") for j in range(len(ws))]
    for (wn, bn), w, b in zip(names, ws, bs):
        out[wn] = compact(w.T)
        out[bn] = compact(b)
    if strides:
        out["strides"] = np.asarray(strides, dtype=np.int32)[None, :]
    out["input_shape"] = np.asarray(net.input_shape, dtype=np.int32)[None, :]
    out["input_range"] = np.asarray(net.input_range, dtype=np.float64)[None, :]
    out["flatten_order"] = np.asarray("NHWC")
    return out


def save(net: Network, path: PathLike) -> None:
    import scipy.io

    d = to_dict(net)
    write_atomic_with(path, lambda tmp: scipy.io.savemat(tmp, d))
