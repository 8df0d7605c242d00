"""SPHERE: project each edit step's update away from the principal directions of the weight's neurons.

Liu et al., "Energy-Regularized Sequential Model Editing on Hyperspheres" (ICLR 2026), reference code
PlusLabNLP/SPHERE (``project_B_into_soft_dirs``, called by its ROME / MEMIT / AlphaEdit / FT loops). For a
weight ``A`` as the framework stores it (``[rows, cols]``) and the update ``B`` of the same shape, the
reference does, right before ``A += B``:

1. ``Â = A / (‖A_row‖ + 1e-8)``: every row (a "neuron") on the unit sphere;
2. eigendecomposition of the neuron Gram matrix ``ÂᵀÂ / rows`` (``[cols, cols]``);
3. keep the top ``r`` eigenvectors ``U``, ``r`` = 1 + #{j : Σ_{i ≤ j} λ_i / Σ λ ≤ beta_hse} (eigenvalues
   descending): the principal directions holding a ``beta_hse`` share of the neurons' energy;
4. ``B ← B (I − α U Uᵀ)``: a *soft* projection, ``α`` = suppression strength.

``A`` is the *current* weight (all earlier edits included), recomputed at every step.

Orientation: the projector acts on the stored tensor's second axis. For ``nn.Linear`` (``[out, in]``:
LLaMA, Qwen, SmolLM2) that is the input side; GPT-2's ``Conv1D`` stores ``[in, out]``, so there the reference
projects the *output* side. Here weights come as ``[out, in]`` (`prune_lit.models.arch.get_weight`) and
``side`` names the axis explicitly; `reference_side` gives the reference's choice for an architecture.

Differences from the reference, numerical only (same subspace, same projection):

* the eigendecomposition is taken of the shorter side's Gram matrix (``ÂÂᵀ`` when rows < cols); the non-zero
  spectrum is the same and ``U = Âᵀ V diag(λ)^{-1/2}``, 5–20× cheaper on an MLP matrix. Like the reference it
  runs in the weight's precision (float32); the energy cut is counted in float64;
* ``B − α (B U) Uᵀ`` is applied without forming the ``[cols, cols]`` projector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Side = Literal["input", "output"]
SIDES: tuple[str, ...] = ("input", "output")
ROW_EPS = 1e-8  # the reference's guard in the row normalisation


def reference_side(transposed: bool) -> Side:
    """The side the reference projects for a weight stored ``[in, out]`` (``transposed``, GPT-2 Conv1D) or ``[out, in]``.

    The reference acts on the stored tensor's second axis: ``out`` for Conv1D, ``in`` for ``nn.Linear``.
    """
    return "output" if transposed else "input"


def check_sphere_args(beta_hse: float, alpha: float, side: str = "input") -> None:
    """Raise ``ValueError`` for ``beta_hse`` outside (0, 1], ``alpha`` outside [0, 1] or an unknown side."""
    if not (0.0 < beta_hse <= 1.0):
        raise ValueError(f"beta_hse (cumulative energy ratio) must be in (0, 1], got {beta_hse}")
    if not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha (suppression strength) must be in [0, 1], got {alpha}")
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}; expected one of {SIDES}")


def row_normalise(a: Tensor, eps: float = ROW_EPS) -> Tensor:
    """``[rows, cols]`` -> the same with every row divided by (its norm + ``eps``)."""
    return a / (torch.linalg.vector_norm(a, dim=1, keepdim=True) + eps)


def energy_rank(eigvals_desc: Tensor, beta_hse: float) -> int:
    """How many leading directions the reference keeps: 1 + #{j : cumsum(λ)_j / Σλ ≤ beta_hse}, at most ``len(λ)``.

    ``eigvals_desc``: ``[k]`` eigenvalues in descending order (non-negative up to round-off).
    """
    total = eigvals_desc.sum()
    if not float(total) > 0:
        raise ValueError("the neuron Gram matrix is zero: no principal directions")
    r = int((torch.cumsum(eigvals_desc, 0) / total <= beta_hse).sum()) + 1
    return min(r, int(eigvals_desc.numel()))


def principal_directions(a: Tensor, beta_hse: float) -> Tensor:
    """Principal directions of the rows of ``a`` ``[rows, cols]`` holding a ``beta_hse`` share of their energy.

    Returns ``U`` ``[cols, r]`` (``a``'s float dtype, float32 at least; orthonormal columns, leading eigenvector
    first): the top eigenvectors of ``ÂᵀÂ`` (``Â`` = `row_normalise` (a)), ``r`` = `energy_rank`.
    """
    if a.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(a.shape)}")
    check_sphere_args(beta_hse, 0.0)
    if not torch.isfinite(a).all():
        raise ValueError("weight contains NaN or Inf")
    a_hat = row_normalise(a if a.dtype in (torch.float32, torch.float64) else a.float())
    rows, cols = a_hat.shape
    if cols <= rows:
        evals, evecs = torch.linalg.eigh(a_hat.T @ a_hat)
        evals, evecs = evals.flip(0), evecs.flip(1)
        return evecs[:, : energy_rank(evals.double(), beta_hse)]
    # rows < cols: ÂᵀÂ has the non-zero spectrum of ÂÂᵀ (the rest are zeros that add nothing to cumsum or total)
    evals, evecs = torch.linalg.eigh(a_hat @ a_hat.T)
    evals, evecs = evals.flip(0), evecs.flip(1)
    r = energy_rank(evals.double().clamp_min(0), beta_hse)
    if float(evals[r - 1]) <= 1e-5 * float(evals[0]):  # the cut reaches the null space (beta_hse ~ 1): long side
        evals, evecs = torch.linalg.eigh(a_hat.T @ a_hat)
        return evecs.flip(1)[:, : energy_rank(evals.flip(0).double(), beta_hse)]
    u = (a_hat.T @ evecs[:, :r]) / evals[:r].sqrt()
    # one Cholesky-QR pass restores orthonormality lost to float32 rounding in the normalisation
    r_factor = torch.linalg.cholesky(u.T @ u, upper=True)
    return torch.linalg.solve_triangular(r_factor, u, upper=True, left=False)


def soft_project(update: Tensor, directions: Tensor, alpha: float) -> Tensor:
    """``update (I − α U Uᵀ)``: ``update`` ``[rows, cols]``, ``directions`` U ``[cols, r]`` -> ``[rows, cols]``, update's dtype."""
    if update.dim() != 2 or directions.dim() != 2 or update.shape[1] != directions.shape[0]:
        raise ValueError(f"update [rows, cols] and directions [cols, r] do not match: {tuple(update.shape)}, {tuple(directions.shape)}")
    u = directions.to(update.dtype)
    return update - alpha * (update @ u) @ u.T


