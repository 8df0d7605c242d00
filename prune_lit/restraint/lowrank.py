"""Exact SVD of a low-rank matrix without a full decomposition.

The ΔW that ROME / MEMIT / MEND accumulate has rank ≤ the number of rank-one updates, far below
``min(m, n)``. An adaptive randomized range finder (Halko, Martinsson & Tropp 2011, Alg. 4.2 in blocks)
finds an orthonormal ``Q`` with ``‖ΔW − Q Qᵀ ΔW‖_F ≤ rtol ‖ΔW‖_F``; the SVD of the small ``Qᵀ ΔW``
(float64, via its k×k Gram matrix) then gives the singular triplets. Cost O(m n k) instead of O(m n min(m, n)).
When the rank is not small the range finder gives up and a thin SVD is taken instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LowRankSVD:
    """``a ≈ U diag(S) Vh`` with ``U [m, k]``, ``S [k]`` (descending), ``Vh [k, n]``, all float64."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor
    method: str  # "lowrank", "full" (thin SVD fallback) or "zero"

    @property
    def rank(self) -> int:
        return int(self.S.numel())


def _empty(a: torch.Tensor) -> LowRankSVD:
    m, n = a.shape
    z = dict(dtype=torch.float64, device=a.device)
    return LowRankSVD(torch.zeros(m, 0, **z), torch.zeros(0, **z), torch.zeros(0, n, **z), "zero")


def thin_svd(a: torch.Tensor) -> LowRankSVD:
    """Thin SVD in float64 through the Gram matrix of the shorter side: ``[m, n]`` -> ``U [m, r]``, ``S [r]``, ``Vh [r, n]``.

    ``eigh`` of the ``min(m, n)``-square Gram matrix is ~5× faster than LAPACK's SVD of a 576×1536 ΔW (the
    MEND case, whose ΔW is not low rank). Squaring costs accuracy only for σ below ~1e-7·σ_1, which are
    dropped (r ≤ min(m, n)); no restraint threshold is that small relative to the edit.
    """
    a64 = a.double()
    wide = a64.shape[0] <= a64.shape[1]
    evals, vecs = torch.linalg.eigh(a64 @ a64.T if wide else a64.T @ a64)
    evals, vecs = evals.flip(0), vecs.flip(1)
    s = evals.clamp_min(0).sqrt()
    if not s.numel() or float(s[0]) == 0.0:
        return _empty(a)
    keep = s > s[0] * 1e-7
    s, vecs = s[keep], vecs[:, keep]
    if wide:
        return LowRankSVD(vecs, s, (vecs.T @ a64) / s[:, None], "full")
    return LowRankSVD((a64 @ vecs) / s, s, vecs.T, "full")


def _orth_new_block(q: torch.Tensor, y: torch.Tensor, drop_below: float) -> torch.Tensor:
    """Orthonormal basis ``[m, j]`` of the part of ``y [m, b]`` outside span(q), numerically-zero directions dropped."""
    # Classical Gram-Schmidt twice, in float64: what is left of y can be ~1e-7·‖y‖ (y mostly inside span(q),
    # e.g. an exploded edit along a direction the warm basis already holds); float32 projections would leave
    # round-off of that same size along q, and normalising it would yield "new" columns that overlap q.
    y64 = y.double()
    if q.shape[1]:
        q64 = q.double()
        for _ in range(2):
            y64 = y64 - q64 @ (q64.T @ y64)
    # Rank-revealing step on the b×b Gram matrix in float64 (LAPACK's SVD of a tall, rank-deficient
    # [m, b] block is oddly slow); eigenvalues are σ², so the cut-off is squared too.
    evals, evecs = torch.linalg.eigh(y64.T @ y64)
    keep = evals > drop_below**2
    if not bool(keep.any()):
        return y.new_zeros(y.shape[0], 0)
    basis, _ = torch.linalg.qr(y64 @ evecs[:, keep])
    basis, _ = torch.linalg.qr(basis)  # second pass: orthogonal to ~1e-15 whatever the conditioning
    return basis.to(y.dtype)


def _cutoff(relative: float, atol: float) -> float:
    """Below this a direction is round-off: the relative cut, lowered to ``atol`` when one is given."""
    return min(relative, atol) if atol > 0 else relative


