"""SSP networks (Kim et al., ECCV 2020): residual blocks built from Runge-Kutta steps.

Every block owns ONE residual function f, the paper's pre-activation
BN-ReLU-conv3x3-BN-ReLU-conv3x3, and applies it once per Runge-Kutta stage:

=======  ==================================================================  ====================
block    output                                                              method
=======  ==================================================================  ====================
res      x + f(x)                                                            forward Euler
ssp2     u = x + f(x);  1/2 x + 1/2 (u + f(u))                               Heun = SSP-RK2
ssp3     u1 = x + f(x);  u2 = 3/4 x + 1/4 (u1 + f(u1));                      Shu-Osher SSP-RK3
         1/3 x + 2/3 (u2 + f(u2))
midrk2   x + f(x + 1/2 f(x))                                                 explicit midpoint
ark      c = sigmoid(b) learned, a fixed;  u = x + c f(x);                   adaptive RK (eq. 13-15)
         (1 - a) x + a u + (1 - 1/(2c) - a c) f(x) + 1/(2c) f(u)
=======  ==================================================================  ====================

``ark`` is, for every a, the two-stage second-order family
x + (1 - 1/(2c)) f(x) + 1/(2c) f(x + c f(x)) with the stage coefficient c = c2 in (0, 1);
c = 1 is Heun (ssp2), c = 1/2 the midpoint rule. The paper's released code names a block
``RKBlock2`` "mid-RK2" but computes y + f(y) with y = x + f(x)/2; ``midrk2`` here is the
explicit midpoint method its name promises.

:func:`ssp_network` turns a trained :class:`SSPNet` (eval mode) into a
:class:`verify.network.Network`: BatchNorm folded into ChannelAffine layers, every stage's f a
separate copy of the same folded layers, and each block written with nested ``Residual``
layers whose shortcuts are affine (identity or a scalar scaling), so bounds, attacks and the
MIP read it like any other ReLU network. The Network's ``metadata["groups"]`` lists, per group
of blocks, the graph node indices [input, output] that ``verify analyze pgr`` compares.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from verify.errors import ModelError
from verify.network import ChannelAffine, Layer, Network, Residual
from verify.torch_modules import ResidualModule, torch_to_layers

BlockKind = Literal["res", "ssp2", "ssp3", "ark", "midrk2"]
BLOCKS: tuple[str, ...] = ("res", "ssp2", "ssp3", "ark", "midrk2")
STAGES = {"res": 1, "ssp2": 2, "ssp3": 3, "ark": 2, "midrk2": 2}  # evaluations of f per block

# The paper's ARK defaults (CIFAR10Module_ARK): a21 = 0.25 and b10 = 1.0, both through a sigmoid.
ARK_A_LOGIT = 0.25
ARK_B_INIT = 1.0


def residual_function(channels: int) -> nn.Sequential:
    """f: BN-ReLU-conv3x3-BN-ReLU-conv3x3 (the paper's pre-activation ResBlock body)."""
    return nn.Sequential(
        nn.BatchNorm2d(channels), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, 1, 1),
        nn.BatchNorm2d(channels), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, 1, 1),
    )


def check_block(kind: str) -> None:
    if kind not in BLOCKS:
        raise ModelError(f"unknown SSP block {kind!r}: use one of {', '.join(BLOCKS)}")


class SSPBlock(nn.Module):
    """One Runge-Kutta step x -> x_next with a single residual function f (see the module table)."""

    def __init__(self, channels: int, kind: str, *, ark_b: float = ARK_B_INIT, ark_a_logit: float = ARK_A_LOGIT) -> None:
        super().__init__()
        check_block(kind)
        self.kind = kind
        self.f = residual_function(channels)
        if kind == "ark":
            self.b = nn.Parameter(torch.tensor(float(ark_b)))  # c2 = sigmoid(b), learned
            self.register_buffer("a_logit", torch.tensor(float(ark_a_logit)))  # fixed, as in the paper's runs

    def c2(self) -> Tensor:
        """The ARK stage coefficient c2 = sigmoid(b) in (0, 1)."""
        if self.kind != "ark":
            raise ModelError(f"block {self.kind} has no learned stage coefficient")
        return torch.sigmoid(self.b)

    def forward(self, x: Tensor) -> Tensor:
        f, k = self.f, self.kind
        if k == "res":
            return x + f(x)
        if k == "ssp2":
            u = x + f(x)
            return 0.5 * x + 0.5 * (u + f(u))
        if k == "ssp3":
            u1 = x + f(x)
            u2 = 0.75 * x + 0.25 * (u1 + f(u1))
            return x / 3 + (2 / 3) * (u2 + f(u2))
        if k == "midrk2":
            return x + f(x + 0.5 * f(x))
        c = torch.sigmoid(self.b).to(x.dtype)
        a = torch.sigmoid(self.a_logit).to(x.dtype)
        fx = f(x)
        u = x + c * fx
        return (1 - a) * x + a * u + (1 - 1 / (2 * c) - a * c) * fx + (1 / (2 * c)) * f(u)


