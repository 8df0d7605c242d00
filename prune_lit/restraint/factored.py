"""PRUNE restraint of an accumulated edit kept as thin factors ΔW = A Bᵀ (pure tensor math, no model).

MEND's update of one matrix is a product of thin factors the editor already holds: ΔW = −lr·δ̃ᵀũ with one
column per token row (rank ≤ n tokens). The accumulated ΔW after t edits is therefore ``A Bᵀ`` with
``A = [a_1 … a_t]``, ``B = [b_1 … b_t]``. Its SVD needs no m×n work at all: QR of both factors and an SVD of
the small core ``R_A R_Bᵀ``. The restrained ΔW' = U diag(s') Vᵀ is itself such a factorisation, so the next
edit continues from it: only the new columns are orthogonalised against U and V (`factored_svd` with a
``basis``); the rank never exceeds min(m, n).

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
from prune_lit.restraint.prune import restrain_delta_with_stats

# Singular values below this share of the largest are numerical zeros of the QR / core SVD (rank-deficient
# factors, e.g. the same token twice); they are dropped from the carried factorisation.
DROP_RTOL = 1e-12


@dataclass
class FactoredSVD:
    """``U diag(S) Vᵀ`` with orthonormal ``U [m, q]``, ``V [n, q]`` and ``S [q]`` (descending), all float64."""

    U: Tensor
    S: Tensor
    V: Tensor

    @classmethod
    def zero(cls, m: int, n: int, device: torch.device | str | None = None) -> FactoredSVD:
        """The SVD of the ``[m, n]`` zero matrix (no components)."""
        z = {"dtype": torch.float64, "device": device}
        return cls(torch.zeros(m, 0, **z), torch.zeros(0, **z), torch.zeros(n, 0, **z))

    @property
    def rank(self) -> int:
        return int(self.S.numel())


@dataclass
class FactoredRestraint:
    """Outcome of restraining ``A Bᵀ`` (or ``basis + A Bᵀ``).

    ``svd`` is the restrained ΔW' = U diag(s') Vᵀ (the factorisation to add the next edit to). The change
    ΔW' − ΔW is ``corr_left @ corr_rightᵀ`` (``[m, j]``, ``[n, j]``, j = n_restrained), None when nothing was
    restrained.
    """

    svd: FactoredSVD
    corr_left: Tensor | None
    corr_right: Tensor | None
    n_restrained: int
    sigma_max_before: float
    sigma_max_after: float

    @property
    def left(self) -> Tensor:
        """``[m, q]`` U diag(s'): ΔW' = left @ rightᵀ."""
        return self.svd.U * self.svd.S

    @property
    def right(self) -> Tensor:
        """``[n, q]`` V."""
        return self.svd.V

    @property
    def rank(self) -> int:
        return self.svd.rank

    def apply_(self, w: Tensor) -> Tensor:
        """``w += corr_left @ corr_rightᵀ`` in place (``w``: ``[m, n]``, any float dtype); returns ``w``."""
        if self.corr_left is not None and self.corr_right is not None:
            w.addmm_(self.corr_left.to(w.dtype), self.corr_right.T.to(w.dtype))
        return w


def _extend(q: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split ``x [m, k]`` against the orthonormal ``q [m, p]``: ``x = q c + e r`` with ``[q, e]`` orthonormal.

    Returns ``(c [p, k], e [m, j], r [j, k])``; directions of ``x`` outside span(q) below 1e-12·‖x‖ are
    numerical zeros and dropped (j ≤ k). Two projections (classical Gram–Schmidt twice) keep ``e ⟂ q``.
    """
    c = q.T @ x
    y = x - q @ c
    c2 = q.T @ y
    y = y - q @ c2
    c = c + c2
    if y.shape[1] == 0:
        return c, y, y.new_zeros(0, 0)
    e, sig, wt = torch.linalg.svd(y, full_matrices=False)
    keep = sig > DROP_RTOL * max(float(torch.linalg.vector_norm(x)), 1e-300)
    e = e[:, keep]
    e = e - q @ (q.T @ e)  # round-off along q from the SVD
    e, rr = torch.linalg.qr(e)
    return c, e, rr @ (sig[keep, None] * wt[keep])


def factored_svd(a: Tensor, b: Tensor, basis: FactoredSVD | None = None) -> FactoredSVD:
    """SVD of ``basis + a @ bᵀ`` (``basis`` = U diag(S) Vᵀ, None = 0). ``a``: [m, k], ``b``: [n, k].

    Without a basis: QR of both factors and an SVD of the k×k core, O((m + n) k² + k³) in float64. With one
    (q components): the new columns are orthogonalised against U and V only, O((m + n) q k), then a
    (q + k)-square core SVD and the rotation of ``[U, E_a]`` / ``[V, E_b]``, O((m + n)(q + k)²). Never an m×n
    matrix. Rank ≤ min(m, n, q + k); components below 1e-12·σ_1 are dropped.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"factors must be [m, k] and [n, k], got {tuple(a.shape)} and {tuple(b.shape)}")
    a64, b64 = a.double(), b.double()
    if basis is None:
        basis = FactoredSVD.zero(a.shape[0], b.shape[0], a.device)
    if basis.U.shape[0] != a.shape[0] or basis.V.shape[0] != b.shape[0]:
        raise ValueError(f"basis is {basis.U.shape[0]}x{basis.V.shape[0]}, factors are for {a.shape[0]}x{b.shape[0]}")
    q = basis.rank
    ca, ea, ra = _extend(basis.U, a64)
    cb, eb, rb = _extend(basis.V, b64)
    # [U, E_a] K [V, E_b]ᵀ with K = diag(S, 0) + [c_a; r_a] [c_b; r_b]ᵀ
    left = torch.cat([ca, ra], 0)
    right = torch.cat([cb, rb], 0)
    core = left @ right.T
    core[:q, :q] += torch.diag(basis.S)
    uc, s, vch = torch.linalg.svd(core, full_matrices=False)
    keep = s > float(s[0]) * DROP_RTOL if s.numel() and float(s[0]) > 0 else torch.zeros_like(s, dtype=torch.bool)
    u = torch.cat([basis.U, ea], 1) @ uc[:, keep]
    v = torch.cat([basis.V, eb], 1) @ vch[keep].T
    return FactoredSVD(u, s[keep], v)


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
    a: Tensor,
    b: Tensor,
    sigma_max: float,
    alpha: float = math.e,
    mode: RestraintMode = "log",
    basis: FactoredSVD | None = None,
) -> FactoredRestraint:
    """PRUNE-restrain ΔW = ``basis + a @ bᵀ`` without forming it.

    Args:
        a: ``[m, k]`` left factor; b: ``[n, k]`` right factor (any float dtype; computed in float64).
        sigma_max: σ_max(W_0) of the matrix; alpha, mode: the PRUNE map (`restrain_singular_values`).
        basis: the previous pass's ``FactoredRestraint.svd`` (ΔW so far), or None when ΔW = ``a bᵀ``.

    Returns:
        `FactoredRestraint`: ΔW' (singular values > ``sigma_max`` mapped, the rest kept) as an SVD, and
        the correction ΔW' − ΔW as thin factors.
    """
    check_restraint_args(sigma_max, alpha, mode)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("ΔW factors contain NaN or Inf; refusing to restrain them")
    svd = factored_svd(a, b, basis)
    s_new = restrain_singular_values(svd.S, sigma_max, alpha, mode)
    n = int((s_new != svd.S).sum())
    before = float(svd.S[0]) if svd.S.numel() else 0.0
    after = float(s_new.max()) if s_new.numel() else 0.0
    out = FactoredSVD(svd.U, s_new, svd.V)
    if n == 0:
        return FactoredRestraint(out, None, None, 0, before, after)
    # S is sorted and the map is monotone, so the restrained components are the leading n.
    corr_left = svd.U[:, :n] * (s_new[:n] - svd.S[:n])
    return FactoredRestraint(out, corr_left, svd.V[:, :n], n, before, after)


@dataclass
class GramRestraint:
    """Outcome of `restrain_high_rank`: the correction ΔW' − ΔW = ``corr_left @ corr_rightᵀ`` (None: unchanged)."""

    corr_left: Tensor | None  # [m, j]
    corr_right: Tensor | None  # [n, j]
    n_restrained: int
    sigma_max_before: float  # exact when > sigma_max(W_0); else an upper bound ≤ σ_max(W_0)
    sigma_max_after: float
    subspace: int  # columns of the Ritz subspace that was used (0: nothing can exceed σ_max(W_0))

    def apply_(self, w: Tensor) -> Tensor:
        if self.corr_left is not None and self.corr_right is not None:
            w.addmm_(self.corr_left.to(w.dtype), self.corr_right.T.to(w.dtype))
        return w


# A float32 Gram matrix and its eigendecomposition are trusted only to this share of the largest eigenvalue
# (rounding in the float32 products is ~sqrt(m)·ε·‖ΔW‖_F² at worst in practice; 1e-3 leaves a wide margin).
GRAM32_RTOL = 1e-3


def _rayleigh_lower_bound(gram: Tensor, steps: int = 4) -> float:
    """A lower bound on λ_max of a PSD ``gram [k, k]``: the Rayleigh quotient after ``steps`` power steps.

    Starts from the column of the largest diagonal entry, so the bound is ≥ max_i G_ii ≥ λ_max / k at once.
    """
    if not gram.numel():
        return 0.0
    x = gram[:, int(gram.diagonal().argmax())].double()
    g = gram.double()
    for _ in range(steps):
        norm = float(x.norm())
        if norm == 0.0:
            return 0.0
        x = g @ (x / norm)
    norm = float(x.norm())
    return 0.0 if norm == 0.0 else float(x @ (g @ x)) / norm**2


@torch.no_grad()
def restrain_high_rank(
    delta: Tensor, sigma_max: float, alpha: float = math.e, mode: RestraintMode = "log", margin: int = 8
) -> GramRestraint:
    """PRUNE-restrain a dense ΔW of high rank: float32 Gram + ``eigh`` to find the subspace, float64 Rayleigh–Ritz on it.

    ``delta``: ``[m, n]``. The float32 eigendecomposition of the short side's Gram matrix (3× cheaper than
    float64 here) only *locates* the components above ``sigma_max``: every eigenvalue within
    ``GRAM32_RTOL``·λ_max of σ_max² or above it, plus ``margin`` more. Their span V is orthonormalised in
    float64, and the SVD of the ``[m, p]`` product ``ΔW V`` gives the singular triplets (Rayleigh–Ritz: value
    errors ∝ the square of the float32 subspace error). If the last Ritz value still exceeds ``sigma_max`` the subspace is doubled.
    Same components and map as `restrain_delta_with_stats`; ``tests/test_restraint_factored.py`` checks ≤ 1e-4.
    When σ_max² ≤ ``GRAM32_RTOL``·λ_max float32 cannot place σ_max next to the top component, and the float64
    thin SVD of `restrain_delta_with_stats` is taken instead. When ‖G‖_F or G's largest absolute row sum already
    bounds λ_max below σ_max², nothing is decomposed (``subspace`` 0, ``sigma_max_before`` that bound).
    """
    check_restraint_args(sigma_max, alpha, mode)
    m, n = delta.shape
    x = delta if n <= m else delta.T  # x: [long, short]
    x32 = x.float()
    gram = x32.T @ x32
    # λ_max(G) ≤ ‖G‖_F and ≤ its largest absolute row sum (Gershgorin): for a ΔW of many moderate components both
    # sit far below ‖ΔW‖_F² (the Frobenius skip of the caller), so this often proves nothing exceeds σ_max without
    # an eigendecomposition. The margin covers float32 round-off of G.
    certified = min(float(torch.linalg.matrix_norm(gram)), float(gram.abs().sum(dim=1).max())) if gram.numel() else 0.0
    if certified * (1 + GRAM32_RTOL) <= sigma_max**2:
        bound = math.sqrt(certified * (1 + GRAM32_RTOL))
        return GramRestraint(None, None, 0, bound, bound, 0)
    # A few power steps give a lower bound on λ_max for the price of matrix-vector products: an exploded ΔW is
    # usually recognised here, before the float32 eigh whose result the float64 fallback would throw away.
    exploded = sigma_max**2 <= GRAM32_RTOL * _rayleigh_lower_bound(gram)
    if not exploded:
        lam, vec = torch.linalg.eigh(gram)  # ascending
        lam_max = float(lam[-1]) if lam.numel() else 0.0
        exploded = sigma_max**2 <= GRAM32_RTOL * lam_max
    if exploded:
        # An exploded component (σ_1 ≥ ~32 σ_max, e.g. a broken MEND model) leaves σ_max below what float32 resolves
        # next to it: the float64 thin SVD of the dense path instead (without it the factored MEND restraint drifted
        # 1.6e-2 from the dense one over 100 real edits, with it 4.2e-3: float32 round-off of the weights).
        res = restrain_delta_with_stats(delta, sigma_max, alpha, mode, max_rank=0)
        right = None if res.right is None else res.right.T
        return GramRestraint(res.left, right, res.n_restrained, float(res.sigma_max_before or 0.0), float(res.sigma_max_after or 0.0), min(m, n))
    cut = sigma_max**2 - GRAM32_RTOL * lam_max
    p = int((lam > cut).sum())
    if p == 0:  # every σ² ≤ λ_max·(1 + tol) and below σ_max² by more than the float32 error: nothing to do
        bound = min(math.sqrt(max(lam_max, 0.0) * (1 + GRAM32_RTOL)), sigma_max)
        return GramRestraint(None, None, 0, bound, bound, 0)
    short = x.shape[1]
    while True:
        p = min(short, p + margin)
        v = torch.linalg.qr(vec[:, -p:].double())[0]  # top p, orthonormal in float64
        # ΔW V in float32 (ΔW is float32 already: ~1e-7 relative, no m×n float64 copy), its small SVD in float64
        uy, s, wyt = torch.linalg.svd((x32 @ v.float()).double(), full_matrices=False)
        if p == short or float(s[-1]) <= sigma_max:
            break
        p *= 2  # the subspace may have missed a component above σ_max: widen it
    s_new = restrain_singular_values(s, sigma_max, alpha, mode)
    j = int((s_new != s).sum())
    before, after = float(s[0]), float(s_new.max())
    if j == 0:
        return GramRestraint(None, None, 0, before, after, p)
    left = uy[:, :j] * (s_new[:j] - s[:j])  # [long, j]
    right = v @ wyt[:j].T  # [short, j]
    if n > m:  # x was ΔWᵀ
        left, right = right, left
    return GramRestraint(left, right, j, before, after, p)
