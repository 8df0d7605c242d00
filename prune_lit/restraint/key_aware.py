"""Key-aware PRUNE (this project's own option, not PRUNE's default): restrain the edit as ordinary text sees it.

PRUNE bounds the singular values of ΔW. What a token's forward pass sees is ``ΔW k`` for keys ``k`` drawn like
ordinary text, and with ``C = E[k kᵀ]`` (the second moment the editors already compute,
`prune_lit.editors.stats`):

    E‖ΔW k‖² = E tr(ΔW k kᵀ ΔWᵀ) = tr(ΔW C ΔWᵀ) = ‖ΔW C^{1/2}‖²_F.

So the map is applied to ``M = ΔW C^{1/2}`` (``[m, n]``, ΔW as ``[out, in]``, C ``[in, in]``). With the SVD
``M = Σ σ_i u_i v_iᵀ`` and σ'_i the PRUNE map of σ_i (`restrain_singular_values`), the restrained edit

    ΔW' = ΔW + Σ_i (σ'_i / σ_i − 1) u_i u_iᵀ ΔW

satisfies ΔW' C^{1/2} = M + Σ_i (σ'_i − σ_i) u_i v_iᵀ (because u_iᵀ ΔW C^{1/2} = σ_i v_iᵀ): exactly the
restrained M, with no C^{-1/2} (C may be singular). With C = I it is PRUNE.

Threshold rules (``rule``), both scaled by ``scale``:

* ``"spectral"``: τ = scale · σ_max(W_0 C^{1/2}); each σ_i(M) > τ is mapped (PRUNE's rule moved to key space).
  Bound: ‖ΔW' C^{1/2}‖₂ ≤ max(τ, map(σ_max(M))).
* ``"energy"``: τ = scale · ‖W_0 C^{1/2}‖_F = scale · (E‖W_0 k‖²)^{1/2}; the *total* key-space energy
  F = ‖M‖_F is mapped, F' = map(F), and every σ_i is scaled by F'/F. Bound: (E‖ΔW' k‖²)^{1/2} = F'.

The map is PRUNE's log map, so like PRUNE it only shrinks when τ ≥ 1 / ln α (`is_contraction`); below that,
values just above τ grow a little. The SVD of M never forms M: ΔW's range is found by the low-rank range
finder (`lowrank_svd`, warm-started between steps), then only the ``[k, n]`` core ``Uᵀ ΔW C^{1/2}`` is decomposed.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from prune_lit.restraint.lowrank import lowrank_svd, thin_svd
from prune_lit.restraint.prune import RestraintResult
from prune_lit.restraint.spectrum import RestraintMode, check_restraint_args, restrain_singular_values

ThresholdRule = Literal["spectral", "energy"]
RULES: tuple[str, ...] = ("spectral", "energy")


def check_key_aware_args(rule: str, scale: float) -> None:
    """Raise ``ValueError`` for an unknown threshold rule or a non-positive scale."""
    if rule not in RULES:
        raise ValueError(f"unknown key-aware threshold rule {rule!r}; expected one of {RULES}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"threshold scale must be a positive finite number, got {scale}")


def sqrt_psd(c: Tensor) -> Tensor:
    """``C^{1/2}`` ``[n, n]`` (float64) of a symmetric positive semi-definite ``c`` ``[n, n]``; negative round-off eigenvalues -> 0."""
    if c.dim() != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"C must be square, got shape {tuple(c.shape)}")
    if not torch.isfinite(c).all():
        raise ValueError("C contains NaN or Inf")
    c64 = c.double()
    evals, evecs = torch.linalg.eigh(0.5 * (c64 + c64.T))
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def key_threshold(w0: Tensor, sqrt_c: Tensor, rule: ThresholdRule = "spectral", scale: float = 1.0) -> float:
    """τ for ``w0`` ``[m, n]`` and ``sqrt_c`` C^{1/2} ``[n, n]``: scale · σ_max(W_0 C^{1/2}) (spectral) or · ‖W_0 C^{1/2}‖_F (energy)."""
    check_key_aware_args(rule, scale)
    if w0.dim() != 2 or sqrt_c.shape != (w0.shape[1], w0.shape[1]):
        raise ValueError(f"W_0 {tuple(w0.shape)} and C^(1/2) {tuple(sqrt_c.shape)} do not match ([m, n] and [n, n])")
    m = w0.double() @ sqrt_c.double()
    base = float(torch.linalg.matrix_norm(m, ord=2)) if rule == "spectral" else float(torch.linalg.matrix_norm(m))
    if not base > 0:
        raise ValueError("W_0 C^(1/2) is zero: no key-space threshold")
    return scale * base


@torch.no_grad()
def restrain_delta_key_aware(
    delta: Tensor,
    sqrt_c: Tensor,
    threshold: float,
    alpha: float = math.e,
    mode: RestraintMode = "log",
    rule: ThresholdRule = "spectral",
    sqrt_c_norm: float | None = None,
    rtol: float = 1e-5,
    init_basis: Tensor | None = None,
    max_rank: int | None = None,
) -> RestraintResult:
    """Key-aware PRUNE of ``delta`` ΔW ``[m, n]`` (``[out, in]``) with ``sqrt_c`` C^{1/2} ``[n, n]``.

    Args:
        threshold: τ from `key_threshold` (same ``rule``).
        alpha, mode: PRUNE's map (`restrain_singular_values`).
        rule: ``"spectral"`` (map each σ(ΔW C^{1/2}) > τ) or ``"energy"`` (map ‖ΔW C^{1/2}‖_F, scale all σ alike).
        sqrt_c_norm: ‖C^{1/2}‖₂ if known (enables a skip without any SVD when ‖ΔW‖_F · ‖C^{1/2}‖₂ ≤ τ).
        rtol, init_basis, max_rank: for the range finder on ΔW (`lowrank_svd`; ``init_basis``: the previous step's
            ``result.basis``, ``max_rank=0``: ΔW is known to be of high rank, take the thin SVD at once).

    Returns:
        `RestraintResult` whose correction ``left [m, j] @ right [j, n]`` = Σ_i (σ'_i/σ_i − 1) u_i u_iᵀ ΔW;
        ``sigma_max_before`` / ``sigma_max_after`` are σ_max(ΔW C^{1/2}) before / after, ``frobenius`` = ‖ΔW‖_F.
    """
    check_restraint_args(threshold, alpha, mode)
    check_key_aware_args(rule, 1.0)
    if delta.dim() != 2 or sqrt_c.shape != (delta.shape[1], delta.shape[1]):
        raise ValueError(f"ΔW {tuple(delta.shape)} and C^(1/2) {tuple(sqrt_c.shape)} do not match ([m, n] and [n, n])")
    fro = float(torch.linalg.vector_norm(delta))
    if not math.isfinite(fro):
        raise ValueError("ΔW contains NaN or Inf; refusing to restrain it")
    if sqrt_c_norm is not None and fro * sqrt_c_norm <= threshold:  # ‖M‖₂ ≤ ‖M‖_F ≤ ‖ΔW‖_F ‖C^{1/2}‖₂ ≤ τ
        return RestraintResult(delta, None, None, 0, None, None, fro, None, "skipped")
    if fro == 0.0:
        return RestraintResult(delta, None, None, 0, 0.0, 0.0, fro, 0, "zero")
    svd = lowrank_svd(delta, rtol=rtol, init=init_basis, max_rank=max_rank)  # ΔW ≈ U diag(S) Vh; range(M) ⊆ range(ΔW) = span U
    if svd.rank == 0:
        return RestraintResult(delta, None, None, 0, 0.0, 0.0, fro, 0, svd.method)
    u = svd.U  # [m, k]
    ut_delta = svd.S[:, None] * svd.Vh  # [k, n] = Uᵀ ΔW
    core = ut_delta.to(sqrt_c.dtype) @ sqrt_c  # [k, n] = Uᵀ M
    csvd = thin_svd(core)  # core = u_c diag(s) v_cᵀ, M = (U u_c) diag(s) v_cᵀ
    s = csvd.S
    if rule == "spectral":
        s_new = restrain_singular_values(s, threshold, alpha, mode)
    else:
        f = float(torch.linalg.vector_norm(s))
        f_new = float(restrain_singular_values(s.new_tensor([f]), threshold, alpha, mode)[0])
        s_new = s * (f_new / f)
    changed = s_new != s
    j = int(changed.sum())
    before = float(s[0])
    if j == 0:
        return RestraintResult(delta, None, None, 0, before, before, fro, svd.rank, svd.method, svd.warm_basis)
    # the map is monotone and S sorted, so the changed components are the leading j (all of them for "energy")
    uc = csvd.left(j)  # [k, j]
    ratio = s_new[:j] / s[:j] - 1.0
    left = ((u @ uc) * ratio).to(delta.dtype)  # [m, j]
    right = (uc.T @ ut_delta).to(delta.dtype)  # [j, n] = u_iᵀ ΔW
    after = max(float(s_new.max()), float(s[j]) if s.numel() > j else 0.0)
    return RestraintResult(delta, left, right, j, before, after, fro, svd.rank, svd.method, svd.warm_basis)