class SSPGroup(nn.Sequential):
    """Consecutive SSP blocks on one feature shape; its two ends are what the growth ratio compares."""


class SSPNet(nn.Module):
    """stem -> (group, transition)* -> head, run in order; only :class:`SSPGroup` parts hold SSP blocks."""

    def __init__(self, parts: Sequence[nn.Module], *, arch: str, block: str, blocks: int, width: int) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.arch, self.block, self.blocks, self.width = arch, block, blocks, width

    def forward(self, x: Tensor) -> Tensor:
        for part in self.parts:
            x = part(x)
        return x

    def to_network(self, input_shape: Sequence[int], *, input_range: tuple[float, float] = (0.0, 1.0),
                   name: str = "network", share_parameters: bool = False) -> Network:
        if share_parameters:
            raise ModelError("SSP networks contain BatchNorm, which folds into a copy: no parameter-sharing Network")
        return ssp_network(self, tuple(input_shape), input_range=input_range, name=name)


# --------------------------------------------------------------------------- conversion to a Network


def _scale(a: float, channels: int) -> ChannelAffine:
    return ChannelAffine(torch.full((channels,), float(a), dtype=torch.float64), torch.zeros(channels, dtype=torch.float64))


def block_layers(block: SSPBlock) -> list[Layer]:
    """The block as Network layers; ``f()`` is a fresh copy of f's folded layers for each stage."""
    channels = int(block.f[0].num_features)

    def f() -> list[Layer]:
        return torch_to_layers(block.f)

    def s(a: float) -> ChannelAffine:
        return _scale(a, channels)

    k = block.kind
    if k == "res":
        return [Residual(f())]
    if k == "ssp2":  # 1/2 x + 1/2 (u + f(u)), u = x + f(x)
        return [Residual([Residual(f()), Residual(f()), s(0.5)], [s(0.5)])]
    if k == "ssp3":
        u2 = Residual([Residual(f()), Residual(f()), s(0.25)], [s(0.75)])
        return [Residual([u2, Residual(f()), s(2 / 3)], [s(1 / 3)])]
    if k == "midrk2":
        return [Residual([Residual(f() + [s(0.5)]), *f()])]
    # ark: x + w1 f(x) + w2 f(u) with u = x + c f(x); f(x) = (u - x) / c keeps every shortcut affine
    # and evaluates f twice (not three times): (1 - w1/c) x + (w1/c) u + w2 f(u)
    c = float(torch.sigmoid(block.b.detach().double()))
    w1, w2 = 1.0 - 1.0 / (2.0 * c), 1.0 / (2.0 * c)
    u = Residual(f() + [s(c)])
    return [Residual([u, Residual(f() + [s(w2)], [s(w1 / c)])], [s(1.0 - w1 / c)])]


def _nodes(layers: Sequence[Layer]) -> int:
    """How many graph nodes ``layers`` emit (see verify.network._build_graph)."""
    n = 0
    for layer in layers:
        n += _nodes(layer.body) + _nodes(layer.shortcut) + 1 if isinstance(layer, Residual) else 1
    return n