@dataclass
class SphereProjector:
    """The SPHERE projector of one weight: ``directions`` U ``[d, r]`` on ``side`` of an ``[out, in]`` weight."""

    directions: Tensor
    alpha: float
    side: Side

    @classmethod
    def from_weight(cls, weight: Tensor, beta_hse: float = 0.5, alpha: float = 0.5, side: Side = "input") -> SphereProjector:
        """Directions from ``weight`` ``[out, in]``: its rows (neurons) for ``side="input"``, its columns for ``"output"``."""
        check_sphere_args(beta_hse, alpha, side)
        a = weight if side == "input" else weight.T
        return cls(principal_directions(a, beta_hse), float(alpha), side)

    @property
    def rank(self) -> int:
        return int(self.directions.shape[1])

    def __call__(self, update: Tensor) -> Tensor:
        """Project ``update`` ``[out, in]`` (same layout as the weight) -> ``[out, in]``."""
        if self.side == "input":
            return soft_project(update, self.directions, self.alpha)
        return soft_project(update.T, self.directions, self.alpha).T


def sphere_project(weight: Tensor, update: Tensor, beta_hse: float = 0.5, alpha: float = 0.5, side: Side = "input") -> Tensor:
    """SPHERE on one step: ``weight`` ``[out, in]`` before the step, its ``update`` ``[out, in]`` -> the projected update.

    Defaults are the reference README's example (beta_hse = 0.5, alpha = 0.5; it advises alpha = 0.8 on MEMIT).
    """
    if weight.shape != update.shape:
        raise ValueError(f"weight {tuple(weight.shape)} and update {tuple(update.shape)} differ in shape")
    return SphereProjector.from_weight(weight, beta_hse, alpha, side)(update)
