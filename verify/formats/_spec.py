"""Layers as plain records (kind, arrays, small lists): what our .h5 and .pt files store.

Every layer type of :mod:`verify.network` has a record:

========== ===================================================================
kind        fields
========== ===================================================================
linear      weight (out, in), bias (out,)
conv2d      weight (out, in, kh, kw), bias (out,), stride [sh, sw], padding [top, bottom, left, right]
channel_affine  scale (C,), shift (C,)          y = scale * x + shift per channel
avgpool2d   kernel [kh, kw], stride [sh, sw], padding [top, bottom, left, right]
maxpool2d   kernel [kh, kw], stride [sh, sw], padding [ph, pw]
flatten     order 'NCHW' or 'NHWC'
relu        (none)
residual    body [records], shortcut [records] (empty = identity)
========== ===================================================================
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import ModelError
from ..network import AvgPool2d, ChannelAffine, Conv2d, Flatten, Layer, Linear, MaxPool2d, ReLU, Residual

Record = dict[str, Any]

ARRAYS = {
    "linear": ("weight", "bias"),
    "conv2d": ("weight", "bias"),
    "channel_affine": ("scale", "shift"),
}
INTS = {
    "conv2d": ("stride", "padding"),
    "avgpool2d": ("kernel", "stride", "padding"),
    "maxpool2d": ("kernel", "stride", "padding"),
}
KINDS = ("linear", "conv2d", "channel_affine", "avgpool2d", "maxpool2d", "flatten", "relu", "residual")


def layer_record(layer: Layer) -> Record:
    if isinstance(layer, Linear):
        return {"kind": "linear", "weight": layer.weight.numpy(), "bias": layer.bias.numpy()}
    if isinstance(layer, Conv2d):
        return {"kind": "conv2d", "weight": layer.weight.numpy(), "bias": layer.bias.numpy(),
                "stride": list(layer.stride), "padding": list(layer.padding)}
    if isinstance(layer, ChannelAffine):
        return {"kind": "channel_affine", "scale": layer.scale.numpy(), "shift": layer.shift.numpy()}
    if isinstance(layer, AvgPool2d):
        return {"kind": "avgpool2d", "kernel": list(layer.kernel), "stride": list(layer.stride), "padding": list(layer.padding)}
    if isinstance(layer, MaxPool2d):
        return {"kind": "maxpool2d", "kernel": list(layer.kernel), "stride": list(layer.stride), "padding": list(layer.padding)}
    if isinstance(layer, Flatten):
        return {"kind": "flatten", "order": layer.order}
    if isinstance(layer, ReLU):
        return {"kind": "relu"}
    if isinstance(layer, Residual):
        return {"kind": "residual", "body": [layer_record(l) for l in layer.body],
                "shortcut": [layer_record(l) for l in layer.shortcut]}
    raise ModelError(f"no file record for layer {layer.describe()}")


def records(layers: Sequence[Layer]) -> list[Record]:
    return [layer_record(l) for l in layers]


def _field(rec: Record, name: str, where: str) -> Any:
    if name not in rec:
        raise ModelError(f"{where} ({rec.get('kind')}) is missing {name!r}")
    return rec[name]


def _ints(rec: Record, name: str, where: str) -> list[int]:
    v = np.asarray(_field(rec, name, where)).reshape(-1)
    if v.dtype.kind not in "iuf" or not np.all(v == np.round(v)):
        raise ModelError(f"{where}: {name} must be integers, got {v.tolist()}")
    return [int(x) for x in v]


def _array(rec: Record, name: str, where: str) -> np.ndarray:
    v = np.asarray(_field(rec, name, where))
    if v.dtype.kind not in "iuf":
        raise ModelError(f"{where}: {name} is not numeric")
    return v.astype(np.float64)


def layer_from_record(rec: Record, where: str) -> Layer:
    kind = rec.get("kind")
    if kind not in KINDS:
        raise ModelError(f"{where}: unknown layer kind {kind!r} (known: {', '.join(KINDS)})")
    if kind == "linear":
        return Linear(_array(rec, "weight", where), _array(rec, "bias", where))
    if kind == "conv2d":
        return Conv2d(_array(rec, "weight", where), _array(rec, "bias", where),
                      _ints(rec, "stride", where), _ints(rec, "padding", where))
    if kind == "channel_affine":
        return ChannelAffine(_array(rec, "scale", where), _array(rec, "shift", where))
    if kind == "avgpool2d":
        return AvgPool2d(_ints(rec, "kernel", where), _ints(rec, "stride", where), _ints(rec, "padding", where))
    if kind == "maxpool2d":
        return MaxPool2d(_ints(rec, "kernel", where), _ints(rec, "stride", where), _ints(rec, "padding", where))
    if kind == "flatten":
        order = _field(rec, "order", where)
        if isinstance(order, bytes):
            order = order.decode()
        return Flatten(str(order))  # type: ignore[arg-type]
    if kind == "relu":
        return ReLU()
    body = _field(rec, "body", where)
    shortcut = _field(rec, "shortcut", where)
    return Residual(layers_from_records(body, where + " body"), layers_from_records(shortcut, where + " shortcut"))


def layers_from_records(recs: Sequence[Record], where: str = "layer") -> list[Layer]:
    if not isinstance(recs, (list, tuple)):
        raise ModelError(f"{where}: expected a list of layer records")
    out = []
    for i, rec in enumerate(recs):
        if not isinstance(rec, dict):
            raise ModelError(f"{where} {i}: not a layer record")
        out.append(layer_from_record(rec, f"{where} {i}"))
    return out