@torch.no_grad()
def lowrank_svd(
    a: torch.Tensor,
    rtol: float = 1e-5,
    block: int = 8,
    max_rank: int | None = None,
    generator: torch.Generator | None = None,
    init: torch.Tensor | None = None,
    atol: float = 0.0,
) -> LowRankSVD:
    """Singular triplets of ``a [m, n]`` by an adaptive randomized range finder.

    Args:
        a: ``[m, n]`` float matrix (float32 is kept for the big products).
        rtol: stop when a fresh Gaussian block ``a Ω`` has relative norm ≤ rtol outside the captured range
            (an estimate of ``‖a − QQᵀa‖_F / ‖a‖_F``). 1e-5 sits above float32 round-off of ``W − W_0``.
        block: first block size; blocks double, so a rank-r matrix needs ~log2(r / block) + 2 passes.
        max_rank: give up and take `thin_svd` once the captured rank would exceed this
            (default ``min(m, n) // 4``, where the two cost about the same).
        generator: source of Ω; default a fresh generator seeded 0 (results are reproducible).
        init: ``[m, j]`` columns expected to span most of range(a), e.g. the previous edit step's ``U``
            (ΔW_t = ΔW'_{t-1} + a few rank-one edits). The loop then only has to find what is new, usually
            in one pass; the result is exact either way.
        atol: when > 0, directions with singular value above ``atol`` are never treated as noise, even if they
            are below ``rtol·σ_1``. Restraint needs this: one exploded edit (σ_1 ~ 1e6) must not hide a second
            singular value just above σ_max(W_0).

    Returns:
        `LowRankSVD` with ``k`` = numerical rank (``method="lowrank"``), or ``min(m, n)`` (``"full"``).
    """
    if a.dim() != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(a.shape)}")
    m, n = a.shape
    if max_rank is None:
        max_rank = max(1, min(m, n) // 4)
    if generator is None:
        generator = torch.Generator(device=a.device).manual_seed(0)
    work = a if a.dtype in (torch.float32, torch.float64) else a.float()
    q = work.new_zeros(m, 0)
    if init is not None and init.numel():
        if init.dim() != 2 or init.shape[0] != m:
            raise ValueError(f"init basis must be [{m}, j], got {tuple(init.shape)}")
        if init.shape[1] > max_rank:
            return thin_svd(a)
        q = torch.linalg.qr(init.to(work.device, torch.float64))[0].to(work.dtype)
    b = max(1, block)
    while True:
        omega = torch.randn(n, b, generator=generator, dtype=work.dtype, device=work.device)
        y = work @ omega
        y_norm = float(torch.linalg.vector_norm(y))
        if y_norm == 0.0:
            return _empty(a)
        new = _orth_new_block(q, y, drop_below=_cutoff(rtol * y_norm, atol))
        if q.shape[1] + new.shape[1] > max_rank:
            return thin_svd(a)
        q = torch.cat([q, new], dim=1)
        # A block of rank < b means the residual has rank < b, so this block captured all of it.
        if new.shape[1] < b:
            break
        b = min(2 * b, max(1, max_rank - q.shape[1]))
    # One QR of the whole basis in float64: blocks found one by one are orthogonal only to round-off,
    # and the core's SVD is exact only for an orthonormal Q.
    q = torch.linalg.qr(q.double())[0].to(work.dtype)
    small = (q.T @ work).double()  # [k, n]
    # SVD of the wide [k, n] core through its k×k Gram matrix (several times faster than gesdd for k ~ 100).
    # Squaring costs relative accuracy only far below rtol·σ_1, where float32 round-off of ΔW already sits and
    # which no restraint threshold reaches; those directions (e.g. stale `init` columns) are dropped.
    evals, ub = torch.linalg.eigh(small @ small.T)
    evals, ub = evals.flip(0), ub.flip(1)
    s = evals.clamp_min(0).sqrt()
    keep = s > _cutoff(float(s[0]) * rtol, atol) if s.numel() else s.bool()
    s, ub = s[keep], ub[:, keep]
    vh = (ub.T @ small) / s[:, None]
    return LowRankSVD(q.double() @ ub, s, vh, "lowrank")
