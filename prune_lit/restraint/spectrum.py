"""The PRUNE map on singular values (Ma et al., ICLR 2025, Eq. 9).

Every singular value σ of the accumulated edit ΔW that exceeds σ_max(W_0) is replaced by

    log mode:     log_α(σ) − log_α(σ_max(W_0)) + σ_max(W_0)
    linear mode:  σ / 2 + σ_max(W_0) / 2

and every σ ≤ σ_max(W_0) is kept. This mirrors ``func_log`` / ``func_logn`` / ``func_linear`` of the
reference code (mjy1111/PRUNE, ``easyeditor/editors/bi_editor_loadw.py``), which tests ``σ >= σ_max``;
at equality both maps return σ_max, so ``>`` and ``>=`` give the same numbers.

Note: the log map only *shrinks* every σ > σ_max when σ_max(W_0) ≥ 1 / ln α (its slope at σ_max is
1 / (σ_max ln α)). Below that, values just above σ_max are enlarged, exactly as in the reference code;
`is_contraction` tells which regime a matrix is in.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

RestraintMode = Literal["log", "linear"]
MODES: tuple[str, ...] = ("log", "linear")


def check_restraint_args(sigma_max: float, alpha: float, mode: str) -> None:
    """Raise ``ValueError`` for a non-positive σ_max, a log base ≤ 1, or an unknown mode."""
    if mode not in MODES:
        raise ValueError(f"unknown restraint mode {mode!r}; expected one of {MODES}")
    if not (math.isfinite(sigma_max) and sigma_max > 0):
        raise ValueError(f"sigma_max must be a positive finite number, got {sigma_max}")
    if mode == "log" and not (math.isfinite(alpha) and alpha > 1):
        raise ValueError(f"alpha (the log base) must be > 1, got {alpha}")


def restrain_singular_values(
    s: torch.Tensor, sigma_max: float, alpha: float = math.e, mode: RestraintMode = "log"
) -> torch.Tensor:
    """Apply the PRUNE map to singular values.

    Args:
        s: ``[k]`` non-negative singular values of ΔW (any order, any float dtype).
        sigma_max: σ_max(W_0), the largest singular value of the unedited matrix.
        alpha: log base α (the paper uses e, 1.2, 1.5, 2); ignored in linear mode.
        mode: ``"log"`` or ``"linear"``.

    Returns:
        ``[k]`` restrained values, same dtype; entries ≤ ``sigma_max`` are returned unchanged.
    """
    check_restraint_args(sigma_max, alpha, mode)
    if s.dim() != 1:
        raise ValueError(f"expected a 1-D tensor of singular values, got shape {tuple(s.shape)}")
    above = s > sigma_max
    if mode == "log":
        ln_alpha = math.log(alpha)
        mapped = (torch.log(s.clamp_min(sigma_max)) - math.log(sigma_max)) / ln_alpha + sigma_max
    else:
        mapped = 0.5 * s + 0.5 * sigma_max
    return torch.where(above, mapped, s)


def is_contraction(sigma_max: float, alpha: float = math.e, mode: RestraintMode = "log") -> bool:
    """True when the map never enlarges a singular value (always true in linear mode)."""
    check_restraint_args(sigma_max, alpha, mode)
    return mode == "linear" or sigma_max * math.log(alpha) >= 1.0
