"""TF-style conv/dense chains, what the .mat layouts hold: geometry inference, building and splitting."""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from ..errors import ModelError
from ..network import Conv2d, Flatten, Layer, Linear, Network, ReLU, same_padding
from ._common import PathLike, default_input_shape, fail, layer_errors


# --------------------------------------------------------------------------- conv geometry


def conv_out_hw(hw: tuple[int, int], k: tuple[int, int], stride: int, pad: tuple[int, int, int, int]) -> tuple[int, int]:
    t, b, l, r = pad
    return ((hw[0] + t + b - k[0]) // stride + 1, (hw[1] + l + r - k[1]) // stride + 1)


def tf_same_geometry(
    kernels: Sequence[tuple[int, int]],
    out_channels: int,
    fc_in: int,
    in_hws: Sequence[tuple[int, int]],
    strides: Sequence[int] | None,
) -> list[tuple[tuple[int, int], list[int]]]:
    """All (input hw, strides) with TF 'SAME' padding whose last conv output has ``fc_in`` values.

    Strides are not stored in TF-style weight files; each conv is tried with stride 1 and 2.
    """
    found = []
    choices = [list(strides)] if strides is not None else [list(s) for s in itertools.product((1, 2), repeat=len(kernels))]
    for hw0 in in_hws:
        for ss in choices:
            hw = hw0
            for k, s in zip(kernels, ss):
                hw = (math.ceil(hw[0] / s), math.ceil(hw[1] / s))
            if hw[0] * hw[1] * out_channels == fc_in:
                found.append((hw0, ss))
    return found


def tf_conv_layers(
    weights_oihw: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    in_hw: tuple[int, int],
    strides: Sequence[int],
    paddings: Sequence[Sequence[int] | None] | None = None,
) -> list[Layer]:
    """Conv2d + ReLU pairs; padding is TF 'SAME' unless given per layer."""
    layers: list[Layer] = []
    hw = in_hw
    for i, (w, b, s) in enumerate(zip(weights_oihw, biases, strides)):
        k = (int(w.shape[2]), int(w.shape[3]))
        pad = paddings[i] if paddings is not None and paddings[i] is not None else same_padding(hw, k, (s, s))
        assert pad is not None  # paddings[i] is used only when it is not None
        conv = Conv2d(w, b, s, tuple(pad))
        layers += [conv, ReLU()]
        _, h2, w2 = conv.out_shape((int(w.shape[1]), *hw))
        hw = (h2, w2)
    return layers


def dense_layers(weights_out_in: Sequence[np.ndarray], biases: Sequence[np.ndarray]) -> list[Layer]:
    """Linear layers with a ReLU between consecutive ones (none after the last)."""
    layers: list[Layer] = []
    for i, (w, b) in enumerate(zip(weights_out_in, biases)):
        layers.append(Linear(w, b))
        if i + 1 < len(weights_out_in):
            layers.append(ReLU())
    return layers


# --------------------------------------------------------------------------- writing conv/fc chains


class ChainParts:
    """A network split as [ChannelAffine?] (Conv2d ReLU)* [Flatten] (Linear ReLU)* Linear: what .mat files hold."""

    def __init__(self, normalize: Layer | None, convs: list[Conv2d], flatten: Flatten | None, linears: list[Linear]):
        self.normalize = normalize
        self.convs = convs
        self.flatten = flatten
        self.linears = linears


def split_chain(layers: Sequence[Layer], fmt: str) -> ChainParts:
    from ..network import ChannelAffine

    why = (f"the {fmt} layout holds only [normalize] conv+ReLU ... flatten, linear+ReLU ..., linear; "
           "use .h5, .pt or .onnx for this network")
    seq = list(layers)
    normalize = None
    if seq and isinstance(seq[0], ChannelAffine):
        normalize = seq.pop(0)
    convs: list[Conv2d] = []
    while len(seq) >= 2 and isinstance(seq[0], Conv2d) and isinstance(seq[1], ReLU):
        convs.append(seq[0])
        seq = seq[2:]
    flatten: Flatten | None = None
    if seq and isinstance(seq[0], Flatten):
        flatten = seq.pop(0)  # type: ignore[assignment]
    linears: list[Linear] = []
    while seq:
        if not isinstance(seq[0], Linear):
            raise ModelError(f"cannot write {seq[0].describe()}: {why}")
        linears.append(seq.pop(0))  # type: ignore[arg-type]
        if seq:
            if not isinstance(seq[0], ReLU):
                raise ModelError(f"cannot write {seq[0].describe()} after a linear layer: {why}")
            seq.pop(0)
            if not seq:
                raise ModelError(f"the network ends in a ReLU: {why}")
    if not linears:
        raise ModelError(f"the network has no final linear layer: {why}")
    if convs and flatten is None:
        raise ModelError(f"no Flatten between the convolutions and the linear layers: {why}")
    return ChainParts(normalize, convs, flatten, linears)


def build_conv_fc_net(
    path: PathLike,
    *,
    conv_hwio: Sequence[np.ndarray],
    conv_bias: Sequence[np.ndarray],
    fc_in_out: Sequence[np.ndarray],
    fc_bias: Sequence[np.ndarray],
    input_shape: Sequence[int] | None,
    strides: Sequence[int] | None,
    paddings: Sequence[Sequence[int] | None] | None,
    arch: str | None,
    flatten_order: str,
    input_range: tuple[float, float],
    name: str,
    normalize: Layer | None = None,
) -> Network:
    """A TF-style network (HWIO convs with 'SAME' padding, (in, out) dense weights) as a Network.

    Conv strides are taken from ``strides``, else from ``arch``, else inferred: the one choice of
    stride 1 or 2 per conv (and input size 28x28 or 32x32) that makes the last conv output match
    the first dense layer.
    """
    from ._arch import arch_convs

    if not fc_in_out:
        raise fail(path, "no dense (fully connected) layer found")
    for i, (w, b) in enumerate(zip(conv_hwio, conv_bias), 1):
        if w.ndim != 4:
            raise fail(path, f"conv {i} weight must be 4-D (kh, kw, in, out), got shape {w.shape}")
        if b.size != w.shape[3]:
            raise fail(path, f"conv {i} bias has {b.size} entries, its weight has {w.shape[3]} output channels")
        if i > 1 and w.shape[2] != conv_hwio[i - 2].shape[3]:
            raise fail(path, f"conv {i} expects {w.shape[2]} input channels, conv {i - 1} gives {conv_hwio[i - 2].shape[3]}")
    for j, (w, b) in enumerate(zip(fc_in_out, fc_bias), 1):
        if w.ndim != 2:
            raise fail(path, f"dense layer {j} weight must be 2-D (in, out), got shape {w.shape}")
        if b.size != w.shape[1]:
            raise fail(path, f"dense layer {j} bias has {b.size} entries, its weight has {w.shape[1]} outputs")
        if j > 1 and w.shape[0] != fc_in_out[j - 2].shape[1]:
            raise fail(path, f"dense layer {j} expects {w.shape[0]} inputs, layer {j - 1} gives {fc_in_out[j - 2].shape[1]}")
    fc_in = int(fc_in_out[0].shape[0])
    layers: list[Layer] = [normalize] if normalize is not None else []
    with layer_errors(path):
        if conv_hwio:
            c_in = int(conv_hwio[0].shape[2])
            c_out = int(conv_hwio[-1].shape[3])
            kernels = [(int(w.shape[0]), int(w.shape[1])) for w in conv_hwio]
            if input_shape is not None:
                if len(input_shape) != 3 or input_shape[0] != c_in:
                    raise fail(path, f"input_shape {tuple(input_shape)} does not fit conv 1 with {c_in} input channels")
                hws = [(int(input_shape[1]), int(input_shape[2]))]
            else:
                hws = [(28, 28), (32, 32)]
            if strides is not None and len(strides) != len(conv_hwio):
                raise fail(path, f"{len(strides)} strides given for {len(conv_hwio)} conv layers")
            if strides is None and arch is not None:
                strides = [g.stride for g in arch_convs(arch, len(conv_hwio), [k[0] for k in kernels])]
            if paddings is not None and all(p is not None for p in paddings):
                found = []
                for hw0 in hws:
                    hw = hw0
                    for k, s, p in zip(kernels, strides or [1] * len(kernels), paddings):
                        hw = conv_out_hw(hw, k, s, tuple(p))  # type: ignore[arg-type]
                    if hw[0] * hw[1] * c_out == fc_in:
                        found.append((hw0, list(strides or [1] * len(kernels))))
            else:
                found = tf_same_geometry(kernels, c_out, fc_in, hws, strides)
            if not found:
                raise fail(path, f"the conv layers cannot produce the {fc_in} inputs of the first dense layer "
                                 f"with any stride of 1 or 2 on 28x28 or 32x32 inputs; pass --arch")
            if len({(hw, tuple(s)) for hw, s in found}) > 1:
                opts = "; ".join(f"{hw[0]}x{hw[1]} strides {s}" for hw, s in found)
                raise fail(path, f"ambiguous conv strides ({opts}); pass --arch")
            hw0, ss = found[0]
            in_shape: tuple[int, ...] = (c_in, *hw0)
            oihw = [w.transpose(3, 2, 0, 1) for w in conv_hwio]
            layers += tf_conv_layers(oihw, conv_bias, hw0, ss, paddings)
            layers.append(Flatten(flatten_order))  # type: ignore[arg-type]
        else:
            in_shape = tuple(int(s) for s in input_shape) if input_shape is not None else default_input_shape(fc_in)
            if int(np.prod(in_shape)) != fc_in:
                raise fail(path, f"input_shape {in_shape} has {int(np.prod(in_shape))} values, dense layer 1 expects {fc_in}")
            if len(in_shape) > 1:
                layers.append(Flatten(flatten_order))  # type: ignore[arg-type]
        layers += dense_layers([w.T for w in fc_in_out], fc_bias)
        return Network(tuple(layers), in_shape, input_range, name)