def ssp_network(module: SSPNet, input_shape: tuple[int, ...], *, input_range: tuple[float, float] = (0.0, 1.0),
                name: str = "network") -> Network:
    """The eval-mode function of ``module`` as a Network (BatchNorm folded, running statistics)."""
    layers: list[Layer] = []
    groups: list[list[int]] = []
    ark_c2: list[float] = []
    node = 0  # index of the node the next layer reads
    for part in module.parts:
        if isinstance(part, SSPGroup):
            start = node
            for blk in part:
                new = block_layers(blk)
                layers += new
                node += _nodes(new)
                if blk.kind == "ark":
                    ark_c2.append(float(blk.c2().detach()))
            groups.append([start, node])
        else:
            new = torch_to_layers(part)
            layers += new
            node += _nodes(new)
    meta = {"arch": module.arch, "block": module.block, "blocks_per_group": module.blocks, "width": module.width,
            "groups": groups, "source": "Kim et al. 2020, SSP networks (training/ssp.py)"}
    if ark_c2:
        meta["ark_c2"] = ark_c2
    net = Network(tuple(layers), input_shape, input_range, name, meta)
    if node != len(net.graph) - 1:  # the node arithmetic above must match the graph builder
        raise ModelError(f"internal: counted {node} nodes, the graph has {len(net.graph) - 1}")
    return net


# --------------------------------------------------------------------------- architectures


def _chw(in_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ModelError(f"an SSP network needs a (C, H, W) input shape, got {tuple(in_shape)}")
    return int(in_shape[0]), int(in_shape[1]), int(in_shape[2])


def _check(block: str, blocks: int, width: int) -> None:
    check_block(block)
    if blocks < 1 or width < 1:
        raise ModelError(f"an SSP network needs blocks >= 1 and width >= 1, got {blocks} and {width}")


def _group(width: int, block: str, blocks: int) -> SSPGroup:
    return SSPGroup(*[SSPBlock(width, block) for _ in range(blocks)])


def _out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def ssp_mnist(in_shape: Sequence[int] = (1, 28, 28), n_classes: int = 10, *, block: str = "res", blocks: int = 3,
              width: int = 64) -> SSPNet:
    """The paper's MNIST model: conv 3x3, conv 4x4/2, conv 4x4/2 stem (BN-ReLU between), one group of
    ``blocks`` SSP blocks of ``width`` channels, then BN-ReLU, global average pool and a linear layer."""
    _check(block, blocks, width)
    c, h, w = _chw(in_shape)
    h, w = _out(h, 3, 1, 0), _out(w, 3, 1, 0)
    h, w = _out(_out(h, 4, 2, 1), 4, 2, 1), _out(_out(w, 4, 2, 1), 4, 2, 1)
    if h < 1 or w < 1:
        raise ModelError(f"input {tuple(in_shape)} is too small for ssp_mnist")
    stem = nn.Sequential(
        nn.Conv2d(c, width, 3, 1, 0), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 4, 2, 1),
    )
    head = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.AvgPool2d((h, w)), nn.Flatten(), nn.Linear(width, n_classes))
    return SSPNet([stem, _group(width, block, blocks), head], arch="ssp_mnist", block=block, blocks=blocks, width=width)


def _downsample(c_in: int, c_out: int) -> nn.Sequential:
    """The paper's subsampling ResBlock: both branches start from relu(bn(x)); shortcut conv1x1/2 + BN."""
    body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, 1, 1))
    shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, 2, 0, bias=False), nn.BatchNorm2d(c_out))
    return nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(), ResidualModule(body, shortcut))


def ssp_cifar(in_shape: Sequence[int] = (3, 32, 32), n_classes: int = 10, *, block: str = "res", blocks: int = 6,
              width: int = 16) -> SSPNet:
    """The paper's CIFAR-10 model: conv 3x3, three groups of ``blocks`` SSP blocks with width, 2 width and
    4 width channels joined by stride-2 ResBlocks, global average pool and a linear layer."""
    _check(block, blocks, width)
    c, h, w = _chw(in_shape)
    parts: list[nn.Module] = [nn.Sequential(nn.Conv2d(c, width, 3, 1, 1))]
    ch = width
    for g in range(3):
        parts.append(_group(ch, block, blocks))
        if g < 2:
            parts.append(_downsample(ch, 2 * ch))
            ch, h, w = 2 * ch, _out(h, 3, 2, 1), _out(w, 3, 2, 1)
    parts.append(nn.Sequential(nn.AvgPool2d((h, w)), nn.Flatten(), nn.Linear(ch, n_classes)))
    return SSPNet(parts, arch="ssp_cifar", block=block, blocks=blocks, width=width)


def ssp_blocks(module: nn.Module) -> list[SSPBlock]:
    return [m for m in module.modules() if isinstance(m, SSPBlock)]


__all__ = ["BLOCKS", "SSPBlock", "SSPGroup", "SSPNet", "block_layers", "ssp_cifar", "ssp_mnist", "ssp_network",
           "residual_function", "ssp_blocks", "STAGES"]
