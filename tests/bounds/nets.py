"""Small networks for the bound tests: dense, conv (stride, asymmetric SAME padding), residual."""

from __future__ import annotations

import torch

from verify.network import AvgPool2d, ChannelAffine, Conv2d, Flatten, Linear, Network, ReLU, Residual, same_padding


def _w(g: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale / fan_in**0.5


def dense_net(seed: int = 0, sizes: tuple[int, ...] = (6, 12, 12, 4), input_range=(0.0, 1.0)) -> Network:
    g = torch.Generator().manual_seed(seed)
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(_w(g, b, a, scale=1.5), torch.randn(b, generator=g, dtype=torch.float64) * 0.3))
        if i < len(sizes) - 2:
            layers.append(ReLU())
    return Network(layers, (sizes[0],), input_range, name=f"dense{seed}")


def conv_net(seed: int = 0) -> Network:
    """Input (1, 7, 7): conv 4@3x3 stride 2 asymmetric SAME, conv 4@2x2 stride 1 pad 1, fc 8, fc 3."""
    g = torch.Generator().manual_seed(seed)
    pad1 = same_padding((7, 7), (4, 4), (2, 2))  # (1, 2, 1, 2): asymmetric
    c1 = Conv2d(_w(g, 4, 1, 4, 4, scale=1.5), torch.randn(4, generator=g, dtype=torch.float64) * 0.2, 2, pad1)
    c2 = Conv2d(_w(g, 4, 4, 2, 2, scale=1.5), torch.randn(4, generator=g, dtype=torch.float64) * 0.2, 1, 1)
    _, h, w = c2.out_shape(c1.out_shape((1, 7, 7)))
    flat = 4 * h * w
    layers = [c1, ReLU(), c2, ReLU(), Flatten("NHWC"),
              Linear(_w(g, 8, flat, scale=1.5), torch.randn(8, generator=g, dtype=torch.float64) * 0.2), ReLU(),
              Linear(_w(g, 3, 8, scale=1.5), torch.randn(3, generator=g, dtype=torch.float64) * 0.2)]
    return Network(layers, (1, 7, 7), name=f"conv{seed}")


def residual_net(seed: int = 0) -> Network:
    """Normalize, conv, residual block (conv-ReLU-ChannelAffine-conv + identity), AvgPool2d, fc."""
    g = torch.Generator().manual_seed(seed)
    norm = ChannelAffine.normalize([0.5], [0.3])
    c0 = Conv2d(_w(g, 3, 1, 3, 3), torch.randn(3, generator=g, dtype=torch.float64) * 0.1, 1, 1)
    b1 = Conv2d(_w(g, 3, 3, 3, 3), torch.randn(3, generator=g, dtype=torch.float64) * 0.1, 1, 1)
    bn = ChannelAffine(torch.rand(3, generator=g, dtype=torch.float64) + 0.5, torch.randn(3, generator=g, dtype=torch.float64) * 0.1)
    b2 = Conv2d(_w(g, 3, 3, 3, 3), torch.randn(3, generator=g, dtype=torch.float64) * 0.1, 1, 1)
    body = [b1, ReLU(), bn, b2]
    layers = [norm, c0, ReLU(), Residual(body), ReLU(), AvgPool2d(2), Flatten(),
              Linear(_w(g, 8, 3 * 3 * 3, scale=1.5), torch.randn(8, generator=g, dtype=torch.float64) * 0.1), ReLU(),
              Linear(_w(g, 4, 8, scale=1.5), torch.randn(4, generator=g, dtype=torch.float64) * 0.1)]
    return Network(layers, (1, 6, 6), name=f"res{seed}")
