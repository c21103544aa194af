"""Conversion between :class:`verify.network.Network` layers and ``torch.nn`` modules.

:func:`network_to_torch` emits standard modules wherever PyTorch has one (Linear, Conv2d, ReLU,
Flatten, AvgPool2d, MaxPool2d, ZeroPad2d for asymmetric 'SAME' padding) and three
small modules of ours where it has none: :class:`FlattenNHWC`, :class:`ChannelAffineModule`
and :class:`ResidualModule`. :func:`network_from_torch` reads all of those back, plus BatchNorm
(folded), nn.Identity and nested Sequentials.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .errors import ModelError
from .network import (
    AvgPool2d,
    ChannelAffine,
    Conv2d,
    Flatten,
    Layer,
    Linear,
    MaxPool2d,
    Network,
    ReLU,
    Residual,
)


class FlattenNHWC(nn.Module):
    """Flatten a (N, C, H, W) tensor in TensorFlow order (H, W, C)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            x = x.permute(0, 2, 3, 1)
        return x.reshape(x.shape[0], -1)


class ChannelAffineModule(nn.Module):
    """y = scale * x + shift per channel (axis 1)."""

    scale: Tensor  # buffers, registered in __init__
    shift: Tensor

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.clone())
        self.register_buffer("shift", shift.clone())

    def forward(self, x: Tensor) -> Tensor:
        view = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.scale.reshape(view) + self.shift.reshape(view)


class ResidualModule(nn.Module):
    """y = shortcut(x) + body(x)."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.shortcut(x) + self.body(x)
        return out


def _layer_to_torch(layer: Layer) -> nn.Module:
    if isinstance(layer, Linear):
        m = nn.Linear(layer.in_features, layer.out_features, dtype=torch.float64)
        with torch.no_grad():
            m.weight.copy_(layer.weight)
            m.bias.copy_(layer.bias)
        return m
    if isinstance(layer, Conv2d):
        o, i, kh, kw = layer.weight.shape
        t, b, l, r = layer.padding
        symmetric = t == b and l == r
        conv = nn.Conv2d(i, o, (kh, kw), layer.stride, (t, l) if symmetric else 0, dtype=torch.float64)
        with torch.no_grad():
            conv.weight.copy_(layer.weight)
            assert conv.bias is not None  # built with the default bias=True
            conv.bias.copy_(layer.bias)
        return conv if symmetric else nn.Sequential(nn.ZeroPad2d((l, r, t, b)), conv)
    if isinstance(layer, AvgPool2d):
        t, b, l, r = layer.padding
        if t == b and l == r:
            return nn.AvgPool2d(layer.kernel, layer.stride, (t, l), count_include_pad=True)
        return nn.Sequential(nn.ZeroPad2d((l, r, t, b)), nn.AvgPool2d(layer.kernel, layer.stride, 0))
    if isinstance(layer, ReLU):
        return nn.ReLU()
    if isinstance(layer, Flatten):
        return nn.Flatten() if layer.order == "NCHW" else FlattenNHWC()
    if isinstance(layer, ChannelAffine):
        return ChannelAffineModule(layer.scale, layer.shift)
    if isinstance(layer, MaxPool2d):
        return nn.MaxPool2d(layer.kernel, layer.stride, layer.padding)
    if isinstance(layer, Residual):
        sc = layers_to_torch(layer.shortcut) if layer.shortcut else None
        return ResidualModule(layers_to_torch(layer.body), sc)
    raise ModelError(f"no torch module for layer {layer.describe()}")


def layers_to_torch(layers: Sequence[Layer]) -> nn.Sequential:
    return nn.Sequential(*[_layer_to_torch(l) for l in layers])


def _modules(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        out: list[nn.Module] = []
        for m in module:
            out.extend(_modules(m))
        return out
    return [module]


def _share(layer: Linear | Conv2d, m: nn.Linear | nn.Conv2d) -> None:
    """Point the layer at the module's live parameters (after the constructor validated a copy)."""
    layer.weight = m.weight
    if m.bias is not None:
        layer.bias = m.bias


