"""PRUNE for editors that hand over each update as thin factors (MEND): `FactoredSpectralRestraint`.

Same result as `SpectralRestraint` (up to round-off), cheaper per edit:

1. **Certificate.** It keeps an upper bound on σ_max(ΔW) per matrix: exact after every restraint pass, then
   + ‖A Bᵀ‖₂ per edit (Weyl; a k×k SVD). While the bound is ≤ σ_max(W_0) the PRUNE map is the identity and
   the matrix is skipped without reading W.
2. **Factored SVD.** While the accumulated ΔW = A Bᵀ has few columns (≤ ``max_factored_rank_ratio`` ·
   min(m, n)), it is restrained from its factors (`prune_lit.restraint.restrain_factored`: QR of both factors
   and a small SVD) and carried on as the restrained factorisation.
3. Once ΔW's rank grew past that threshold (it never drops again), a dense pass: ‖ΔW‖_F ≤ σ_max(W_0) skips;
   else `prune_lit.restraint.factored.restrain_high_rank` (float32 Gram eigendecomposition to locate the
   components above σ_max(W_0), float64 Rayleigh–Ritz for their exact values and vectors).
4. Without factors from the editor, the dense path of `SpectralRestraint` (warm-started as there), and the
   Gram path once that finds ΔW full rank.

The editor's `EditResult` must carry ``factors: {name: (A [out, k], B [in, k])}`` with ΔW = A Bᵀ (MENDEditor
does); a step without them turns the matrix over to the dense path for the rest of the run, and its bound to
"unknown". The factorisation, bounds and pending factors are part of the checkpoint (`state_dict`), so a
resumed or extended run takes the same paths as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import Any

import lightning as L
import torch

from prune_lit.callbacks.restraint import SpectralRestraint
from prune_lit.models.arch import get_weight
from prune_lit.contracts import EditState
from prune_lit.restraint.factored import FactoredSVD, restrain_factored, restrain_high_rank, spectral_norm_of_factors

log = logging.getLogger(__name__)


class FactoredSpectralRestraint(SpectralRestraint):
    """`SpectralRestraint` that uses the editor's thin factors of ΔW when it has them (see the module doc).

    Args (besides those of `SpectralRestraint`):
        max_factored_rank_ratio: take the factored SVD while ΔW's factors have at most this share of
            min(m, n) columns (above it the dense SVD is cheaper).
        use_bound: skip a matrix while the Weyl bound proves σ_max(ΔW) ≤ σ_max(W_0).

    Attributes:
        method_counts: how many matrix passes went through each path ("bound": Weyl certificate, "frobenius":
            ‖ΔW‖_F ≤ σ_max(W_0), "factored", "gram": `restrain_high_rank`, "gram_bound": its Gram-norm certificate
            (nothing decomposed), "dense": `restrain_delta_with_stats`).
    """

    def __init__(
        self,
        alpha: float = math.e,
        mode: str = "log",
        every_n_edits: int = 1,
        at_end_only: bool = False,
        evaluate_at_end_curve: bool = False,
        enabled: bool = True,
        max_factored_rank_ratio: float = 0.25,
        use_bound: bool = True,
    ) -> None:
        super().__init__(alpha=alpha, mode=mode, every_n_edits=every_n_edits, at_end_only=at_end_only,
                         evaluate_at_end_curve=evaluate_at_end_curve, enabled=enabled)
        if not 0 <= max_factored_rank_ratio <= 1:
            raise ValueError(f"max_factored_rank_ratio must be in [0, 1], got {max_factored_rank_ratio}")
        self.max_factored_rank_ratio = float(max_factored_rank_ratio)
        self.use_bound = bool(use_bound)
        self._svd: dict[str, FactoredSVD | None] = {}  # ΔW after the last pass (None: unknown, dense path)
        self._bound: dict[str, float] = {}
        self._pending_blocks: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._high_rank: set[str] = set()  # ΔW too high in rank for the factored path: float32-Gram + Ritz path
        self.method_counts: Counter[str] = Counter()
        self._resumed = False  # after a resume ΔW's factors are unknown: dense paths for the rest of the run

    # ---- following ΔW through the edits ---------------------------------------------------------------
    @torch.no_grad()
    def track(self, state: EditState) -> None:
        """Fold the last applied edit's factors into each matrix's ΔW factors and σ_max bound."""
        result = state.last_result
        if result is not None and not result.applied:
            return  # rejected: nothing was added
        given = result.factors if result is not None else {}
        for name, w0 in state.original_weights.items():
            if name not in self._bound and self._resumed:
                self._svd[name], self._bound[name] = None, math.inf
            if name not in self._bound:  # before the first edit ΔW = 0
                self._svd[name] = FactoredSVD.zero(*w0.shape, device=w0.device)
                self._bound[name] = 0.0
            f = given.get(name)
            if f is None:
                self._svd[name], self._bound[name] = None, math.inf
                self._pending_blocks.pop(name, None)
                continue
            a, b = f[0].double(), f[1].double()
            # (1 + 1e-6): the eigenvalue route is exact to ~1e-8; keep the bound an upper bound
            self._bound[name] += spectral_norm_of_factors(a, b) * (1 + 1e-6)
            if self._svd[name] is not None:
                self._pending_blocks.setdefault(name, []).append((a, b))  # concatenated only when an SVD needs them

    def pending(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The edits since the last pass as one pair of factors ``(A [m, k], B [n, k])``, and forget them."""
        blocks = self._pending_blocks.pop(name, [])
        svd = self._svd[name]
        assert svd is not None
        dev = svd.U.device
        return torch.cat([svd.U[:, :0], *(a.to(dev) for a, _ in blocks)], 1), torch.cat([svd.V[:, :0], *(b.to(dev) for _, b in blocks)], 1)

    def rank_of_factors(self, name: str) -> int | None:
        """Upper bound on the rank of ΔW of ``name`` from its factors (None: unknown)."""
        svd = self._svd.get(name)
        if svd is None:
            return None
        return svd.rank + sum(a.shape[1] for a, _ in self._pending_blocks.get(name, []))

    def on_edit_step(self, trainer: L.Trainer, state: EditState) -> None:
        if self.enabled:
            self.track(state)
        super().on_edit_step(trainer, state)

    def state_dict(self) -> dict[str, Any]:
        # ΔW's factors, bounds and the edits not yet restrained too: a resumed run (or one extended, e.g. restrained
        # once at the end) then takes the very same paths as the uninterrupted one, bit for bit.
        return {
            **super().state_dict(),
            "svd": {n: None if f is None else {"U": f.U, "S": f.S, "V": f.V} for n, f in self._svd.items()},
            "bound": {n: None if math.isinf(b) else b for n, b in self._bound.items()},
            "pending_blocks": {n: [[a, b] for a, b in blocks] for n, blocks in self._pending_blocks.items()},
            "high_rank": sorted(self._high_rank),
            "method_counts": dict(self.method_counts),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "svd" not in state_dict:  # a checkpoint without the factors: dense paths for the rest of the run
            self._resumed = True
            return
        self._svd = {n: None if f is None else FactoredSVD(f["U"], f["S"], f["V"]) for n, f in state_dict["svd"].items()}
        self._bound = {n: math.inf if b is None else float(b) for n, b in state_dict["bound"].items()}
        self._pending_blocks = {n: [(a, b) for a, b in blocks] for n, blocks in state_dict["pending_blocks"].items()}
        self._high_rank = set(state_dict["high_rank"])
        self.method_counts = Counter(state_dict["method_counts"])

    # ---- one restraint pass ---------------------------------------------------------------------------
    @torch.no_grad()
    def restrain(self, state: EditState, trainer: L.Trainer | None = None, warm: Any = None, record: bool = True) -> dict[str, int]:
        if warm is not None or not record:  # a throw-away pass (restrained copies): the dense path, tracking untouched
            return super().restrain(state, trainer, warm=warm, record=record)
        start = time.perf_counter()
        model = state.model
        counts: dict[str, int] = {}
        for name, w0 in state.original_weights.items():
            sigma_max = self.sigma_max_w0(name, w0)
            if self.use_bound and self._bound.get(name, math.inf) <= sigma_max:
                counts[name] = 0
                self.method_counts["bound"] += 1
                continue
            w = get_weight(model, name)
            rank = self.rank_of_factors(name)
            if rank is not None and rank <= self.max_factored_rank_ratio * min(w.shape):
                a, b = self.pending(name)
                try:
                    res = restrain_factored(a, b, sigma_max, self.alpha, self.mode, basis=self._svd[name])
                except ValueError as err:
                    raise ValueError(f"restraint of {name}: {err}") from err
                self._write(model, name, w, res)
                self._svd[name] = res.svd
                self._bound[name] = res.sigma_max_after
                counts[name] = res.n_restrained
                self.method_counts["factored"] += 1
                continue
            if rank is not None:  # ΔW outgrew the factored path: its rank only grows from here
                self._high_rank.add(name)
            self._svd[name] = None  # the dense paths do not keep a factorisation
            self._pending_blocks.pop(name, None)
            delta = self.deltas.delta(name, w, w0.to(w.device, torch.float32))
            fro = float(torch.linalg.vector_norm(delta))
            if not math.isfinite(fro):
                raise ValueError(f"restraint of {name}: ΔW contains NaN or Inf; refusing to restrain it")
            if fro <= sigma_max:  # σ_max ≤ ‖ΔW‖_F: the map is the identity
                self._bound[name] = min(self._bound.get(name, math.inf), fro * (1 + 1e-6))
                counts[name] = 0
                self.method_counts["frobenius"] += 1
                continue
            if name in self._high_rank:
                res_h = restrain_high_rank(delta, sigma_max, self.alpha, self.mode)
                self._write(model, name, w, res_h)
                self._bound[name] = res_h.sigma_max_after
                counts[name] = res_h.n_restrained
                self.method_counts["gram" if res_h.subspace else "gram_bound"] += 1
                continue
            # unknown or low rank without factors: the dense path of SpectralRestraint, warm-started
            res_d = self._restrain_dense(model, name, w, delta, sigma_max, self.warm)
            if res_d.method == "full":
                self._high_rank.add(name)
            self._bound[name] = res_d.sigma_max_after if res_d.sigma_max_after is not None else res_d.frobenius
            counts[name] = res_d.n_restrained
            self.method_counts["dense"] += 1
        self._record(state, trainer, counts, time.perf_counter() - start)
        return counts
