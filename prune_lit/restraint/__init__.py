"""PRUNE spectral restraint: pure functions on tensors (no Lightning here)."""

from prune_lit.restraint.lowrank import LowRankSVD, WarmStarts, lowrank_svd, thin_svd
from prune_lit.restraint.norms import condition_number, singular_values, spectral_norm
from prune_lit.restraint.prune import RestraintResult, restrain_delta, restrain_delta_with_stats
from prune_lit.restraint.spectrum import MODES, RestraintMode, is_contraction, restrain_singular_values

__all__ = [
    "LowRankSVD",
    "MODES",
    "RestraintMode",
    "RestraintResult",
    "condition_number",
    "is_contraction",
    "lowrank_svd",
    "restrain_delta",
    "restrain_delta_with_stats",
    "restrain_singular_values",
    "singular_values",
    "spectral_norm",
    "thin_svd",
    "WarmStarts",
]
