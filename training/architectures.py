"""Network architectures for training, as ``nn.Sequential`` modules that convert exactly to a Network.

The MMR architectures (``fc1``, ``fc10``, ``cnn_lenet_small``, ``cnn_lenet_large``) follow
Croce, Andriushchenko & Hein's repository (``models.py``, ``utils.get_hidden_units``,
``kolter_wong/models.py``): TF 'SAME' convolutions and a flatten in NHWC order, so that the
MMR ``.mat`` export has exactly their layout, and He-initialised (truncated normal,
std sqrt(2 / fan_in)) weights with zero biases. The Kolter-Wong MNIST CNNs (``kw_small``,
``kw_large``) follow ``convex_adversarial``'s examples: PyTorch padding and flatten order,
PyTorch's default initialisation. The complete-verification benchmark MLPs (``fc_256x2``,
``fc_256x4``, ``fc_256x6``: VNN-COMP's "mnistfc" family, and ``fc_500``: 784-500-10) are built
like ``fc10``: MMR layout and initialisation.

Every MMR / KW module built here contains only Linear, Conv2d, ZeroPad2d, ReLU, Flatten and
FlattenNHWC, which :func:`verify.torch_modules.network_from_torch` reads exactly. The SSP networks
(``ssp_mnist``, ``ssp_cifar``; training/ssp.py) convert themselves, BatchNorm folded; the
feature pyramid decoder (``fpd_small``; training/fpd.py) is not piecewise linear and exports
an attack-only program instead of a Network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from verify.errors import ModelError
from verify.network import Network, same_padding
from verify.torch_modules import FlattenNHWC, network_from_torch

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ArchSpec:
    """One named architecture: how to build it and where it comes from."""

    name: str
    build: Callable[..., nn.Module]  # (input shape, n_classes, **options)
    source: str
    mmr_layout: bool  # NHWC flatten and TF 'SAME' padding (MMR .mat layout)
    options: tuple[str, ...] = ()  # keyword options build accepts (SSP: block, blocks, width)
    exports_network: bool = True  # False: not piecewise linear (FPD), exported for attacks only
    batchnorm: bool = False  # BatchNorm folds into a copy: no parameter-sharing Network (kw, ibp, mmr)


def _same_conv(in_shape: Shape, out_ch: int, kernel: int, stride: int) -> tuple[list[nn.Module], Shape]:
    """A conv with TF 'SAME' padding; a ZeroPad2d only where the padding is asymmetric."""
    c, h, w = in_shape
    t, b, l, r = same_padding((h, w), (kernel, kernel), (stride, stride))
    mods: list[nn.Module] = []
    if t == b and l == r:
        mods.append(nn.Conv2d(c, out_ch, kernel, stride, (t, l)))
    else:
        mods += [nn.ZeroPad2d((l, r, t, b)), nn.Conv2d(c, out_ch, kernel, stride, 0)]
    return mods, (out_ch, math.ceil(h / stride), math.ceil(w / stride))


def _mmr_cnn(in_shape: Shape, n_classes: int, convs: Sequence[tuple[int, int, int]], fcs: Sequence[int]) -> nn.Sequential:
    if len(in_shape) != 3:
        raise ModelError(f"a CNN needs a (C, H, W) input shape, got {in_shape}")
    mods: list[nn.Module] = []
    shape = in_shape
    for out_ch, k, s in convs:
        conv, shape = _same_conv(shape, out_ch, k, s)
        mods += conv + [nn.ReLU()]
    mods.append(FlattenNHWC())
    n = int(math.prod(shape))
    for width in fcs:
        mods += [nn.Linear(n, width), nn.ReLU()]
        n = width
    mods.append(nn.Linear(n, n_classes))
    return nn.Sequential(*mods)


def _mlp(in_shape: Shape, n_classes: int, hidden: Sequence[int], nhwc: bool) -> nn.Sequential:
    mods: list[nn.Module] = [FlattenNHWC() if nhwc else nn.Flatten()]
    n = int(math.prod(in_shape))
    for width in hidden:
        mods += [nn.Linear(n, width), nn.ReLU()]
        n = width
    mods.append(nn.Linear(n, n_classes))
    return nn.Sequential(*mods)


def fc1(in_shape: Shape = (1, 28, 28), n_classes: int = 10) -> nn.Sequential:
    """One hidden layer of 1024 ReLUs (MMR's fc1; its .mat keys are U, bU, W, bW)."""
    return _mlp(in_shape, n_classes, [1024], nhwc=True)


FC10_WIDTHS = (124, 104, 104, 104, 104, 104, 104, 104, 86, 86)  # MMR utils.get_hidden_units('fc10')


def fc10(in_shape: Shape = (1, 28, 28), n_classes: int = 10) -> nn.Sequential:
    """Ten hidden layers of 124, 104 x 7, 86, 86 ReLUs (MMR's fc10)."""
    return _mlp(in_shape, n_classes, FC10_WIDTHS, nhwc=True)


MNISTFC_WIDTH = 256  # VNN-COMP 2021 "mnistfc": 784-256x{2,4,6}-10 (ERAN's mnist_relu_{2,4,6}_256)


def fc_256x2(in_shape: Shape = (1, 28, 28), n_classes: int = 10) -> nn.Sequential:
    """Two hidden layers of 256 ReLUs (VNN-COMP mnistfc 256x2)."""
    return _mlp(in_shape, n_classes, [MNISTFC_WIDTH] * 2, nhwc=True)


def fc_256x4(in_shape: Shape = (1, 28, 28), n_classes: int = 10) -> nn.Sequential:
    """Four hidden layers of 256 ReLUs (VNN-COMP mnistfc 256x4)."""
    return _mlp(in_shape, n_classes, [MNISTFC_WIDTH] * 4, nhwc=True)


def fc_256x6(in_shape: Shape = (1, 28, 28), n_classes: int = 10) -> nn.Sequential:
    """Six hidden layers of 256 ReLUs (VNN-COMP mnistfc 256x6)."""
    return _mlp(in_shape, n_classes, [MNISTFC_WIDTH] * 6, nhwc=True)


def fc_500(in_shape: Shape = (1, 28, 28), n_classes: int = 10) -> nn.Sequential:
    """One hidden layer of 500 ReLUs (784-500-10; issue #25's "SDP-trained" net, trained here with a certified loss)."""
    return _mlp(in_shape, n_classes, [500], nhwc=True)


def cnn_lenet_small(in_shape: Shape = (1, 28, 28), n_classes: int = 10) -> nn.Sequential:
    """conv 16@4x4/2 SAME, conv 32@4x4/2 SAME, fc 100, out (MMR's LeNetSmall: 4804 ReLUs on MNIST)."""
    return _mmr_cnn(in_shape, n_classes, [(16, 4, 2), (32, 4, 2)], [100])


def cnn_lenet_large(in_shape: Shape = (1, 28, 28), n_classes: int = 10) -> nn.Sequential:
    """conv 32@4x4/2, 32@3x3/1, 64@4x4/2, 64@3x3/1 (SAME), fc 512, fc 512, out (MMR's kolter_wong lenet_large)."""
    return _mmr_cnn(in_shape, n_classes, [(32, 4, 2), (32, 3, 1), (64, 4, 2), (64, 3, 1)], [512, 512])


def kw_small(in_shape: Shape = (1, 28, 28), n_classes: int = 10) -> nn.Sequential:
    """Wong & Kolter's small MNIST CNN: Conv(16,4,s2,p1), Conv(32,4,s2,p1), Linear(., 100), Linear(100, K)."""
    c, h, w = _chw(in_shape)
    return nn.Sequential(
        nn.Conv2d(c, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * (h // 4) * (w // 4), 100), nn.ReLU(),
        nn.Linear(100, n_classes),
    )


def kw_large(in_shape: Shape = (1, 28, 28), n_classes: int = 10) -> nn.Sequential:
    """Wong et al.'s large MNIST CNN (4 convs, fc 512, fc 512)."""
    c, h, w = _chw(in_shape)
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, n_classes),
    )


def _chw(in_shape: Shape) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ModelError(f"a CNN needs a (C, H, W) input shape, got {in_shape}")
    return in_shape[0], in_shape[1], in_shape[2]


ARCHITECTURES: dict[str, ArchSpec] = {
    "fc1": ArchSpec("fc1", fc1, "MMR (Croce et al. 2019)", True),
    "fc10": ArchSpec("fc10", fc10, "MMR (Croce et al. 2019)", True),
    "fc_256x2": ArchSpec("fc_256x2", fc_256x2, "VNN-COMP 2021 mnistfc (784-256x2-10)", True),
    "fc_256x4": ArchSpec("fc_256x4", fc_256x4, "VNN-COMP 2021 mnistfc (784-256x4-10)", True),
    "fc_256x6": ArchSpec("fc_256x6", fc_256x6, "VNN-COMP 2021 mnistfc (784-256x6-10)", True),
    "fc_500": ArchSpec("fc_500", fc_500, "784-500-10 (issue #25's SDP-trained MNIST MLP; certified training here)", True),
    "cnn_lenet_small": ArchSpec("cnn_lenet_small", cnn_lenet_small, "MMR (Croce et al. 2019)", True),
    "cnn_lenet_large": ArchSpec("cnn_lenet_large", cnn_lenet_large, "MMR (Croce et al. 2019)", True),
    "kw_small": ArchSpec("kw_small", kw_small, "Wong & Kolter 2018", False),
    "kw_large": ArchSpec("kw_large", kw_large, "Wong et al. 2018", False),
}


def _register_extra() -> None:
    """SSP networks (training/ssp.py) and the feature pyramid decoder (training/fpd.py)."""
    from . import fpd, ssp

    ssp_opts = ("block", "blocks", "width")
    ARCHITECTURES["ssp_mnist"] = ArchSpec("ssp_mnist", ssp.ssp_mnist, "Kim et al. 2020 (SSP networks)", False,
                                          ssp_opts, batchnorm=True)
    ARCHITECTURES["ssp_cifar"] = ArchSpec("ssp_cifar", ssp.ssp_cifar, "Kim et al. 2020 (SSP networks)", False,
                                          ssp_opts, batchnorm=True)
    ARCHITECTURES["fpd_small"] = ArchSpec("fpd_small", fpd.fpd_small, "Li et al. 2020 (feature pyramid decoder)",
                                          False, ("width",), exports_network=False, batchnorm=True)


_register_extra()


def arch_spec(name: str) -> ArchSpec:
    if name not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {name!r}: use one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def _he_init(module: nn.Sequential, generator: torch.Generator) -> None:
    """MMR's init: truncated normal (2 std) with std sqrt(2 / fan_in), zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            std = math.sqrt(2.0 / fan_in)
            with torch.no_grad():
                w = torch.empty_like(m.weight)
                flat = w.view(-1)
                # redraw the values beyond 2 std (TF's truncated_normal) from the same generator
                flat.normal_(0.0, 1.0, generator=generator)
                bad = flat.abs() > 2
                while bool(bad.any()):
                    flat[bad] = torch.randn(int(bad.sum()), generator=generator, dtype=flat.dtype)
                    bad = flat.abs() > 2
                m.weight.copy_(w * std)
                if m.bias is not None:
                    m.bias.zero_()


def build(name: str, *, input_shape: Shape = (1, 28, 28), n_classes: int = 10, seed: int = 0, **options) -> nn.Module:
    """A freshly initialised float32 module in eval mode; the same seed gives the same weights.

    ``options`` (None values are dropped) go to architectures that take them, e.g. SSP's
    ``block``, ``blocks`` and ``width``.
    """
    spec = arch_spec(name)
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ModelError(f"architecture {name} does not take {', '.join(unknown)}"
                         + (f" (it takes {', '.join(spec.options)})" if spec.options else ""))
    shape = tuple(int(s) for s in input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = spec.build(shape, n_classes, **options)  # PyTorch's default init draws from the seeded global RNG
        if spec.mmr_layout:
            _he_init(module, torch.Generator().manual_seed(seed))
    return module.to(torch.float32).eval()  # BatchNorm uses running statistics until training starts


def to_network(
    module: nn.Module,
    input_shape: Shape,
    *,
    input_range: tuple[float, float] = (0.0, 1.0),
    name: str = "network",
    share_parameters: bool = False,
) -> Network:
    """The Network of a module: detached float64 copies, or (share_parameters) its live parameters.

    Modules that are not an ``nn.Sequential`` (SSP networks) convert themselves (``to_network``).
    """
    own = getattr(module, "to_network", None)
    if own is not None:
        return own(input_shape, input_range=input_range, name=name, share_parameters=share_parameters)
    return network_from_torch(module, input_shape, input_range, name, share_parameters=share_parameters)
