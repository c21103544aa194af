"""Analyses of a trained Network (``verify analyze``): operator norms, Lipschitz statistics, growth ratios.

* :mod:`.norms` -- exact L1 / Linf operator norms of Linear, Conv2d (stride, padding), AvgPool2d,
  ChannelAffine / BatchNorm layers, computed from the kernel; spectral-norm estimates; records
  and plots; the same for torch modules, differentiably (norm decay training).
* :mod:`.lipschitz` -- gradient-norm estimates on data, the product-of-norms bound (labelled as
  the loose upper bound it is), certified robustness from :mod:`verify.bounds` beside them.
* :mod:`.pgr` -- the perturbation growth ratio per group of layers for PGD points (SSP networks).
"""

from .lipschitz import LipschitzSummary, gradient_norms, lipschitz_product_bound, lipschitz_summary, output_factor
from .norms import (
    LayerNorms,
    conv_operator_norm,
    layer_norm_bound,
    layer_norms,
    linear_operator_norm,
    module_norms,
    network_norms,
    operator_norm,
    plot_norm_history,
    plot_norms,
    spectral_norm_estimate,
)
from .pgr import GroupGrowth, PGRResult, default_groups, growth_ratios, perturbation_growth, plot_pgr

__all__ = [
    "GroupGrowth", "LayerNorms", "LipschitzSummary", "PGRResult", "conv_operator_norm", "default_groups",
    "gradient_norms", "growth_ratios", "layer_norm_bound", "layer_norms", "linear_operator_norm",
    "lipschitz_product_bound", "lipschitz_summary", "module_norms", "network_norms", "operator_norm",
    "output_factor", "perturbation_growth", "plot_norm_history", "plot_norms", "plot_pgr", "spectral_norm_estimate",
]
