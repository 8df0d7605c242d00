"""Exact SVD of a low-rank matrix without a full decomposition.

The ΔW that ROME / MEMIT / MEND accumulate has rank ≤ the number of rank-one updates, far below
``min(m, n)``. An adaptive randomized range finder (Halko, Martinsson & Tropp 2011, Alg. 4.2 in blocks)
finds an orthonormal ``Q`` with ``‖ΔW − Q Qᵀ ΔW‖_F ≤ rtol ‖ΔW‖_F``; the SVD of the small ``Qᵀ ΔW``
(float64, via its k×k Gram matrix) then gives the singular triplets. Cost O(m n k) instead of O(m n min(m, n)).
When the rank is not small the range finder gives up and a thin SVD is taken instead.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LowRankSVD:
    """``a ≈ U diag(S) Vh`` with ``U [m, k]``, ``S [k]`` (descending), ``Vh [k, n]``, all float64.

    Only ``S`` is computed up front. The singular vectors come from a ``[p, k]`` rotation of the eigenvectors
    of the Gram matrix the SVD was taken through; `left` / `right` build only the leading ``j`` of them, which
    is all restraint needs (the few above σ_max(W_0)) and saves up to two ``m·n·k`` products on a full-rank ΔW.
    """

    S: torch.Tensor
    method: str  # "lowrank", "full" (thin SVD fallback) or "zero"
    rot: torch.Tensor | None  # [p, k]; None when taken with ``vectors=False`` (singular values only)
    u_src: torch.Tensor | None  # U = u_src @ rot (then ÷ S if u_scaled); None: U = rot
    v_src: torch.Tensor | None  # Vh = (rot ÷ S)ᵀ @ v_src; None: Vh = rotᵀ
    u_scaled: bool = False

    @property
    def rank(self) -> int:
        return int(self.S.numel())

    def _rot(self, j: int) -> torch.Tensor:
        if self.rot is None:
            raise ValueError("this SVD was taken with vectors=False: singular values only")
        return self.rot[:, :j]

    def left(self, j: int) -> torch.Tensor:
        """The leading ``j`` left singular vectors ``[m, j]``."""
        r = self._rot(j)
        if self.u_src is None:
            return r
        u = self.u_src @ r
        return u / self.S[:j] if self.u_scaled else u

    def right(self, j: int) -> torch.Tensor:
        """The leading ``j`` right singular vectors as rows ``[j, n]``."""
        r = self._rot(j)
        return r.T if self.v_src is None else (r / self.S[:j]).T @ self.v_src

    @property
    def U(self) -> torch.Tensor:
        return self.left(self.rank)

    @property
    def warm_basis(self) -> torch.Tensor | None:
        """``U`` when it came from the range finder (a cheap, orthonormal start for the next SVD), else None."""
        return self.U if self.method == "lowrank" else None

    @property
    def Vh(self) -> torch.Tensor:
        return self.right(self.rank)


def _empty(a: torch.Tensor) -> LowRankSVD:
    m, n = a.shape
    z = dict(dtype=torch.float64, device=a.device)
    return LowRankSVD(torch.zeros(0, **z), "zero", torch.zeros(m, 0, **z), None, torch.zeros(1, 1, **z).expand(m, n))


def thin_svd(a: torch.Tensor, vectors: bool = True) -> LowRankSVD:
    """Thin SVD in float64 through the Gram matrix of the shorter side: ``[m, n]`` -> ``U [m, r]``, ``S [r]``, ``Vh [r, n]``.

    ``eigh`` of the ``min(m, n)``-square Gram matrix is ~5× faster than LAPACK's SVD of a 576×1536 ΔW (the
    MEND case, whose ΔW is not low rank). Squaring costs accuracy only for σ below ~1e-7·σ_1, which are
    dropped (r ≤ min(m, n)); no restraint threshold is that small relative to the edit. The vectors of the
    longer side are built on demand (`LowRankSVD.left` / `right`); ``vectors=False`` skips the eigenvectors
    altogether (half the cost at 576×576: singular values only, e.g. for diagnostics).
    """
    a64 = a.double()
    wide = a64.shape[0] <= a64.shape[1]
    gram = a64 @ a64.T if wide else a64.T @ a64
    evals, vecs = torch.linalg.eigh(gram) if vectors else (torch.linalg.eigvalsh(gram), None)
    evals = evals.flip(0)
    s = evals.clamp_min(0).sqrt()
    if not s.numel() or float(s[0]) == 0.0:
        return _empty(a)
    keep = s > s[0] * 1e-7
    s = s[keep]
    if vecs is None:
        return LowRankSVD(s, "full", None, None, None)
    vecs = vecs.flip(1)[:, keep]
    if wide:  # eigenvectors of a aᵀ are U; Vh = diag(1/s) Uᵀ a
        return LowRankSVD(s, "full", vecs, None, a64)
    return LowRankSVD(s, "full", vecs, a64, None, u_scaled=True)  # eigenvectors of aᵀa are V; U = a V diag(1/s)


def _cholesky_qr(b: torch.Tensor) -> torch.Tensor:
    """Orthonormalise a float64 ``[m, j]`` block that is already close to orthonormal (1 Cholesky, 1 triangular solve).

    Several times cheaper than Householder QR at these sizes and as accurate when cond(b) ≈ 1.
    """
    r = torch.linalg.cholesky(b.T @ b, upper=True)
    return torch.linalg.solve_triangular(r, b, upper=True, left=False)


def _orth_new_block(q: torch.Tensor, y: torch.Tensor, drop_below: float) -> torch.Tensor:
    """Orthonormal float64 basis ``[m, j]`` of the part of ``y [m, b]`` outside span(q), numerically-zero directions dropped.

    ``q [m, k]`` must be float64 and orthonormal; ``[q, result]`` then is too (to ~1e-15), so the caller never
    needs a QR of the whole basis.
    """
    # Project in float64: what is left of y can be ~1e-7·‖y‖ (y mostly inside span(q), e.g. an exploded edit
    # along a direction the warm basis already holds); in float32 the round-off along q would be that same size.
    y64 = y.double()
    if q.shape[1]:
        y64 = y64 - q @ (q.T @ y64)
    # Rank test on the b×b Gram matrix (eigenvalues are σ², so the cut-off is squared). Whole blocks of a matrix
    # of larger rank are the common case: G − cut²·I positive definite proves σ_min > cut with one Cholesky;
    # only a block that is rank-deficient pays for an eigendecomposition.
    gram = y64.T @ y64
    cut2 = drop_below**2
    full_rank = int(torch.linalg.cholesky_ex(gram - cut2 * torch.eye(len(gram), dtype=gram.dtype, device=gram.device))[1]) == 0
    if full_rank:
        # Cholesky QR: y·R⁻¹ is orthonormal up to ε·cond(y)² (cond ≤ ‖y‖/cut); the pass below cleans that up.
        basis = torch.linalg.solve_triangular(torch.linalg.cholesky(gram, upper=True), y64, upper=True, left=False)
    else:
        evals, evecs = torch.linalg.eigh(gram)
        keep = evals > cut2
        if not bool(keep.any()):
            return y64.new_zeros(y.shape[0], 0)
        basis = (y64 @ evecs[:, keep]) / evals[keep].sqrt()
    # The normalisation magnified round-off along q (and within the block): project once more, re-orthonormalise.
    if q.shape[1]:
        basis = basis - q @ (q.T @ basis)
    return _cholesky_qr(basis)


def _orthonormal(init: torch.Tensor) -> torch.Tensor:
    """``init [m, j]`` as a float64 orthonormal basis: as is when it already is one (a previous `LowRankSVD.U`), else via QR."""
    q = init.double()
    gram = q.T @ q
    gram.diagonal().sub_(1.0)
    if float(gram.abs().max()) <= 1e-12:
        return q
    return torch.linalg.qr(q)[0]


_SKETCH_CACHE_MAX_ELEMENTS = 1 << 19  # 2 MB per float32 block: bounds the cache at 64 MB


def _draw_sketch(n: int, sizes: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The last of the Gaussian blocks ``[n, sizes[i]]`` drawn in turn from a generator seeded 0."""
    gen = torch.Generator(device=device).manual_seed(0)
    for b in sizes:
        block = torch.randn(n, b, generator=gen, dtype=dtype, device=device)
    return block


