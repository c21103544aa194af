"""``.mat`` files in the layout MIPVerify.jl reads (``get_conv_params`` / ``get_matrix_params``).

Keys are ``"{layer}/weight"`` and ``"{layer}/bias"``:

* ``conv{i}/weight`` (kh, kw, in, out = HWIO), ``conv{i}/bias`` (1, out), i = 1, 2, ...
* ``fc{j}/weight`` (in, out), ``fc{j}/bias`` (1, out), j = 1, 2, ...
* ``logits/weight``, ``logits/bias`` (the MMR repo's converted fc1 nets call it ``softmax``);
  without it the last ``fc`` layer gives the logits.

The network is [Normalize] conv, ReLU, ..., Flatten, fc, ReLU, ..., logits. MIPVerify's
Conv2d defaults to TF 'SAME' padding and its ``Flatten([1, 4, 3, 2])`` flattens NHWC (TF
order), ``Flatten([1, 3, 2, 4])`` NCHW (PyTorch order, used by its example nets converted from
PyTorch such as WK17a). Neither the stride, the padding nor the flatten order is stored by
MIPVerify itself, so files we write add these keys (MIPVerify ignores unknown keys):

* ``conv{i}/stride`` (1, 1) int and ``conv{i}/padding`` (1, 4) = top, bottom, left, right
* ``flatten_order``: 'NHWC' or 'NCHW'
* ``input_shape`` (1, 3) = C, H, W (or (1, 1) = d for vector inputs); ``input_range`` (1, 2)
* ``normalize/mean``, ``normalize/std`` (1, C): MIPVerify's ``Normalize(mean, std)`` first layer

When they are absent: padding is 'SAME', the flatten order is NCHW (MIPVerify's own example
networks), strides come from ``arch=`` or are inferred (stride 1 or 2 per conv, whichever makes
the last conv output fit ``fc1``), and the input is 28x28 or 32x32 accordingly.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..network import ChannelAffine, Network
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
    vector,
    write_atomic_with,
)
from ._tfnet import build_conv_fc_net, split_chain

_KEY = re.compile(r"^(conv\d+/(weight|bias|stride|padding)|fc\d+/(weight|bias)|(logits|softmax)/(weight|bias)|normalize/(mean|std))$")
EXTRA_KEYS = ("input_shape", "input_range", "flatten_order")


def is_mipverify(keys: list[str]) -> bool:
    return any("/" in k for k in keys)


def load(path: PathLike, *, arch: str | None = None) -> Network:
    return from_dict(read_mat(path), path, arch=arch)


def from_dict(d: dict[str, np.ndarray], path: PathLike, *, arch: str | None = None) -> Network:
    keys = list(d)
    unknown = [k for k in keys if not _KEY.match(k) and k not in EXTRA_KEYS]
    if unknown:
        raise fail(path, f"unexpected keys for the MIPVerify .mat layout: {', '.join(sorted(unknown)[:8])}")
    conv_ids = numbered(keys, "conv", "/weight")
    fc_ids = numbered(keys, "fc", "/weight")
    for prefix, ids in (("conv", conv_ids), ("fc", fc_ids)):
        if ids and ids != list(range(1, len(ids) + 1)):
            raise fail(path, f"{prefix}*/weight keys are numbered {ids}, expected 1..{len(ids)}")
        names = {k.split("/")[0] for k in keys if re.match(rf"^{prefix}\d+/", k)}
        orphans = names - {f"{prefix}{i}" for i in ids}
        if orphans:
            raise fail(path, f"missing key {sorted(orphans)[0]}/weight")
    heads = [h for h in ("logits", "softmax") if any(k.startswith(h + "/") for k in keys)]
    if len(heads) > 1:
        raise fail(path, "has both logits/* and softmax/* keys")
    layer_names = [f"fc{j}" for j in fc_ids] + heads
    if not layer_names:
        raise fail(path, "no dense layer keys (fc1/weight or logits/weight)")
    conv_w = [_get(d, path, f"conv{i}/weight") for i in conv_ids]
    conv_b = [vector(_get(d, path, f"conv{i}/bias"), f"conv{i}/bias") for i in conv_ids]
    fc_w = [_get(d, path, f"{n}/weight") for n in layer_names]
    fc_b = [vector(_get(d, path, f"{n}/bias"), f"{n}/bias") for n in layer_names]
    try:
        strides = [mat_ints(d[f"conv{i}/stride"], "stride")[0] for i in conv_ids] if all(
            f"conv{i}/stride" in d for i in conv_ids) and conv_ids else None
        paddings = [mat_ints(d[f"conv{i}/padding"], "padding") if f"conv{i}/padding" in d else None for i in conv_ids]
        input_shape = mat_ints(d["input_shape"], "input_shape") if "input_shape" in d else None
        rng = mat_floats(d["input_range"]) if "input_range" in d else [0.0, 1.0]
        order = mat_string(d["flatten_order"]) if "flatten_order" in d else "NCHW"
    except Exception as e:
        raise fail(path, f"bad extra key: {e}") from None
    if any(p is not None and len(p) not in (1, 2, 4) for p in paddings):
        raise fail(path, "conv*/padding must hold 1, 2 or 4 integers")
    paddings4 = [_pad4(p) for p in paddings]
    if len(rng) != 2:
        raise fail(path, f"input_range must hold two numbers, got {rng}")
    if order not in ("NHWC", "NCHW"):
        raise fail(path, f"flatten_order must be NHWC or NCHW, got {order!r}")
    normalize = None
    if "normalize/mean" in d or "normalize/std" in d:
        mean = vector(_get(d, path, "normalize/mean"), "normalize/mean")
        std = vector(_get(d, path, "normalize/std"), "normalize/std")
        try:
            normalize = ChannelAffine.normalize(mean, std)
        except ModelError as e:
            raise fail(path, str(e)) from None
    return build_conv_fc_net(
        path, conv_hwio=conv_w, conv_bias=conv_b, fc_in_out=fc_w, fc_bias=fc_b, input_shape=input_shape,
        strides=strides, paddings=paddings4 if any(p is not None for p in paddings4) else None, arch=arch,
        flatten_order=order, input_range=(rng[0], rng[1]), name=Path(path).stem, normalize=normalize,
    )


def _pad4(p: list[int] | None) -> list[int] | None:
    if p is None:
        return None
    if len(p) == 1:
        return [p[0]] * 4
    if len(p) == 2:
        return [p[0], p[0], p[1], p[1]]
    return p


def _get(d: dict[str, np.ndarray], path: PathLike, key: str) -> np.ndarray:
    if key not in d:
        raise fail(path, f"missing key {key!r}")
    try:
        return as_array(d[key], key)
    except Exception as e:
        raise fail(path, str(e)) from None


def to_dict(net: Network) -> dict[str, np.ndarray]:
    parts = split_chain(net.layers, "MIPVerify .mat")
    out: dict[str, np.ndarray] = {}
    shape: tuple[int, ...] = net.input_shape
    if parts.normalize is not None:
        mean, std = parts.normalize.as_normalize()  # type: ignore[attr-defined]
        out["normalize/mean"] = compact(mean.numpy()[None, :])
        out["normalize/std"] = compact(std.numpy()[None, :])
        shape = parts.normalize.out_shape(shape)
    for i, conv in enumerate(parts.convs, 1):
        if conv.stride[0] != conv.stride[1]:
            raise ModelError(f"conv {i} has stride {conv.stride}; MIPVerify supports one stride for both axes")
        out[f"conv{i}/weight"] = compact(conv.weight.numpy().transpose(2, 3, 1, 0))
        out[f"conv{i}/bias"] = compact(conv.bias.numpy()[None, :])
        out[f"conv{i}/stride"] = np.asarray([[conv.stride[0]]], dtype=np.int32)
        out[f"conv{i}/padding"] = np.asarray(conv.padding, dtype=np.int32)[None, :]
        shape = conv.out_shape(shape)
    order = parts.flatten.order if parts.flatten is not None else "NCHW"
    names = [f"fc{j}" for j in range(1, len(parts.linears))] + ["logits"]
    for name, lin in zip(names, parts.linears):
        out[f"{name}/weight"] = compact(lin.weight.numpy().T)
        out[f"{name}/bias"] = compact(lin.bias.numpy()[None, :])
    out["flatten_order"] = np.asarray(order)
    out["input_shape"] = np.asarray(net.input_shape, dtype=np.int32)[None, :]
    out["input_range"] = np.asarray(net.input_range, dtype=np.float64)[None, :]
    return out


def save(net: Network, path: PathLike) -> None:
    import scipy.io

    d = to_dict(net)
    write_atomic_with(path, lambda tmp: scipy.io.savemat(tmp, d))
