"""PRUNE restraint of an accumulated edit ΔW = W − W_0 (pure tensor math, no model).

Differences from the reference code (mjy1111/PRUNE ``read_weights``), which takes full
``np.linalg.svd`` of W_0 and ΔW and rebuilds ΔW from its first ``matrix_rank(ΔW)`` components:

* σ_max(W_0) is passed in (callers compute it once per matrix, see `prune_lit.restraint.norms`).
* Only the components with σ > σ_max(W_0) are touched: ΔW' = ΔW + U_r (s'_r − s_r) V_rᵀ. The rest of ΔW,
  including numerical noise below the rank cut-off that the reference drops, is left as it was;
  when nothing exceeds σ_max the very same tensor comes back.
* If ‖ΔW‖_F ≤ σ_max(W_0) no singular value can exceed it, so no SVD is taken at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prune_lit.restraint.lowrank import LowRankSVD, lowrank_svd
from prune_lit.restraint.spectrum import RestraintMode, check_restraint_args, restrain_singular_values


@dataclass
class RestraintResult:
    """Outcome of restraining one ``[m, n]`` ΔW; the change is kept as a rank-r product ``left @ right``."""

    input: torch.Tensor  # [m, n] the ΔW that was restrained
    left: torch.Tensor | None  # [m, r] U_r diag(s'_r − s_r), or None when nothing was restrained
    right: torch.Tensor | None  # [r, n] V_rᵀ
    n_restrained: int  # how many singular values exceeded σ_max(W_0) (= r)
    sigma_max_before: float | None  # σ_max(ΔW); None when skipped by the Frobenius bound (then ≤ frobenius)
    sigma_max_after: float | None  # σ_max(ΔW'); None when skipped
    frobenius: float  # ‖ΔW‖_F before restraint
    rank: int | None  # numerical rank found by the SVD (None when skipped)
    method: str  # "skipped", "lowrank", "full" or "zero"
    basis: torch.Tensor | None = None  # [m, rank] left singular vectors of ΔW ("lowrank" only): `init` for the next step

    def apply_to(self, x: torch.Tensor) -> torch.Tensor:
        """``x + left @ right`` in one fused pass (``x`` = ΔW gives ΔW', ``x`` = W gives the restrained W)."""
        if self.left is None or self.right is None:
            return x
        return torch.addmm(x, self.left.to(x.dtype), self.right.to(x.dtype))

    def apply_(self, x: torch.Tensor) -> torch.Tensor:
        """In-place `apply_to` (``x += left @ right``, no new m×n buffer); returns ``x``."""
        if self.left is not None and self.right is not None:
            x.addmm_(self.left.to(x.dtype), self.right.to(x.dtype))
        return x

    @property
    def delta(self) -> torch.Tensor:
        """``[m, n]`` restrained ΔW' (the input tensor itself when nothing was restrained)."""
        return self.apply_to(self.input)

    @property
    def correction(self) -> torch.Tensor | None:
        """``[m, n]`` ΔW' − ΔW, or None when nothing was restrained."""
        return None if self.left is None or self.right is None else self.left @ self.right


@torch.no_grad()
def restrain_delta_with_stats(
    delta: torch.Tensor,
    sigma_max: float,
    alpha: float = math.e,
    mode: RestraintMode = "log",
    rtol: float = 1e-5,
    max_rank: int | None = None,
    init_basis: torch.Tensor | None = None,
) -> RestraintResult:
    """Restrain ``delta [m, n]`` and report what happened (see `restrain_delta`).

    ``rtol`` / ``max_rank`` / ``init_basis`` go to `lowrank_svd` (``init_basis``: the previous step's
    ``RestraintResult.basis`` for the same matrix, which makes sequential steps one pass over ΔW).
    """
    check_restraint_args(sigma_max, alpha, mode)
    if delta.dim() != 2:
        raise ValueError(f"ΔW must be a 2-D matrix, got shape {tuple(delta.shape)}")
    fro = float(torch.linalg.vector_norm(delta))
    if not math.isfinite(fro):
        raise ValueError("ΔW contains NaN or Inf; refusing to restrain it")
    if fro <= sigma_max:  # σ_max(ΔW) ≤ ‖ΔW‖_F ≤ σ_max(W_0): the map is the identity
        return RestraintResult(delta, None, None, 0, None, None, fro, None, "skipped")
    # atol: whatever ‖ΔW‖ is, no singular value near σ_max(W_0) may be taken for round-off.
    svd: LowRankSVD = lowrank_svd(delta, rtol=rtol, max_rank=max_rank, init=init_basis, atol=1e-3 * sigma_max)
    basis = svd.warm_basis
    s_new = restrain_singular_values(svd.S, sigma_max, alpha, mode)
    n = int((s_new != svd.S).sum())
    before = float(svd.S[0]) if svd.rank else 0.0
    if n == 0:
        return RestraintResult(delta, None, None, 0, before, before, fro, svd.rank, svd.method, basis)
    # S is sorted and the map is monotone, so the restrained components are the leading n.
    u_n = basis[:, :n] if basis is not None else svd.left(n)
    left = (u_n * (s_new[:n] - svd.S[:n])).to(delta.dtype)
    right = svd.right(n).to(delta.dtype)
    after = max(float(s_new.max()), float(svd.S[n]) if svd.rank > n else 0.0)
    return RestraintResult(delta, left, right, n, before, after, fro, svd.rank, svd.method, basis)


def restrain_delta(
    delta: torch.Tensor, sigma_max: float, alpha: float = math.e, mode: RestraintMode = "log"
) -> torch.Tensor:
    """PRUNE-restrain an accumulated edit.

    Args:
        delta: ``[m, n]`` ΔW = W − W_0 (float32 or float64).
        sigma_max: σ_max(W_0) of the same matrix.
        alpha: log base (e, 1.2, 1.5, 2 in the paper).
        mode: ``"log"`` or ``"linear"``.

    Returns:
        ``[m, n]`` ΔW' whose singular values above ``sigma_max`` went through `restrain_singular_values`
        and whose other components are those of ``delta``.

    Raises:
        ValueError: ``delta`` holds NaN/Inf or is not 2-D; bad ``sigma_max`` / ``alpha`` / ``mode``.
    """
    return restrain_delta_with_stats(delta, sigma_max, alpha, mode).delta
