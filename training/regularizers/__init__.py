"""Training regularisers: MMR (:mod:`.mmr`) and certified-training losses from verify.bounds (:mod:`.kw`)."""

from .kw import ROBUST_METHODS, RobustSchedule, margin_lower_bounds, robust_ce, robust_loss
from .mmr import MMRSchedule, MMRValue, RegionDistances, hinge_closest, mmr_terms, region_distances, region_jacobians

__all__ = [
    "MMRSchedule", "MMRValue", "ROBUST_METHODS", "RegionDistances", "RobustSchedule", "hinge_closest",
    "margin_lower_bounds", "mmr_terms", "region_distances", "region_jacobians", "robust_ce", "robust_loss",
]