_cached_sketch = functools.lru_cache(maxsize=32)(_draw_sketch)


def _default_sketch(n: int, sizes: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`_draw_sketch`, cached for small blocks (read-only): without a caller's generator the range finder draws exactly
    these blocks on every call, and at 576×1536 drawing Ω was ~0.7 ms of a ~13 ms restraint step. Same values."""
    if n * sizes[-1] <= _SKETCH_CACHE_MAX_ELEMENTS:
        return _cached_sketch(n, sizes, dtype, device)
    return _draw_sketch(n, sizes, dtype, device)  # redraws the earlier blocks: small beside a product of this size


def _cutoff(relative: float, atol: float) -> float:
    """Below this a direction is round-off: the relative cut, lowered to ``atol`` when one is given."""
    return min(relative, atol) if atol > 0 else relative


@torch.no_grad()
def lowrank_svd(
    a: torch.Tensor,
    rtol: float = 1e-5,
    block: int | None = None,
    max_rank: int | None = None,
    generator: torch.Generator | None = None,
    init: torch.Tensor | None = None,
    atol: float = 0.0,
    vectors: bool = True,
) -> LowRankSVD:
    """Singular triplets of ``a [m, n]`` by an adaptive randomized range finder.

    Args:
        a: ``[m, n]`` float matrix (float32 is kept for the big products).
        rtol: stop when a fresh Gaussian block ``a Ω`` has relative norm ≤ rtol outside the captured range
            (an estimate of ``‖a − QQᵀa‖_F / ‖a‖_F``). 1e-5 sits above float32 round-off of ``W − W_0``.
        block: first block size (default 16, or 8 with a warm ``init``, which leaves only a few new directions);
            blocks double, so a rank-r matrix needs ~log2(r / block) + 2 passes.
        max_rank: give up and take `thin_svd` once the captured rank would exceed this
            (default ``min(m, n) // 4``, where the two cost about the same); 0 takes `thin_svd` at once
            (a caller that knows ΔW is no longer low rank).
        generator: source of Ω; default a fresh generator seeded 0 (results are reproducible; its blocks are cached).
        init: ``[m, j]`` columns expected to span most of range(a), e.g. the previous edit step's ``U``
            (ΔW_t = ΔW'_{t-1} + a few rank-one edits). The loop then only has to find what is new, usually
            in one pass; the result is exact either way.
        atol: when > 0, directions with singular value above ``atol`` are never treated as noise, even if they
            are below ``rtol·σ_1``. Restraint needs this: one exploded edit (σ_1 ~ 1e6) must not hide a second
            singular value just above σ_max(W_0).
        vectors: False when only ``S`` is wanted: the `thin_svd` fallback then skips its eigenvectors (the
            low-rank path needs them anyway and keeps them).

    Returns:
        `LowRankSVD` with ``k`` = numerical rank (``method="lowrank"``), or ``min(m, n)`` (``"full"``).
    """
    if a.dim() != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(a.shape)}")
    m, n = a.shape
    if max_rank is None:
        max_rank = max(1, min(m, n) // 4)
    if max_rank == 0:
        return thin_svd(a, vectors)
    work = a if a.dtype in (torch.float32, torch.float64) else a.float()
    q = torch.zeros(m, 0, dtype=torch.float64, device=work.device)  # kept float64 and orthonormal throughout
    if init is not None and init.numel():
        if init.dim() != 2 or init.shape[0] != m:
            raise ValueError(f"init basis must be [{m}, j], got {tuple(init.shape)}")
        if init.shape[1] > max_rank:
            return thin_svd(a, vectors)
        q = _orthonormal(init.to(work.device))
    b = max(1, block if block is not None else (8 if q.shape[1] else 16))
    sizes: tuple[int, ...] = ()
    while True:
        sizes += (b,)
        if generator is None:
            omega = _default_sketch(n, sizes, work.dtype, work.device)
        else:
            omega = torch.randn(n, b, generator=generator, dtype=work.dtype, device=work.device)
        y = work @ omega
        y_norm = float(torch.linalg.vector_norm(y))
        if y_norm == 0.0:
            return _empty(a)
        new = _orth_new_block(q, y, drop_below=_cutoff(rtol * y_norm, atol))
        if q.shape[1] + new.shape[1] > max_rank:
            return thin_svd(a, vectors)
        q = torch.cat([q, new], dim=1)
        # A block of rank < b means the residual has rank < b, so this block captured all of it.
        if new.shape[1] < b:
            break
        b = min(2 * b, max(1, max_rank - q.shape[1]))
    small = (q.to(work.dtype).T @ work).double()  # [k, n]; the one big product besides the sketches
    # SVD of the wide [k, n] core through its k×k Gram matrix (several times faster than gesdd for k ~ 100).
    # Squaring costs relative accuracy only far below rtol·σ_1, where float32 round-off of ΔW already sits and
    # which no restraint threshold reaches; those directions (e.g. stale `init` columns) are dropped.
    evals, ub = torch.linalg.eigh(small @ small.T)
    evals, ub = evals.flip(0), ub.flip(1)
    s = evals.clamp_min(0).sqrt()
    keep = s > _cutoff(float(s[0]) * rtol, atol) if s.numel() else s.bool()
    s, ub = s[keep], ub[:, keep]
    return LowRankSVD(s, "lowrank", ub, q, small)  # U = Q·ub, Vh = diag(1/s)·ubᵀ·(QᵀΔW)


@dataclass
class WarmStarts:
    """What one sequential SVD of each matrix's growing ΔW tells the next one.

    ``basis``: the last low-rank ``U`` per matrix (float64, orthonormal: reused without a QR). ``full_rank``:
    matrices whose ΔW outgrew the low-rank SVD; their rank never drops again (edits add directions, restraint keeps
    every σ ≥ σ_max), so later SVDs skip the range finder.
    """

    basis: dict[str, torch.Tensor] = field(default_factory=dict)
    full_rank: set[str] = field(default_factory=set)

    def kwargs(self, name: str) -> dict[str, Any]:
        """``init`` / ``max_rank`` for `lowrank_svd` on matrix ``name``."""
        return {"init": self.basis.get(name), "max_rank": 0 if name in self.full_rank else None}

    def update(self, name: str, method: str, basis: torch.Tensor | None) -> None:
        """Record an SVD of matrix ``name`` (``method`` as in `LowRankSVD`; "skipped" changes nothing)."""
        if basis is not None:
            self.basis[name] = basis
        elif method != "skipped":
            self.basis.pop(name, None)
            if method == "full":
                self.full_rank.add(name)
