"""Small networks, with seeded random weights, used by the format tests."""

from __future__ import annotations

import torch

from verify.network import AvgPool2d, ChannelAffine, Conv2d, Flatten, Linear, MaxPool2d, Network, ReLU, Residual


def _w(*shape: int, scale: float) -> torch.Tensor:
    return torch.randn(*shape) * scale


def lenet_small(flatten: str = "NHWC", seed: int = 1) -> Network:
    """MMR cnn_lenet_small: conv 16@4x4 s2 SAME, conv 32@4x4 s2 SAME, fc 100, fc 10."""
    torch.manual_seed(seed)
    return Network((
        Conv2d(_w(16, 1, 4, 4, scale=0.35), _w(16, scale=0.1), 2, 1), ReLU(),
        Conv2d(_w(32, 16, 4, 4, scale=0.1), _w(32, scale=0.1), 2, 1), ReLU(), Flatten(flatten),
        Linear(_w(100, 1568, scale=0.04), _w(100, scale=0.1)), ReLU(),
        Linear(_w(10, 100, scale=0.15), _w(10, scale=0.1)),
    ), (1, 28, 28), name="lenet_small")


def fc1(seed: int = 2) -> Network:
    torch.manual_seed(seed)
    return Network((
        Flatten("NHWC"), Linear(_w(64, 784, scale=0.05), _w(64, scale=0.1)), ReLU(),
        Linear(_w(10, 64, scale=0.2), _w(10, scale=0.1)),
    ), (1, 28, 28), name="fc1")


def fancy(seed: int = 3) -> Network:
    """Normalisation, asymmetric padding, AvgPool, MaxPool, an identity and a projection residual."""
    torch.manual_seed(seed)
    return Network((
        ChannelAffine.normalize([0.1307], [0.3081]),
        Conv2d(_w(8, 1, 3, 3, scale=0.3), _w(8, scale=0.1), 1, (0, 1, 0, 1)), ReLU(),
        AvgPool2d(2),
        Residual([Conv2d(_w(8, 8, 3, 3, scale=0.1), _w(8, scale=0.1), 1, 1), ReLU(),
                  Conv2d(_w(8, 8, 3, 3, scale=0.1), _w(8, scale=0.1), 1, 1)]),
        ReLU(), MaxPool2d(2),
        Residual([Conv2d(_w(4, 8, 1, 1, scale=0.3), _w(4, scale=0.1)), ReLU()],
                 [Conv2d(_w(4, 8, 1, 1, scale=0.3), _w(4, scale=0.1))]),
        Flatten("NCHW"), Linear(_w(10, 4 * 6 * 6, scale=0.1), _w(10, scale=0.1)),
    ), (1, 28, 28), input_range=(0.0, 1.0), name="fancy", metadata={"trained_by": "test"})