def torch_to_layers(module: nn.Module, share_parameters: bool = False) -> list[Layer]:
    """Layers of an ``nn.Sequential`` (nested Sequentials are flattened).

    ``share_parameters``: Linear/Conv2d layers hold the module's nn.Parameters themselves
    (see :func:`verify.torch_modules.network_from_torch`).
    """
    mods = _modules(module)
    layers: list[Layer] = []
    pending_pad: tuple[int, int, int, int] | None = None  # (top, bottom, left, right)
    for m in mods:
        if pending_pad is not None and not isinstance(m, (nn.Conv2d, nn.AvgPool2d)):
            raise ModelError("nn.ZeroPad2d must be followed by Conv2d or AvgPool2d")
        if isinstance(m, nn.ZeroPad2d):
            l, r, t, b = (int(v) for v in m.padding)
            pending_pad = (t, b, l, r)
        elif isinstance(m, nn.Linear):
            layers.append(Linear(m.weight.detach(), None if m.bias is None else m.bias.detach()))
            if share_parameters:
                _share(layers[-1], m)  # type: ignore[arg-type]
        elif isinstance(m, nn.Conv2d):
            if m.groups != 1 or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros":
                raise ModelError("only plain Conv2d (groups=1, dilation=1, zero padding) is supported")
            if isinstance(m.padding, str):
                raise ModelError("Conv2d with string padding is not supported; give explicit padding")
            ph, pw = m.padding
            pad = (ph, ph, pw, pw)
            if pending_pad is not None:
                pad = tuple(a + b for a, b in zip(pad, pending_pad))  # type: ignore[assignment]
                pending_pad = None
            layers.append(Conv2d(m.weight.detach(), None if m.bias is None else m.bias.detach(), m.stride, pad))
            if share_parameters:
                _share(layers[-1], m)  # type: ignore[arg-type]
        elif isinstance(m, nn.AvgPool2d):
            if not m.count_include_pad or m.ceil_mode or m.divisor_override is not None:
                raise ModelError("AvgPool2d needs count_include_pad=True, ceil_mode=False, no divisor_override")
            p = m.padding if isinstance(m.padding, (tuple, list)) else (m.padding, m.padding)
            pad = (p[0], p[0], p[1], p[1])
            if pending_pad is not None:
                pad = tuple(a + b for a, b in zip(pad, pending_pad))  # type: ignore[assignment]
                pending_pad = None
            layers.append(AvgPool2d(m.kernel_size, m.stride, pad))
        elif isinstance(m, nn.MaxPool2d):
            if m.dilation not in (1, (1, 1)) or m.ceil_mode:
                raise ModelError("MaxPool2d needs dilation=1 and ceil_mode=False")
            layers.append(MaxPool2d(m.kernel_size, m.stride, m.padding))
        elif isinstance(m, nn.ReLU):
            layers.append(ReLU())
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise ModelError("only nn.Flatten(start_dim=1, end_dim=-1) is supported")
            layers.append(Flatten("NCHW"))
        elif isinstance(m, FlattenNHWC):
            layers.append(Flatten("NHWC"))
        elif isinstance(m, ChannelAffineModule):
            layers.append(ChannelAffine(m.scale, m.shift))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if share_parameters:
                raise ModelError("share_parameters does not support BatchNorm (it is folded into a copy)")
            if m.running_mean is None or m.running_var is None:
                raise ModelError("BatchNorm without running statistics cannot be folded")
            gamma = m.weight.detach() if m.weight is not None else None
            beta = m.bias.detach() if m.bias is not None else None
            layers.append(ChannelAffine.batchnorm(m.running_mean, m.running_var, gamma, beta, m.eps))
        elif isinstance(m, ResidualModule):
            sc = [] if isinstance(m.shortcut, nn.Identity) else torch_to_layers(m.shortcut, share_parameters)
            layers.append(Residual(torch_to_layers(m.body, share_parameters), sc))
        elif isinstance(m, (nn.Identity, nn.Dropout)):
            continue
        else:
            raise ModelError(f"unsupported torch module {type(m).__name__}")
    if pending_pad is not None:
        raise ModelError("nn.ZeroPad2d at the end of the network")
    return layers


def network_to_torch(net: Network, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """The network as an ``nn.Sequential`` of standard modules (and ours where torch has none)."""
    return layers_to_torch(net.layers).to(dtype)


def network_from_torch(
    module: nn.Module,
    input_shape: Sequence[int],
    input_range: tuple[float, float] = (0.0, 1.0),
    name: str = "network",
    share_parameters: bool = False,
) -> Network:
    """A Network from an ``nn.Sequential``: detached float64 copies of its parameters by default.

    ``share_parameters=True`` (training) makes Linear/Conv2d layers hold the module's own
    ``nn.Parameter`` objects, uncast and uncached, so bounds computed on this Network are
    differentiable w.r.t. the weights and follow every optimizer step.
    """
    return Network(tuple(torch_to_layers(module, share_parameters=share_parameters)), tuple(input_shape), input_range, name)
