"""Known architectures: the conv strides and paddings that weight files do not store.

MMR repo (github.com/max-andr/provable-robustness-max-linear-regions, ``kolter_wong/models.py``)
and convex_adversarial (Wong & Kolter 2018, ``examples/problems.py``). Only the geometry of the
convolutions is listed; layer sizes come from the weights themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelError


@dataclass(frozen=True)
class ConvGeometry:
    kernel: int
    stride: int
    padding: int  # symmetric zero padding, PyTorch style (equal to TF 'SAME' for these nets)


@dataclass(frozen=True)
class Arch:
    name: str
    convs: tuple[ConvGeometry, ...]
    description: str


_K4S2 = ConvGeometry(4, 2, 1)
_K3S1 = ConvGeometry(3, 1, 1)

ARCHS: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch("cnn_lenet_small", (_K4S2, _K4S2), "MMR: conv 16@4x4 s2, conv 32@4x4 s2, fc 100, fc out"),
        Arch("cnn_lenet_large", (_K4S2, _K3S1, _K4S2, _K3S1), "MMR: conv 32@4x4 s2, 32@3x3, 64@4x4 s2, 64@3x3, fc 512, 512, out"),
        Arch("kw_small", (_K4S2, _K4S2), "Wong-Kolter small: conv 16@4x4 s2 p1, conv 32@4x4 s2 p1, fc 100, fc 10"),
        Arch("kw_large", (_K3S1, _K4S2, _K3S1, _K4S2), "Wong-Kolter large: conv 32@3x3, 32@4x4 s2, 64@3x3, 64@4x4 s2, fc 512, 512, 10"),
        Arch("fc1", (), "one hidden fully connected layer (MMR: 1024 units)"),
        Arch("fc10", (), "ten hidden fully connected layers (MMR)"),
    )
}

# The usual choice when nothing says otherwise: 4x4 kernels downsample, odd kernels keep the size.
COMMON = {4: ConvGeometry(4, 2, 1), 3: ConvGeometry(3, 1, 1), 5: ConvGeometry(5, 1, 2), 1: ConvGeometry(1, 1, 0)}


def get_arch(name: str) -> Arch:
    key = name.strip().lower()
    if key not in ARCHS:
        raise ModelError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHS))}")
    return ARCHS[key]


def arch_convs(name: str, n_convs: int, kernels: list[int]) -> tuple[ConvGeometry, ...]:
    arch = get_arch(name)
    if len(arch.convs) != n_convs:
        raise ModelError(f"architecture {arch.name} has {len(arch.convs)} conv layers, the file has {n_convs}")
    for i, (g, k) in enumerate(zip(arch.convs, kernels)):
        if g.kernel != k:
            raise ModelError(f"architecture {arch.name}: conv {i + 1} has a {g.kernel}x{g.kernel} kernel, the file has {k}x{k}")
    return arch.convs
