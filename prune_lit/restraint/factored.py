"""PRUNE restraint of an accumulated edit kept as thin factors ΔW = A Bᵀ (pure tensor math, no model).

MEND's update of one matrix is a product of thin factors the editor already holds: ΔW = −lr·δ̃ᵀũ with one
column per token row (rank ≤ n tokens). The accumulated ΔW after t edits is therefore ``A Bᵀ`` with
``A = [a_1 … a_t]``, ``B = [b_1 … b_t]``. Its SVD needs no m×n work at all: QR of both factors and an SVD of
the small core ``R_A R_Bᵀ``. The restrained ΔW' = U diag(s') Vᵀ is itself such a factorisation, so the next
edit continues from ``(U diag(s'), V)``; its rank never exceeds min(m, n).

A cheap certificate skips most work: σ_max(ΔW + a bᵀ) ≤ σ_max(ΔW) + ‖a bᵀ‖₂ (Weyl), and ‖a bᵀ‖₂ is the
largest singular value of a k×k matrix. While that bound stays ≤ σ_max(W_0) no singular value can exceed it
and the restraint is exactly the identity.

The result equals the dense `prune_lit.restraint.restrain_delta_with_stats` on ``A Bᵀ`` (same components
touched, same map) up to round-off; `tests/test_restraint_factored.py` checks ≤ 1e-4 relative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from prune_lit.restraint.spectrum import RestraintMode, check_restraint_args, restrain_singular_values

# Singular values below this share of the largest are numerical zeros of the QR / core SVD (rank-deficient
# factors, e.g. the same token twice); they are dropped from the carried factorisation.
DROP_RTOL = 1e-12


@dataclass
class FactoredSVD:
    """``A Bᵀ = U diag(S) Vᵀ``: ``U [m, q]``, ``S [q]`` (descending), ``V [n, q]``, all float64."""

    U: Tensor
    S: Tensor
    V: Tensor


@dataclass
class FactoredRestraint:
    """Outcome of restraining ``A Bᵀ``.

    ``left [m, r]`` / ``right [n, r]`` factor the restrained ΔW' = left @ rightᵀ (the factorisation to add the
    next edit to). The change ΔW' − ΔW is ``corr_left @ corr_rightᵀ`` (``[m, j]``, ``[n, j]``, j = n_restrained),
    None when nothing was restrained.
    """

    left: Tensor
    right: Tensor
    corr_left: Tensor | None
    corr_right: Tensor | None
    n_restrained: int
    sigma_max_before: float
    sigma_max_after: float
    rank: int

    def apply_(self, w: Tensor) -> Tensor:
        """``w += corr_left @ corr_rightᵀ`` in place (``w``: ``[m, n]``, any float dtype); returns ``w``."""
        if self.corr_left is not None and self.corr_right is not None:
            w.addmm_(self.corr_left.to(w.dtype), self.corr_right.T.to(w.dtype))
        return w


def factored_svd(a: Tensor, b: Tensor) -> FactoredSVD:
    """SVD of ``a @ bᵀ`` from its factors. ``a``: [m, r], ``b``: [n, r] -> `FactoredSVD` (rank ≤ min(m, n, r)).

    Cost O((m + n) r² + r³) in float64 instead of O(m n min(m, n)) for the dense product.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"factors must be [m, r] and [n, r], got {tuple(a.shape)} and {tuple(b.shape)}")
    a64, b64 = a.double(), b.double()
    qa, ra = torch.linalg.qr(a64)
    qb, rb = torch.linalg.qr(b64)
    uc, s, vch = torch.linalg.svd(ra @ rb.T, full_matrices=False)
    keep = s > (float(s[0]) * DROP_RTOL if s.numel() else 0.0)
    if not s.numel() or float(s[0]) == 0.0:
        keep = torch.zeros_like(s, dtype=torch.bool)
    return FactoredSVD(qa @ uc[:, keep], s[keep], qb @ vch[keep].T)


def spectral_norm_of_factors(a: Tensor, b: Tensor) -> float:
    """σ_max(``a @ bᵀ``) for thin factors ``a [m, k]``, ``b [n, k]``: √λ_max((aᵀa)(bᵀb)), two k×k Gram matrices.

    ``(a bᵀ)ᵀ(a bᵀ) = b (aᵀa) bᵀ`` has the non-zero eigenvalues of ``(aᵀa)(bᵀb)``. Accurate to ~1e-8 relative
    in float64 (squared values), ample for a bound that decides whether an SVD is needed.
    """
    if a.shape[1] == 0:
        return 0.0
    a64, b64 = a.double(), b.double()
    lam = torch.linalg.eigvals((a64.T @ a64) @ (b64.T @ b64)).real.max()
    return float(lam.clamp_min(0).sqrt())


@torch.no_grad()
def restrain_factored(
    a: Tensor, b: Tensor, sigma_max: float, alpha: float = math.e, mode: RestraintMode = "log"
) -> FactoredRestraint:
    """PRUNE-restrain ΔW = ``a @ bᵀ`` without forming it.

    Args:
        a: ``[m, r]`` left factor; b: ``[n, r]`` right factor (any float dtype; computed in float64).
        sigma_max: σ_max(W_0) of the matrix; alpha, mode: the PRUNE map (`restrain_singular_values`).

    Returns:
        `FactoredRestraint`: the factors of ΔW' (singular values > ``sigma_max`` mapped, the rest kept) and
        the correction ΔW' − ΔW as thin factors.
    """
    check_restraint_args(sigma_max, alpha, mode)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("ΔW factors contain NaN or Inf; refusing to restrain them")
    svd = factored_svd(a, b)
    s_new = restrain_singular_values(svd.S, sigma_max, alpha, mode)
    n = int((s_new != svd.S).sum())
    before = float(svd.S[0]) if svd.S.numel() else 0.0
    after = float(s_new.max()) if s_new.numel() else 0.0
    left, right = svd.U * s_new, svd.V
    if n == 0:
        return FactoredRestraint(left, right, None, None, 0, before, after, int(svd.S.numel()))
    # S is sorted and the map is monotone, so the restrained components are the leading n.
    corr_left = svd.U[:, :n] * (s_new[:n] - svd.S[:n])
    return FactoredRestraint(left, right, corr_left, svd.V[:, :n], n, before, after, int(svd.S.numel()))
